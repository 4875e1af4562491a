"""What the pipeline components run inside the container, besides the stage functions.

A component body parses its params, calls one stage of `whisper_moe.stages` and hands
the results to Kubeflow; the steps around that call that are about Kubeflow (where the
data comes from, which files become which artifact, which numbers the UI shows) live
here so that they are tested like any other code. Artifact objects are passed in and
used through their `.path`, `.uri`, `.metadata` and `log_*` methods only, so this
module needs no kfp import. DVC is imported only inside `fetch_from_dvc`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

from whisper_moe import artifacts, lineage, model_card
from whisper_moe.data.manifest import SPLIT_NAMES
from whisper_moe.fsio import write_text_atomic
from whisper_moe.stages.data import SOURCE_INPUTS

log = logging.getLogger("whisper_moe_kfp")

SOURCE_FOLDER = "source"  # inside the dataset artifact: the fetched or synthesised corpus
DATA_SOURCE = "data_source.json"  # in the dataset and evaluation artifacts: where the data came from


# ------------------------------------------------------------------ data in
class DataChangedError(RuntimeError):
    """The data source no longer holds the data resolve-data identified for this run."""


# What the data stage reads from params (whisper_moe.stages.data): prepare-data gets only these,
# so that tuning training settings leaves its cache key, and so its cached dataset, alone.
DATA_STAGE_KEYS = (("seed",), ("data",), ("model", "base_model"), ("train", "max_label_tokens"))


def data_stage_params(params: dict) -> dict:
    """The part of params the data stage reads (DATA_STAGE_KEYS); the rest stays at its defaults."""
    picked: dict = {}
    for path in DATA_STAGE_KEYS:
        value, target = params, picked
        for key in path:
            value = value[key]
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return picked


def check_one_source(dvc_repo: str, dvc_path: str, data_s3_uri: str, data_dir: str) -> None:
    given = {name: value for name, value in (("dvc_repo", dvc_repo), ("data_s3_uri", data_s3_uri),
                                             ("data_dir", data_dir)) if value}
    if len(given) > 1:
        raise ValueError(f"give one data source, not {sorted(given)}: dvc_repo (+ dvc_path), "
                         "data_s3_uri or data_dir")
    if dvc_path and not dvc_repo:
        raise ValueError(f"dvc_path={dvc_path!r} needs dvc_repo (the Git URL of the DVC repository)")
    if dvc_repo and not dvc_path:
        raise ValueError(f"dvc_repo={dvc_repo!r} needs dvc_path: the data folder inside the repository")


def identify_training_data(dvc_repo: str = "", dvc_rev: str = "", dvc_path: str = "",
                           data_s3_uri: str = "", data_dir: str = "", data_root: str = "") -> dict:
    """What the named data is now, without downloading it: an identity that changes exactly
    when the data does, so that a task keyed by it (prepare-data) can be cached.

    DVC: the folder's DVC md5 at the revision, read from the Git repository (the commit when
    the path has no md5 of its own, e.g. inside a tracked folder). S3: a hash of the listing
    (key, size, ETag of every object). A folder: a hash of its file names, sizes and
    modification times. No source: {"kind": "params"}, the data params decide.
    """
    check_one_source(dvc_repo, dvc_path, data_s3_uri, data_dir)
    if dvc_repo:
        resolved = resolve_dvc_folder(dvc_repo, dvc_rev, dvc_path)[0]
        return {"kind": "dvc", "md5": resolved["md5"]} if resolved["md5"] else {
            "kind": "dvc", "commit": resolved["commit"]}
    if data_s3_uri:
        return {"kind": "s3", **s3_listing_identity(data_s3_uri)}
    if data_dir:
        folder = in_place_folder(data_dir, data_root) or Path(data_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"data_dir={data_dir!r}: no such folder in the data task's "
                                    "container; mount the volume or use data_s3_uri / dvc_repo")
        return {"kind": "folder", **folder_listing_identity(folder)}
    return {"kind": "params"}


def s3_listing_identity(uri: str) -> dict:
    """sha256 of the sorted (relative key, size, ETag) of every object under uri/: one LIST
    per 1000 objects, no GET. An object rewritten with other bytes gets another ETag."""
    import hashlib

    from whisper_moe import storage

    bucket, prefix = storage.parse_s3_uri(uri)
    listing_prefix = f"{prefix}/" if prefix else ""
    with storage.storage_errors(uri):
        pages = storage.s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=listing_prefix)
        objects = sorted((item["Key"][len(listing_prefix):], item["Size"], item.get("ETag", ""))
                         for page in pages for item in page.get("Contents", [])
                         if not item["Key"].endswith("/"))
    if not objects:
        raise storage.StorageError(f"{uri}: no objects under this prefix at {storage.describe_endpoint()}; "
                                   "check the bucket and prefix (s3://BUCKET/PREFIX)")
    digest = hashlib.sha256()
    for key, size, etag in objects:
        digest.update(f"{key}\0{size}\0{etag}\n".encode())
    return {"listing_sha256": digest.hexdigest(), "objects": len(objects),
            "bytes": sum(size for _, size, _ in objects)}


def folder_listing_identity(folder: str | Path) -> dict:
    """sha256 of the sorted (relative path, size, mtime) of every file: stat only, no read."""
    import hashlib

    folder = Path(folder)
    digest, count, total = hashlib.sha256(), 0, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count, total = count + 1, total + stat.st_size
    return {"listing_sha256": digest.hexdigest(), "files": count, "bytes": total}


def check_identity(expected: dict | None, found: dict, where: str) -> None:
    """Stop when the source changed between resolve-data and now: the run's cache key (and
    lineage) name the data resolve-data saw, so other data must not slip in under it."""
    if not expected:
        return
    keys = [key for key in ("md5", "commit", "listing_sha256") if expected.get(key)]
    if not keys or any(found.get(key) != expected[key] for key in keys):
        raise DataChangedError(
            f"{where} changed while this run started: resolve-data saw {expected}, now it is "
            f"{ {key: found.get(key) for key in keys} }; start the run again to train on the new data")


def fetch_training_data(dest: str | Path, dvc_repo: str = "", dvc_rev: str = "",
                        dvc_path: str = "", data_s3_uri: str = "", data_dir: str = "",
                        data_root: str = "", identity: dict | None = None) -> dict:
    """Bring the training data folder to `dest`; returns where it came from.

    Exactly one source may be given: a DVC-versioned folder (repo + path, optional rev),
    an s3:// prefix, or a folder on a mounted volume. With none, nothing is fetched
    ({"kind": "params"}) and the data stage follows params (the demo corpus by default).
    A data_dir on the data volume every data-reading task mounts at data_root (relative
    paths are taken under it) is read in place: nothing is copied, and the validated
    manifests name its audio by absolute path ({"in_place": true}).
    With `identity` (identify_training_data's, from resolve-data) the source must still hold
    that data: checked before anything is downloaded, and for S3 again after.
    """
    dest = Path(dest)
    check_one_source(dvc_repo, dvc_path, data_s3_uri, data_dir)
    if dest.exists():  # a retried task starts from nothing
        shutil.rmtree(dest)
    if dvc_repo:
        resolved = fetch_from_dvc(dvc_repo, dvc_rev, dvc_path, dest, expected=identity)
        return {"kind": "dvc", "repo": dvc_repo, "rev": dvc_rev or "(default branch)", "path": dvc_path,
                **resolved}
    if data_s3_uri:
        from whisper_moe.storage import download_prefix

        where = f"data_s3_uri={data_s3_uri}"
        check_identity(identity, s3_listing_identity(data_s3_uri), where)
        files = download_prefix(data_s3_uri, dest)
        listed = s3_listing_identity(data_s3_uri)
        check_identity(identity, listed, where)  # nothing rewritten during the download
        log.info("fetched %d objects, %d bytes from %s", len(files),
                 sum(f.stat().st_size for f in files), data_s3_uri)
        return {"kind": "s3", "uri": data_s3_uri, "sha256": lineage.folder_sha256(dest),
                "listing_sha256": listed["listing_sha256"]}
    if data_dir:
        source = in_place_folder(data_dir, data_root)
        if source is not None:
            check_identity(identity, folder_listing_identity(source), f"data_dir={source}")
            return {"kind": "folder", "path": str(source), "in_place": True,
                    "sha256": lineage.folder_sha256(source)}
        source = Path(data_dir)
        if not source.is_dir():
            raise FileNotFoundError(f"data_dir={data_dir!r}: no such folder in the data task's "
                                    "container; mount the volume or use data_s3_uri / dvc_repo")
        check_identity(identity, folder_listing_identity(source), f"data_dir={source}")
        # Copied into the dataset artifact so later tasks (other pods) find the audio too.
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return {"kind": "folder", "path": str(source), "sha256": lineage.folder_sha256(dest)}
    return {"kind": "params"}


def in_place_folder(data_dir: str, data_root: str) -> Path | None:
    """data_dir as a folder on the shared data volume (mounted at data_root), else None."""
    if not data_root or not Path(data_root).is_dir():
        return None
    root = Path(data_root).resolve()
    folder = (root / data_dir).resolve()  # an absolute data_dir stays itself
    if not folder.is_relative_to(root):
        return None
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir={data_dir!r}: no folder {folder} on the data volume "
                                f"mounted at {data_root}; list it with `kubectl exec` or fix the path")
    return folder


def resolve_dvc_folder(repo: str, rev: str, path: str):
    """(the revision resolved to a commit and the folder's DVC md5, the DVC filesystem at it).

    Reads the Git repository only (DVCFileSystem clones it); no data is downloaded. The md5
    is null for a path inside a tracked folder. A path missing at rev is named.
    """
    from dvc.api import DVCFileSystem

    filesystem = DVCFileSystem(repo, rev=rev or None)
    if not filesystem.exists(path):
        raise FileNotFoundError(f"{path!r} is not in the DVC repository {repo} at revision "
                                f"{rev or '(default branch)'}; check dvc_path and dvc_rev")
    return {"commit": filesystem.repo.scm.get_rev(), "md5": filesystem.info(path).get("md5")}, filesystem


def fetch_from_dvc(repo: str, rev: str, path: str, dest: Path, expected: dict | None = None) -> dict:
    """Download a DVC-tracked folder (what `dvc get REPO PATH --rev REV` does) to dest.

    Returns the revision resolved to a commit and the folder's DVC md5 (null for a path
    inside a tracked folder), so lineage names the data exactly even when rev was a
    branch that has moved on. With `expected` (resolve-data's identity) the folder must
    still be that data, checked before the download. DVC reads its remote's credentials
    from the environment (the same AWS_* variables).
    """
    resolved, filesystem = resolve_dvc_folder(repo, rev, path)
    check_identity(expected, resolved, f"{path} in {repo} at {rev or '(default branch)'}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    filesystem.get(path.rstrip("/"), str(dest), recursive=True)
    return resolved


def point_data_stage_at(params: dict, source: dict, dataset_dir: str | Path) -> dict:
    """Params for the data stage so that the dataset artifact holds manifests and audio.

    A fetched folder with train/dev/test.jsonl is a manifest source; with data.source
    'sap', 'hf' or 'nemo' it is a SAP release, a Hugging Face datasets folder or NeMo
    manifests, imported or converted inside the artifact. The demo corpus is
    synthesised inside the artifact. Validated manifests land at the artifact's top
    with audio paths relative to it, so the folder works wherever Kubeflow copies it.
    """
    dataset_dir = Path(dataset_dir)
    data = params["data"]
    record = source if source["kind"] != "params" else {**source, "source": data["source"]}
    write_text(dataset_dir / DATA_SOURCE, json.dumps(record, indent=2) + "\n")  # lineage travels with the data
    fetched = Path(source["path"]) if source.get("in_place") else dataset_dir / SOURCE_FOLDER
    if source["kind"] != "params":
        if all(artifacts.split_manifest(fetched, split).exists() for split in SPLIT_NAMES):
            data["source"], data["manifest_dir"] = "manifest", str(fetched)
        elif data["source"] in SOURCE_INPUTS:
            data[SOURCE_INPUTS[data["source"]][0]], data["dir"] = str(fetched), str(dataset_dir / "imported")
        else:
            present = sorted(p.name for p in fetched.iterdir()) if fetched.is_dir() else []
            raise FileNotFoundError(
                f"{describe_source(source)}: holds no train.jsonl, dev.jsonl and test.jsonl "
                f"(found {present[:10]}); point it at a data folder written by `whisper-moe data`, "
                "or set data.source in params_yaml to sap (a Speech Accessibility Project release), "
                "hf (a Hugging Face datasets folder) or nemo (NeMo manifests)")
    elif data["source"] == "demo":
        data["dir"] = str(fetched)
    elif data["source"] in SOURCE_INPUTS:
        data["dir"] = str(dataset_dir / "imported")
    return params


def describe_source(source: dict) -> str:
    if source["kind"] == "dvc":
        commit = f" (commit {source['commit'][:12]})" if source.get("commit") else ""
        return f"DVC {source['repo']}@{source['rev']}{commit}:{source['path']}"
    return source.get("uri") or source.get("path") or source["kind"]


def data_report_markdown(dataset_dir: str | Path, source: dict) -> str:
    """Kept and skipped utterances per split, with the reasons, as Markdown for the UI."""
    report = artifacts.load_data_report(dataset_dir)
    origin = describe_source(source) if source["kind"] != "params" else report.get("source", "")
    lines = ["# Training data", "", f"Source: `{origin}`", "",
             "| split | kept | skipped | reasons |", "| --- | --- | --- | --- |"]
    for split, values in report["splits"].items():
        skipped = values.get("skipped", {})
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped.items()) or "-"
        lines.append(f"| {split} | {values.get('kept', 0)} | {sum(skipped.values())} | {reasons} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ files -> artifacts
def move_folder(source: str | Path, dest: str | Path) -> Path:
    """Move a stage's output folder to an artifact path (which must not exist yet)."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: the stage did not write this folder")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(dest))
    return dest


def finish_training_folder(train_dir: str | Path, checkpoint_dir: str | Path) -> None:
    """checkpoint/ becomes the Model artifact; resumable state is dropped (the run is done)."""
    train_dir = Path(train_dir)
    move_folder(train_dir / artifacts.MODEL_CHECKPOINT, checkpoint_dir)
    shutil.rmtree(train_dir / artifacts.RESUMABLE_CHECKPOINTS, ignore_errors=True)


# ------------------------------------------------------------------ preemption
def durable_work_dir(checkpoint_root: str, run_id: str, task: str) -> Path | None:
    """The task's folder on storage that outlives the pod: <root>/<run id>/<task>, or None.

    A retried attempt of the same run (a preempted pod, a retried run) finds the same folder
    and resumes from its newest valid checkpoint. None when there is no such storage here
    (the root is not mounted, e.g. a local run) or the backend did not fill in the run id:
    the task then trains in a scratch folder and a retry starts over.
    """
    if not checkpoint_root or not Path(checkpoint_root).is_dir():
        log.info("no checkpoint volume at %r: a retried attempt will start over", checkpoint_root)
        return None
    if not run_id or "{{" in run_id:
        log.warning("the run id is not known (%r): checkpoints stay in the pod", run_id)
        return None
    return Path(checkpoint_root) / re.sub(r"[^A-Za-z0-9._-]+", "-", run_id) / task


def finish_durable_folder(work_dir: str | Path, dest_dir: str | Path) -> Path:
    """Move a finished task's outputs (resumable state dropped) into its artifact folder."""
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir / artifacts.RESUMABLE_CHECKPOINTS, ignore_errors=True)
    dest = move_folder(work_dir, dest_dir)
    remove_durable_folder(work_dir)
    return dest


def remove_durable_folder(work_dir: str | Path) -> None:
    """Drop a finished task's durable folder, and its run's once empty, so the volume holds
    only runs still in progress."""
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    if work_dir.parent.is_dir() and not any(work_dir.parent.iterdir()):
        work_dir.parent.rmdir()


# ------------------------------------------------------------------ several GPUs
def training_processes(requested: int, params: dict) -> int:
    """How many training processes a task runs: `requested` when > 0, else one per GPU the
    pod sees (its nvidia.com/gpu limit), one on CPU."""
    if requested > 0:
        return requested
    if params["runtime"]["device"] == "cpu":
        return 1
    import torch

    return max(torch.cuda.device_count(), 1)


def torchrun_train_command(processes: int, params_file: str | Path, train_manifest: str | Path,
                           dev_manifest: str | Path, out_dir: str | Path, init_dir: str | Path | None,
                           resume: bool, embeddings_dir: str | Path | None = None) -> list[str]:
    """`whisper-moe train` under torchrun on this node: the same command as the Kubernetes job."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "whisper_moe.cli", "train",
               "--params", str(params_file), "--train-manifest", str(train_manifest),
               "--dev-manifest", str(dev_manifest), "--out", str(out_dir)]
    if init_dir is not None:
        command += ["--init", str(init_dir)]
    if embeddings_dir is not None:
        command += ["--embeddings", str(embeddings_dir)]
    return command + (["--resume"] if resume else [])


# torchrun's wait for its workers after passing on a SIGTERM, before it kills them: time for
# the checkpoint the workers save at the next step boundary.
WORKER_SHUTDOWN_S = 240


def train_in_processes(processes: int, params_yaml: str, train_manifest: str | Path,
                       dev_manifest: str | Path, out_dir: str | Path, init_dir=None,
                       resume: bool = False, embeddings_dir=None) -> dict:
    """Joint training in `processes` data-parallel processes started by torchrun; rank 0
    writes out_dir exactly as one process would. Returns its train_metrics.json.

    SIGTERM and SIGINT to this process (a preempted pod) are passed on to torchrun, which
    passes them to the workers: they agree to stop, save a checkpoint and exit non-zero, and a
    retry with resume=True continues from it.
    """
    import signal
    import subprocess
    import tempfile

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="train-params-") as folder:
        params_file = Path(folder) / "params.yaml"
        params_file.write_text(params_yaml)
        command = torchrun_train_command(processes, params_file, train_manifest, dev_manifest,
                                         out_dir, init_dir, resume, embeddings_dir)
        env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(WORKER_SHUTDOWN_S)}
        log.info("training in %d processes: %s", processes, " ".join(command))
        launcher = subprocess.Popen(command, env=env)
        forward = lambda signum, frame: launcher.send_signal(signum)  # noqa: E731
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[signum] = signal.signal(signum, forward)
            except ValueError:  # not the main thread: the caller keeps its signals
                pass
        try:
            code = launcher.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if code != 0:
        raise RuntimeError(f"torchrun with {processes} training processes exited with {code} "
                           f"(its log is above); a retry resumes from {out_dir}/"
                           f"{artifacts.RESUMABLE_CHECKPOINTS} when that is on the checkpoint volume")
    return json.loads((out_dir / artifacts.TRAIN_METRICS).read_text())


def image_page(title: str, png_paths: list[str | Path], details: str = "") -> str:
    """A self-contained HTML page (images inlined) for Kubeflow's HTML viewer."""
    import base64

    images = "".join(
        f"<img src='data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}'/>"
        for p in png_paths if Path(p).exists())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{details}{images}</body></html>")


def write_text(path: str | Path, text: str) -> Path:
    """An artifact file written atomically, its folder created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


# ------------------------------------------------------------------ numbers for the UI
def log_numbers(metrics_artifact, values: dict, prefix: str = "") -> None:
    """Log every finite number of a flat dict as a Kubeflow metric (bools and None skipped)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        metrics_artifact.log_metric(f"{prefix}{name}", round(float(value), 6))


def log_evaluation(metrics_artifact, evaluation: dict) -> None:
    """WER and CER overall and per group for each system (moe, base, oracle), with the WER
    under Whisper's normaliser and the SAP challenge's CER where the evaluation scored them,
    and the gate's routing quality."""
    for system in ("moe", "base", "oracle"):
        result = evaluation.get(system)
        if not result:
            continue
        overall = {key: result.get(key) for key in ("wer", "cer", "wer_whisper_norm", "sap_cer")}
        log_numbers(metrics_artifact, overall, f"{system}_")
        for group, values in sorted(result.get("per_group", {}).items()):
            log_numbers(metrics_artifact, {f"wer_{group}": values["wer"]}, f"{system}_")
    log_numbers(metrics_artifact, {"test_utterances": evaluation.get("utterances")})
    routing = evaluation.get("routing") or {}
    log_numbers(metrics_artifact, {key: routing.get(key) for key in (
        "gate_entropy_mean", "gate_entropy_max", "top1_group_nmi", "top1_group_nmi_permutation_95",
        "top1_group_nmi_p_value")}, "routing_")
    if "idle_experts" in routing:
        log_numbers(metrics_artifact, {"routing_idle_experts": len(routing["idle_experts"])})


# ------------------------------------------------------------------ data out
def run_folder_name(run_id: str, run_name: str) -> str:
    """The run's folder under output_s3_uri: its id, else its name, else a timestamp.

    Kubeflow fills both in at run time; a backend too old to do so leaves the literal
    placeholder ('{{$.pipeline_job_uuid}}'), which is not used as a name.
    """
    for candidate in (run_id, run_name):
        if candidate and "{{" not in candidate:
            return re.sub(r"[^A-Za-z0-9._-]+", "-", candidate).strip("-")
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())


