"""Compile both pipelines to pipelines/compiled/*.yaml, or check that the committed ones are current.

    python pipelines/compile.py                  # write pipelines/compiled/{pretrained,regular}_moe.yaml
    python pipelines/compile.py --check          # exit 1 when a committed spec differs from a fresh compile
    python pipelines/compile.py --gpu-pool gke --out-dir /tmp/gke   # a spec for a GKE A100 pool

Placement and images are baked into the spec at compile time; each flag sets the
environment variable of the same meaning (pipelines/placement.py, components/images.py)
before the pipelines are built. The committed specs use the defaults: the NVIDIA GPU
operator's A100 label, the nvidia.com/gpu:NoSchedule taint, the whisper-moe-s3 Secret and
ghcr.io/whisper-moe/whisper-moe:<version>-{cpu,cuda}. Every task's container gets
$WHISPER_MOE_IMAGE, the image reference it runs, which the model's lineage records.
"""

import argparse
import difflib
import importlib
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
PIPELINES = {  # output name -> (module, pipeline function)
    "pretrained_moe": ("pipelines.pretrained_moe", "pretrained_moe"),
    "regular_moe": ("pipelines.regular_moe", "regular_moe"),
}
FLAG_ENV = {  # flag destination -> environment variable read at definition time
    "gpu_pool": "WHISPER_MOE_GPU_POOL",
    "node_selector": "WHISPER_MOE_NODE_SELECTOR",
    "toleration": "WHISPER_MOE_TOLERATION",
    "s3_secret": "WHISPER_MOE_S3_SECRET",
    "gpus": "WHISPER_MOE_GPUS",
    "checkpoint_pvc": "WHISPER_MOE_CHECKPOINT_PVC",
    "image_repo": "WHISPER_MOE_IMAGE_REPO",
    "image_tag": "WHISPER_MOE_IMAGE_TAG",
    "cpu_image": "WHISPER_MOE_CPU_IMAGE",
    "cuda_image": "WHISPER_MOE_CUDA_IMAGE",
    "params": "WHISPER_MOE_PARAMS",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=COMPILED_DIR)
    parser.add_argument("--check", action="store_true",
                        help="compare fresh compiles with the files in --out-dir; exit 1 on a difference")
    parser.add_argument("--gpu-pool", choices=["gpu-operator", "gke"],
                        help="preset node selector: nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB "
                             "(default) or cloud.google.com/gke-accelerator=nvidia-tesla-a100")
    parser.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                        help="node label of the GPU pool (repeatable; replaces the preset)")
    parser.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                        help="taint of the GPU pool to tolerate (repeatable; default "
                             "nvidia.com/gpu:NoSchedule)")
    parser.add_argument("--s3-secret", help="Secret holding the S3 keys (default whisper-moe-s3)")
    parser.add_argument("--gpus", type=int, help="GPUs per GPU task (default 1)")
    parser.add_argument("--checkpoint-pvc", help="PersistentVolumeClaim the training tasks "
                        "checkpoint to and resume from (default whisper-moe-checkpoints)")
    parser.add_argument("--image-repo", help="image repository (default ghcr.io/whisper-moe/whisper-moe)")
    parser.add_argument("--image-tag", help="image tag before -cpu/-cuda (default: the project version)")
    parser.add_argument("--cpu-image", help="the whole cpu image reference, e.g. "
                        "REPO@sha256:DIGEST (wins over --image-repo/--image-tag)")
    parser.add_argument("--cuda-image", help="the whole cuda image reference (as --cpu-image)")
    parser.add_argument("--params", help="params.yaml the parameter defaults come from")
    return parser


def apply_flags(args: argparse.Namespace) -> None:
    """Export the given flags as the environment variables placement and images read."""
    for dest, variable in FLAG_ENV.items():
        value = getattr(args, dest)
        if value is None:
            continue
        os.environ[variable] = ",".join(value) if isinstance(value, list) else str(value)


def compile_pipeline(pipeline_func, out_path: Path | None, name: str) -> Path:
    from kfp import compiler

    out_path = out_path or COMPILED_DIR / f"{name}.yaml"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    name_task_images(pipeline_func)
    compiler.Compiler().compile(pipeline_func=pipeline_func, package_path=str(out_path))
    check_yaml(out_path)
    return out_path


def name_task_images(pipeline_func) -> None:
    """Give every task's container $WHISPER_MOE_IMAGE, the image reference it runs, so a
    model's lineage names the exact image (its digest when compiled with --cpu-image /
    --cuda-image REPO@sha256:...). Done here, on the built spec, so no task can miss it."""
    from whisper_moe.lineage import IMAGE_ENV

    executors = pipeline_func.pipeline_spec.deployment_spec["executors"]
    for name in executors.keys():
        if "container" not in executors[name]:
            continue  # an importer: no pod of ours
        container = executors[name]["container"]
        others = [dict(variable) for variable in container["env"] if variable["name"] != IMAGE_ENV] \
            if "env" in container else []
        container["env"] = [*others, {"name": IMAGE_ENV, "value": container["image"]}]


def check_yaml(path: Path) -> None:
    """The compiler copies parameter defaults into a comment header, line by line; a
    multi-line default ends the comment early and breaks the file for the server."""
    import yaml

    try:
        list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as error:
        raise SystemExit(f"{path}: the compiled spec is not valid YAML ({error}); a pipeline "
                         "parameter default probably spans several lines") from error


def compile_all(out_dir: Path) -> list[Path]:
    written = []
    for name, (module_name, function_name) in PIPELINES.items():
        pipeline_func = getattr(importlib.import_module(module_name), function_name)
        written.append(compile_pipeline(pipeline_func, out_dir / f"{name}.yaml", name))
    return written


def stale_specs(committed_dir: Path) -> list[str]:
    """Names of committed specs that differ from a fresh compile, each with a short diff."""
    problems = []
    with tempfile.TemporaryDirectory() as fresh_dir:
        for fresh in compile_all(Path(fresh_dir)):
            committed = committed_dir / fresh.name
            if not committed.exists():
                problems.append(f"{committed}: missing")
                continue
            if committed.read_text() != fresh.read_text():
                diff = list(difflib.unified_diff(committed.read_text().splitlines(),
                                                 fresh.read_text().splitlines(),
                                                 str(committed), "fresh compile", lineterm="", n=1))
                shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
                problems.append(f"{committed}: differs from a fresh compile\n{shown}")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_flags(args)
    if args.check:
        problems = stale_specs(args.out_dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("the compiled pipelines are stale: run `python pipelines/compile.py` and commit "
                  "pipelines/compiled/", file=sys.stderr)
            return 1
        print(f"{', '.join(PIPELINES)}: up to date in {args.out_dir}")
        return 0
    for path in compile_all(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
