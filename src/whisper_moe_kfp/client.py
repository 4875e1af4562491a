"""The Kubeflow Pipelines client behind `whisper-moe kfp upload|run|schedule|terminate`.

The command line (whisper_moe.cli.kfp) parses the flags and the configuration; here
the whole configuration travels as the `params_yaml` parameter, and the pipeline's tuned
parameters (epochs, learning_rate, ...) are filled from the same values, so the run does
exactly what params.yaml says. kfp is imported only when a subcommand runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import yaml

from whisper_moe.errors import WhisperMoeError
from whisper_moe_kfp.parameters import (
    DATA_PARAMETERS,
    PRETRAINED_PARAMETERS,
    REGULAR_PARAMETERS,
    pipeline_arguments,
)

log = logging.getLogger("whisper_moe_kfp")

PIPELINES = {  # --pipeline -> (compiled package name, tuned parameters)
    "pretrained": ("pretrained_moe", PRETRAINED_PARAMETERS),
    "regular": ("regular_moe", REGULAR_PARAMETERS),
}
FINISHED_OK = "SUCCEEDED"


class KfpCommandError(WhisperMoeError, RuntimeError):
    """A kfp subcommand cannot go on; the message says why and what to do."""


# ------------------------------------------------------------------ commands
def run_command(args, params: dict | None) -> int:
    """Run `kfp <upload|run|schedule>` parsed by whisper_moe.cli; params for run/schedule."""
    from kfp_server_api.exceptions import ApiException

    try:
        if args.kfp_command == "upload":
            return cmd_upload(args)
        if args.kfp_command == "terminate":
            return cmd_terminate(args)
        command = {"run": cmd_run, "schedule": cmd_schedule}[args.kfp_command]
        return command(args, params)
    except ApiException as error:
        raise KfpCommandError(api_error_message(error, args.host)) from error


def api_error_message(error, host: str | None) -> str:
    """The server's own message (its JSON `message`) with the status, host and a hint."""
    try:
        detail = json.loads(error.body or "{}").get("message") or error.body
    except (TypeError, ValueError):
        detail = error.body
    hint = {401: "log in or pass credentials (kfp.Client's cookies/token)",
            403: "check --namespace: your profile may not have access to it",
            404: "check --host: it should be the Kubeflow Pipelines API (ml-pipeline) address"}
    return (f"Kubeflow Pipelines at {host or '(default host)'} answered {error.status} {error.reason}: "
            f"{detail}" + (f"; {hint[error.status]}" if error.status in hint else ""))


def cmd_upload(args) -> int:
    names = list(PIPELINES) if args.pipeline == "both" else [args.pipeline]
    if args.package and len(names) > 1:
        raise KfpCommandError("--package names one spec: also give --pipeline pretrained or regular")
    packages = {name: find_package(name, args.package) for name in names}
    client = connect(args)
    for name, package in packages.items():
        result = upload(client, package, args.version_name, args.namespace)
        print(f"{name}: {result}")
    return 0


def cmd_run(args, params: dict) -> int:
    if args.metrics_out and not args.wait:
        raise KfpCommandError("--metrics-out needs --wait: the metrics exist once the run has finished")
    package = find_package(args.pipeline, args.package)
    arguments = run_arguments(args, params, package)
    client = connect(args)
    if args.pipeline_version:
        pipeline_id, version_id = uploaded_version(client, package, args.pipeline_version)
        experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)
        result = client.run_pipeline(
            experiment.experiment_id, args.run_name or f"{args.pipeline} {args.pipeline_version}",
            params=arguments, pipeline_id=pipeline_id, version_id=version_id,
            enable_caching=False if args.no_cache else None, service_account=args.service_account)
    else:
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=args.run_name,
            experiment_name=args.experiment, namespace=args.namespace,
            enable_caching=False if args.no_cache else None, service_account=args.service_account)
    run_id = result.run_id
    print(f"run id: {run_id}")
    if args.run_id_file:  # before the wait, so a cancelled job can still terminate the run
        args.run_id_file.parent.mkdir(parents=True, exist_ok=True)
        args.run_id_file.write_text(run_id + "\n")
    if not args.wait:
        return 0
    run = client.wait_for_run_completion(run_id, timeout=args.timeout, sleep_duration=10)
    state = str(run.state)
    print(f"run {run_id} finished: {state}")
    if args.metrics_out:
        write_run_metrics(args.metrics_out, run_id, state, arguments.get("output_s3_uri", ""),
                          pipeline=args.pipeline)
    return 0 if state.upper() == FINISHED_OK else 1


def cmd_terminate(args) -> int:
    """Stop a run: a cancelled or timed-out retrain job must not leave GPUs busy."""
    client = connect(args)
    client.terminate_run(args.run_id)
    print(f"run {args.run_id}: termination requested")
    return 0


def cmd_schedule(args, params: dict) -> int:
    package = find_package(args.pipeline, args.package)
    arguments = run_arguments(args, params, package)
    client = connect(args)
    experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)
    pipeline_id = version_id = None
    if args.pipeline_version:
        pipeline_id, version_id = uploaded_version(client, package, args.pipeline_version)
    recurring = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=args.name or f"whisper-moe-{args.pipeline}",
        cron_expression=six_field_cron(args.cron), max_concurrency=1, no_catchup=not args.catchup,
        params=arguments, pipeline_package_path=None if version_id else str(package),
        pipeline_id=pipeline_id, version_id=version_id,
        enable_caching=False if args.no_cache else None, service_account=args.service_account)
    print(f"recurring run id: {recurring.recurring_run_id} (cron {six_field_cron(args.cron)!r})")
    return 0