def headline_metrics(evaluation: dict) -> dict:
    """The figures a pointer carries: WER/CER overall and per group of each system, in the
    evaluate stage's own layout ({"moe": {"wer", "cer", "per_group": {group: {...}}}}), and
    the identity of the test set they were measured on."""
    summary = {system: evaluation[system] for system in ("moe", "base", "oracle") if system in evaluation}
    summary["test_utterances"] = evaluation.get("utterances")
    summary["test_set"] = evaluation.get("test_set")  # what a regression gate compares on
    return summary


def carry_data_source(dataset_dir: str | Path, evaluation_dir: str | Path) -> None:
    """Copy the dataset's data_source.json into the evaluation folder, which publish reads."""
    recorded = Path(dataset_dir) / DATA_SOURCE
    if recorded.exists():
        shutil.copyfile(recorded, Path(evaluation_dir) / DATA_SOURCE)


def model_lineage(params_yaml: str, evaluation_dir: str | Path, run_id: str, pipeline: str = "") -> dict:
    """lineage.json of a pipeline's model: code, image, the data's resolved revision, params, run."""
    from whisper_moe_kfp.parameters import params_from_yaml

    recorded = Path(evaluation_dir) / DATA_SOURCE
    data = json.loads(recorded.read_text()) if recorded.exists() else {"kind": "unknown"}
    evaluation = artifacts.load_evaluation_metrics(evaluation_dir)
    return lineage.build(params_from_yaml(params_yaml), data, run_id=run_id or None,
                         pipeline=pipeline or None, base_model=evaluation.get("base_model"))


