"""`whisper-moe kfp upload|run|schedule|terminate`: the compiled pipelines on a Kubeflow Pipelines server.

    whisper-moe kfp upload --host http://localhost:8080
    whisper-moe kfp run --pipeline regular -S train.lr=3e-4 --output-s3-uri s3://bucket/runs \\
        --wait --metrics-out metrics.json
    whisper-moe kfp schedule --pipeline pretrained --cron "0 0 3 * * 1"

Run arguments come from params.yaml and `-S key=value`, as for every other subcommand.
The client code (and kfp itself) is imported only when the subcommand runs, so the
rest of the command line works without the `mlops` extra.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from whisper_moe.cli.params import add_common, params_from_args

PIPELINE_CHOICES = ("pretrained", "regular")
DEFAULT_EXPERIMENT = "whisper-moe"


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser("kfp", help="upload, run and schedule the Kubeflow pipelines")
    parser.set_defaults(handler=cmd_kfp)
    commands = parser.add_subparsers(dest="kfp_command", required=True)

    p = commands.add_parser("upload", help="upload the compiled pipelines (a new version if present)")
    add_connection_flags(p)
    p.add_argument("--pipeline", choices=[*PIPELINE_CHOICES, "both"], default="both")
    p.add_argument("--package", type=Path, help="compiled spec to upload (default: pipelines/compiled/)")
    p.add_argument("--version-name", help="version name (default: <project version>-<spec hash>)")

    p = commands.add_parser("run", help="start a run with params.yaml (-S overrides)")
    add_common(p)
    add_run_flags(p)
    p.add_argument("--run-name", help="default: <pipeline> <time>")
    p.add_argument("--wait", action="store_true", help="wait until the run finishes; exit 1 unless it succeeded")
    p.add_argument("--timeout", type=int, default=48 * 3600, help="seconds --wait waits (default 48 h)")
    p.add_argument("--metrics-out", type=Path,
                   help="with --wait: write the run's final metrics (from its published pointer.json)")
    p.add_argument("--run-id-file", type=Path,
                   help="write the run id here as soon as the run exists (for `kfp terminate`)")

    p = commands.add_parser("terminate", help="terminate a run (its running pods are stopped)")
    add_connection_flags(p)
    p.add_argument("--run-id", required=True)

    p = commands.add_parser("schedule", help="create a recurring run (one at a time)")
    add_common(p)
    add_run_flags(p)
    p.add_argument("--cron", required=True,
                   help="cron schedule, 6 fields with seconds first ('0 0 3 * * 1': Mondays 03:00); "
                        "a 5-field expression gets seconds 0")
    p.add_argument("--name", help="recurring run name (default: whisper-moe-<pipeline>)")
    p.add_argument("--catchup", action="store_true",
                   help="also start the runs missed while the schedule was paused")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="Kubeflow Pipelines API, e.g. http://localhost:8080 after "
                                       "`kubectl port-forward` (default: $KF_PIPELINES_ENDPOINT or "
                                       "the in-cluster/kubeconfig address)")
    parser.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
    parser.add_argument("--token", default=os.environ.get("KFP_TOKEN"),
                        help="bearer token for the API, when it requires one (default: $KFP_TOKEN)")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    add_connection_flags(parser)
    parser.add_argument("--pipeline", choices=list(PIPELINE_CHOICES), required=True)
    parser.add_argument("--package", type=Path, help="compiled spec (default: pipelines/compiled/)")
    parser.add_argument("--pipeline-version",
                        help="run this uploaded version of the pipeline (`kfp upload`'s version name) "
                             "instead of sending the spec, so the UI shows which code ran")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"experiment to file the run under (default {DEFAULT_EXPERIMENT})")
    parser.add_argument("--service-account", help="Kubernetes service account of the run's pods, e.g. "
                                                  "whisper-moe-pipeline-runner (k8s/base)")
    parser.add_argument("--no-cache", action="store_true", help="rerun every task (ignore KFP's cache)")
    parser.add_argument("--dvc-repo", help="Git URL of a DVC repository with the data folder")
    parser.add_argument("--dvc-rev", help="revision of --dvc-repo")
    parser.add_argument("--dvc-path", help="data folder inside --dvc-repo")
    parser.add_argument("--data-s3-uri", help="s3://bucket/prefix of a data folder")
    parser.add_argument("--data-dir", help="data folder on a volume mounted in the data task")
    parser.add_argument("--output-s3-uri", help="s3://bucket/prefix to publish the model under")


def cmd_kfp(args) -> int:
    from whisper_moe_kfp import client

    params = params_from_args(args) if args.kfp_command in ("run", "schedule") else None
    return client.run_command(args, params)