# ------------------------------------------------------------------ helpers
def connect(args):
    import kfp

    options = {"host": args.host, "existing_token": args.token or None}
    if args.namespace:
        options["namespace"] = args.namespace
    return kfp.Client(**options)


def find_package(pipeline: str, package: Path | None) -> Path:
    """The compiled spec: --package, else pipelines/compiled/<name>.yaml here or in the source tree."""
    if package is not None:
        if not package.exists():
            raise KfpCommandError(f"{package}: no such compiled pipeline; run `python pipelines/compile.py`")
        return package
    name = PIPELINES[pipeline][0]
    candidates = [Path.cwd() / "pipelines" / "compiled" / f"{name}.yaml",
                  Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise KfpCommandError(f"pipelines/compiled/{name}.yaml not found (looked in {candidates[0].parent}): "
                          "run from the repository root, or pass --package")


def spec_inputs(package: Path) -> dict:
    """The pipeline's declared parameters (name -> definition) from a compiled spec."""
    with open(package) as handle:
        spec = next(yaml.safe_load_all(handle))
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def run_arguments(args, params: dict, package: Path) -> dict:
    """params (params.yaml + -S) as params_yaml and the tuned parameters, plus the data flags given."""
    arguments = pipeline_arguments(params, PIPELINES[args.pipeline][1])
    for name in DATA_PARAMETERS:  # --dvc-repo ... --output-s3-uri, same names as the parameters
        value = getattr(args, name, None)
        if value:
            arguments[name] = value
    declared = spec_inputs(package)
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        raise KfpCommandError(f"{package} declares no parameters {unknown}: recompile it with "
                              "`python pipelines/compile.py` (or pass the matching --package)")
    return arguments


def uploaded_version(client, package: Path, version_name: str) -> tuple[str, str]:
    """(pipeline id, version id) of an uploaded version of the package's pipeline."""
    name = pipeline_name(package)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        raise KfpCommandError(f"no pipeline {name} on the server: upload it first (`whisper-moe kfp upload`)")
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                              "stringValue": version_name}]})
    versions = client.list_pipeline_versions(pipeline_id, filter=name_filter).pipeline_versions or []
    if not versions:
        raise KfpCommandError(f"pipeline {name} has no version {version_name!r}: upload it with "
                              f"`whisper-moe kfp upload --version-name {version_name}`")
    return pipeline_id, versions[0].pipeline_version_id


def pipeline_name(package: Path) -> str:
    with open(package) as handle:
        return next(yaml.safe_load_all(handle))["pipelineInfo"]["name"]


def upload(client, package: Path, version_name: str | None, namespace: str | None) -> str:
    """Upload as a new pipeline, or as a new version of the pipeline with the same name."""
    name = pipeline_name(package)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=name, namespace=namespace)
        return f"uploaded as pipeline {name} ({pipeline.pipeline_id})"
    version_name = version_name or default_version_name(package)
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                             pipeline_id=pipeline_id)
    return f"uploaded as version {version_name} of {name} ({version.pipeline_version_id})"


def default_version_name(package: Path) -> str:
    """<project version>-<first 10 hex of the spec's sha256>: same spec, same name."""
    from importlib import metadata

    try:
        version = metadata.version("whisper-moe")
    except metadata.PackageNotFoundError:
        version = "dev"
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:10]
    return f"{version}-{digest}"


def six_field_cron(expression: str) -> str:
    """Kubeflow's scheduler wants seconds first; a classic 5-field cron runs at second 0."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) != 6:
        raise KfpCommandError(f"--cron {expression!r}: expected 6 fields (second minute hour "
                              "day-of-month month day-of-week), e.g. '0 0 3 * * 1'")
    return expression


def write_run_metrics(path: Path, run_id: str, state: str, output_s3_uri: str,
                      pipeline: str = "") -> bool:
    """Write the finished run's metrics from the pointer.json it published; False when none.

    Kubeflow keeps metrics in its metadata store, which its REST API does not serve, so
    the published pointer (output_s3_uri/<run id>/pointer.json) is the source. The file
    holds the evaluation figures at the top ({"moe": {"wer", "cer", "per_group"},
    "base": ..., "test_set": ...}, as scripts/check_regression.py reads them) plus the
    pipeline, the run and where the published run folder, model and pointer are.
    """
    if not output_s3_uri:
        log.warning("--metrics-out: the run published nothing (no --output-s3-uri), so there are no "
                    "metrics to fetch; see the evaluate-moe task's metrics in the Kubeflow UI")
        return False
    from whisper_moe import artifacts, storage
    from whisper_moe_kfp.runtime import run_folder_name

    pointer_uri = storage.join_uri(output_s3_uri, run_folder_name(run_id, ""),
                                   artifacts.PUBLISHED_POINTER)
    try:
        pointer = storage.read_json(pointer_uri)
    except storage.StorageError as error:
        log.warning("--metrics-out: cannot fetch %s: %s", pointer_uri, error)
        return False
    payload = {**(pointer.get("metrics") or {}), "pipeline": pipeline or None, "run_id": run_id,
               "state": state, "model_uri": pointer.get("uri"), "model_pointer": pointer_uri,
               "run_uri": pointer_uri.rsplit("/", 1)[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"metrics written to {path}")
    return True