def artifact_lineage(params_yaml: str, data_dir: str | Path, run_id: str = "", pipeline: str = "") -> dict:
    """Lineage metadata for any task's output artifact (a checkpoint, an evaluation, a report):
    the task's params and the data_source.json its dataset or evaluation folder carries."""
    from whisper_moe_kfp.parameters import params_from_yaml

    recorded = Path(data_dir) / DATA_SOURCE
    data = json.loads(recorded.read_text()) if recorded.exists() else {"kind": "unknown"}
    run = run_id if run_id and "{{" not in run_id else None
    return lineage_metadata(lineage.build(params_from_yaml(params_yaml), data, run_id=run,
                                          pipeline=pipeline or None))


# The lineage a pointer carries and Kubeflow artifacts show: all of lineage.json but the params.
POINTER_LINEAGE = ("code", "image", "image_digest", "data", "base_model", "pipeline", "run_id")


def lineage_metadata(made: dict) -> dict:
    """Lineage as flat artifact metadata, so the Kubeflow UI lists it beside each artifact:
    code commit, image and digest, the data's resolved revision and md5 (or content sha256),
    base model, pipeline and run id. Unknown values are empty strings, never guessed."""
    data = made.get("data") or {}
    fields = {"code_commit": (made.get("code") or {}).get("commit"),
              "image": made.get("image"), "image_digest": made.get("image_digest"),
              "data_source": describe_source(data) if data.get("kind") not in (None, "params", "unknown")
              else data.get("source") or data.get("kind"),
              "data_commit": data.get("commit"), "data_md5": data.get("md5"),
              "data_sha256": data.get("sha256"), "base_model": made.get("base_model"),
              "pipeline": made.get("pipeline"), "run_id": made.get("run_id")}
    return {key: "" if value is None else str(value) for key, value in fields.items()}


def model_folder(checkpoint_dir: str | Path, dest: str | Path, evaluation: dict, model_lineage: dict) -> Path:
    """The published model folder: the checkpoint with its lineage.json and model card (README.md)."""
    dest = Path(dest)
    shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
    lineage.write(dest, model_lineage)
    model_card.write(dest, evaluation, model_lineage)
    return dest


def publish(output_s3_uri: str, run_id: str, run_name: str, checkpoint_dir: str | Path,
            checkpoint_uri: str, evaluation_dir: str | Path, report_path: str | Path,
            params_yaml: str, pipeline: str = "", model_card_path: str | Path | None = None) -> dict:
    """Upload the model folder (checkpoint, lineage.json, model card), metrics, report and
    params under output_s3_uri/<run>/; return the pointer.

    The pointer ({"uri", "run_uri", "metrics", "lineage", ...}) is uploaded beside them as
    pointer.json. The retrain workflow copies the whole <run>/ folder into the repository
    and records it with `dvc add` (scripts/record_model.py), so the bytes are versioned by
    content. With no output_s3_uri nothing is uploaded and the pointer names Kubeflow's copy.
    The model card is also written to model_card_path when given (for Kubeflow's viewer).
    """
    import tempfile

    evaluation = artifacts.load_evaluation_metrics(evaluation_dir)
    folder = run_folder_name(run_id, run_name)
    made = model_lineage(params_yaml, evaluation_dir, folder, pipeline)
    pointer = {"uri": checkpoint_uri, "metrics": headline_metrics(evaluation), "run": folder,
               "run_name": run_name if "{{" not in run_name else None, "published": False,
               "lineage": {key: made[key] for key in POINTER_LINEAGE}}
    if model_card_path:
        write_text(model_card_path, model_card.render(evaluation, made))
    if not output_s3_uri:
        log.info("output_s3_uri is empty: nothing uploaded; the model stays at %s", checkpoint_uri)
        return pointer
    from whisper_moe import storage

    base = storage.join_uri(output_s3_uri, folder)
    client = storage.s3_client()
    with tempfile.TemporaryDirectory(prefix="publish-") as staging:
        model_dir = model_folder(checkpoint_dir, Path(staging) / artifacts.PUBLISHED_MODEL, evaluation, made)
        storage.upload_folder(model_dir, storage.join_uri(base, artifacts.PUBLISHED_MODEL), client=client)
    storage.upload_file(Path(evaluation_dir) / artifacts.EVALUATION_METRICS,
                        storage.join_uri(base, artifacts.PUBLISHED_METRICS), client=client)
    storage.upload_file(report_path, storage.join_uri(base, artifacts.PUBLISHED_REPORT), client=client)
    storage.upload_bytes(params_yaml.encode(), storage.join_uri(base, artifacts.PUBLISHED_PARAMS),
                         content_type="application/yaml", client=client)
    pointer.update(uri=storage.join_uri(base, artifacts.PUBLISHED_MODEL), published=True, run_uri=base,
                   metrics_uri=storage.join_uri(base, artifacts.PUBLISHED_METRICS),
                   report_uri=storage.join_uri(base, artifacts.PUBLISHED_REPORT),
                   params_uri=storage.join_uri(base, artifacts.PUBLISHED_PARAMS))
    storage.upload_json(pointer, storage.join_uri(base, artifacts.PUBLISHED_POINTER), client=client)
    log.info("published the model, metrics and report under %s", base)
    return pointer
