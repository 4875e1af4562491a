"""`whisper-moe`: one subcommand per stage, the seed-compatible `pipeline`, and tools.

Every subcommand reads `--params` (params.yaml, the one configuration) and applies
`-S key=value` overrides; flags named after the seed's (`--asr-batch-size`, ...) map
onto the same keys, and a subcommand offers only the flags that act in it, so no flag
is ever silently ignored. Every value is checked before any work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from whisper_moe.config import (
    DEFAULT_PARAMS,
    PRECISIONS,
    ConfigError,
    check_consistency,
    load_params,
    set_dotted,
)

log = logging.getLogger("whisper_moe")

# seed flag -> params key: each one is honoured through the configuration.
SEED_FLAGS = {
    "seed": "seed",
    "mode": "mode",
    "num_experts": "model.num_experts",
    "asr_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "precision": "runtime.precision",
    "num_workers": "runtime.num_workers",
    "eval_every_n_epochs": "train.eval_every_n_epochs",
    "save_every_n_epochs": "train.save_every_n_epochs",
    "data_percent": "data.data_percent",
    "device": "runtime.device",
    "epochs": "train.epochs",
    "learning_rate": "train.lr",
    "base_model": "model.base_model",
    "routing": "routing.mode",
    "top_k": "routing.top_k",
    "embedding_percent": "embed.embedding_percent",
    "clustering_algorithm": "cluster.algorithm",
    "min_clusters": "cluster.min_clusters",
    "max_clusters": "cluster.max_clusters",
    "min_cluster_size": "cluster.min_cluster_size",
    "gating_batch_size": "pretrain_gate.batch_size",
    "expert_batch_size": "pretrain_experts.batch_size",
    "max_skip_fraction": "data.max_skip_fraction",
}


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"-S expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"-S {text}: the value is not valid YAML") from None


def params_from_args(args: argparse.Namespace) -> dict:
    """params.yaml, then `-S` overrides, then the explicit flags that were given; each
    layer checked as it is applied, the rules between keys checked at the end."""
    path = args.params
    if path is None:
        path = "params.yaml" if Path("params.yaml").exists() else None
        if path is None:
            log.warning("no params.yaml in %s: using the built-in defaults", Path.cwd())
    params = load_params(path)
    for key, value in getattr(args, "set", None) or []:
        set_dotted(params, key, value, source="-S")
    set_precision_alias(args)
    for flag, key in SEED_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_dotted(params, key, value, source="--" + flag.replace("_", "-"))
    if getattr(args, "epochs", None) is not None:
        params["quick"]["epochs"] = args.epochs  # --epochs wins in quick mode too
    if getattr(args, "no_plot", False):
        params["cluster"]["plot"] = False
    if getattr(args, "num_clusters", None) is not None:
        set_dotted(params, "model.num_experts", args.num_clusters, source="--num-clusters")
    apply_data_source(params, args)
    return check_consistency(params, "the configuration")


def set_precision_alias(args: argparse.Namespace) -> None:
    """The seed's --fp16 / --no-fp16 are runtime.precision mixed / fp32."""
    fp16 = getattr(args, "fp16", None)
    if fp16 is None:
        return
    alias = "mixed" if fp16 else "fp32"
    if args.precision not in (None, alias):
        raise ConfigError(f"--{'' if fp16 else 'no-'}fp16 means --precision {alias}, "
                          f"but --precision {args.precision} was given too; keep one")
    args.precision = alias


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None,
                        help="configuration file (default: ./params.yaml when present, else built-in defaults)")
    parser.add_argument("-S", "--set", action="append", type=parse_override, metavar="KEY=VALUE",
                        help="override one parameter, e.g. -S train.lr=3e-4 (repeatable)")
    parser.add_argument("--log-file", help="also write the log to this file")
    parser.add_argument("--seed", type=int)


def add_runtime_flags(parser: argparse.ArgumentParser, precision: bool = True,
                      workers: bool = True) -> None:
    """The runtime section's flags, on the subcommands where they act."""
    parser.add_argument("--device", help="runtime.device: auto, cpu, cuda, cuda:N or mps")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS,
                            help="runtime.precision: fp32; mixed (bf16 where supported, else fp16 "
                                 "with loss scaling); bf16; fp16")
        parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                            help="the seed's flag: --fp16 is --precision mixed, --no-fp16 is fp32")
    if workers:
        parser.add_argument("--num-workers", type=int,
                            help="runtime.num_workers: DataLoader processes decoding audio")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["quick", "full"])
    parser.add_argument("--num-experts", type=int)
    parser.add_argument("--asr-batch-size", type=int)
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--eval-every-n-epochs", type=int)
    parser.add_argument("--save-every-n-epochs", type=int)
    parser.add_argument("--data-percent", type=float)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--base-model", help="hub name, local directory, or 'demo' (tiny.en, offline)")
    parser.add_argument("--routing", choices=["soft", "topk", "curriculum"])
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last finished stage and the last checkpoint")


def add_pretraining_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-pretraining", action="store_true",
                        help="regular MoE: gate and experts start random and train jointly")
    parser.add_argument("--embedding-percent", type=float)
    parser.add_argument("--clustering-algorithm", choices=["spectral", "kmeans", "hdbscan"])
    parser.add_argument("--min-clusters", type=int)
    parser.add_argument("--max-clusters", type=int)
    parser.add_argument("--min-cluster-size", type=int)
    parser.add_argument("--gating-batch-size", type=int)
    parser.add_argument("--expert-batch-size", type=int)
    parser.add_argument("--no-plot", action="store_true", help="skip the cluster scatter plot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-moe", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("pipeline", help="the whole pipeline (seed-compatible flags)")
    add_common(p)
    add_runtime_flags(p)
    add_training_flags(p)
    add_pretraining_flags(p)
    p.add_argument("--output-dir", help="default: runs/<mode>")
    p.add_argument("--dataset-root", help="SAP release root (imported) instead of the demo corpus")
    p.add_argument("--manifest-dir", help="folder with train/dev/test.jsonl instead of the demo corpus")
    p.add_argument("--max-skip-fraction", type=float)

    p = commands.add_parser("data", help="data stage: corpus -> validated train/dev/test manifests")
    add_common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset-root", help="SAP release root instead of the demo corpus")
    p.add_argument("--manifest-dir", help="folder with train/dev/test.jsonl instead of the demo corpus")
    p.add_argument("--max-skip-fraction", type=float)

    p = commands.add_parser("make-demo-data", help="synthesise the multi-accent demo corpus")
    add_common(p)
    p.add_argument("--out", default=None, help="default: data.dir from params")
    p.add_argument("--speakers-per-accent", type=int)
    p.add_argument("--utterances-per-speaker", type=int)

    p = commands.add_parser("import-sap", help="Speech Accessibility Project layout -> manifests")
    p.add_argument("root")
    p.add_argument("--out", required=True)

    p = commands.add_parser("import-ct2", help="CTranslate2/faster-whisper dir -> transformers dir")
    p.add_argument("src")
    p.add_argument("dst")

    p = commands.add_parser("validate-data", help="check a manifest: cleaned copy + data report")
    add_common(p)
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--max-skip-fraction", type=float)
    p.add_argument("--root", help="audio paths may not escape this folder")

    p = commands.add_parser("train", help="joint training of gate and experts")
    add_common(p)
    add_runtime_flags(p)
    add_training_flags(p)
    p.add_argument("--train-manifest", required=True)
    p.add_argument("--dev-manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", help="checkpoint of pretrained gate and experts")

    p = commands.add_parser("evaluate", help="WER/CER overall and per group, HTML report")
    add_common(p)
    add_runtime_flags(p)
    p.add_argument("--checkpoint")
    p.add_argument("--base-model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["quick", "full"])

    p = commands.add_parser("export-peft", help="write each expert as a PEFT LoRA adapter")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)

    for extension in optional_extensions():
        import inspect

        if len(inspect.signature(extension.add_subcommands).parameters) >= 2:
            extension.add_subcommands(commands, add_common)
        else:
            extension.add_subcommands(commands)

    p = commands.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    add_common(p)
    add_runtime_flags(p, workers=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("audio", nargs="+")
    return parser


def optional_extensions() -> list:
    """Subcommand modules: pretraining stages, and `kfp` when the kfp extra is installed."""
    import importlib

    modules = []
    for name in ("whisper_moe.cli_pretraining", "whisper_moe_kfp.client"):
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name not in (name, "kfp", "whisper_moe_kfp"):
                raise
    return modules


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from whisper_moe.training.runtime import setup_logging

    setup_logging(getattr(args, "log_file", None))
    commands = dict(COMMANDS)
    for extension in optional_extensions():
        commands.update(extension.COMMANDS)
    try:
        return commands[args.command](args) or 0
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as error:  # one clear line for users; the traceback with -v/WHISPER_MOE_DEBUG
        from whisper_moe.errors import explain

        message, code = explain(error)
        if code is None:
            raise
        log.error("%s", message)
        return code


def apply_data_source(params: dict, args) -> dict:
    """--dataset-root (SAP) or --manifest-dir replace the demo corpus as the data source."""
    if getattr(args, "dataset_root", None):
        params["data"]["source"], params["data"]["sap_root"] = "sap", args.dataset_root
        if params["data"]["dir"] == DEFAULT_PARAMS["data"]["dir"]:
            params["data"]["dir"] = "data/sap"  # never the demo corpus's folder
    if getattr(args, "manifest_dir", None):
        params["data"]["source"], params["data"]["manifest_dir"] = "manifest", args.manifest_dir
    return params


def cmd_pipeline(args) -> int:
    from whisper_moe.stages import pipeline

    params = params_from_args(args)
    output_dir = Path(args.output_dir or f"runs/{params['mode']}")
    pipeline.run(params, output_dir, skip_pretraining=args.skip_pretraining, resume=args.resume)
    return 0


def cmd_data(args) -> int:
    from whisper_moe.stages import data as data_stage

    params = params_from_args(args)
    outputs = data_stage.run(params, args.out)
    print(f"validated manifests and data report in {args.out}: {outputs}")
    return 0


def cmd_make_demo_data(args) -> int:
    from whisper_moe.data.demo import make_demo_corpus

    params = params_from_args(args)
    for flag in ("speakers_per_accent", "utterances_per_speaker"):
        if getattr(args, flag) is not None:
            set_dotted(params, f"data.demo.{flag}", getattr(args, flag),
                       source="--" + flag.replace("_", "-"))
    demo = params["data"]["demo"]
    out = Path(args.out or params["data"]["dir"])
    paths = make_demo_corpus(
        out, accents=demo["accents"], speakers_per_accent=demo["speakers_per_accent"],
        utterances_per_speaker=demo["utterances_per_speaker"], seed=params["seed"],
    )
    print(f"demo corpus written to {out}: {paths}")
    return 0


def cmd_import_sap(args) -> int:
    from whisper_moe.data.sap import import_sap

    print(import_sap(args.root, args.out))
    return 0


def cmd_import_ct2(args) -> int:
    from whisper_moe.model.ct2_import import import_ct2_whisper

    print(f"imported to {import_ct2_whisper(args.src, args.dst)}")
    return 0


def cmd_validate_data(args) -> int:
    from whisper_moe.stages import data as data_stage

    params = params_from_args(args)
    report = data_stage.validate_one(params, args.manifest, Path(args.out), root=args.root)
    print(f"kept {report['kept']}, skipped {report['skipped']}; cleaned manifest and report in {args.out}")
    return 0


def cmd_train(args) -> int:
    from whisper_moe.stages import train

    params = params_from_args(args)
    rank, world_size = init_distributed(params)
    metrics = train.run(params, args.train_manifest, args.dev_manifest, args.out, init_dir=args.init,
                        resume=args.resume, rank=rank, world_size=world_size)
    if rank == 0:
        print(f"checkpoint: {metrics['checkpoint']}")
    return 0


def init_distributed(params: dict) -> tuple[int, int]:
    """Under torchrun: join the process group (NCCL on GPU, gloo on CPU) and pin the device."""
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and params["runtime"]["device"] != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        params["runtime"]["device"] = f"cuda:{local_rank}"
    else:
        params["runtime"]["device"] = "cpu"
    return dist.get_rank(), world_size


def cmd_evaluate(args) -> int:
    from whisper_moe.stages import evaluate

    params = params_from_args(args)
    metrics = evaluate.run(params, checkpoint_dir=args.checkpoint, test_manifest=args.manifest,
                           out_dir=args.out, base_model=args.base_model)
    for system in ("base", "moe", "oracle"):
        if system in metrics:
            print(f"{system:>6}: WER {metrics[system]['wer']:.4f}  CER {metrics[system]['cer']:.4f}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_export_peft(args) -> int:
    from whisper_moe.model.export import export_peft_adapters

    for path in export_peft_adapters(args.checkpoint, args.out):
        print(path)
    return 0


def cmd_transcribe(args) -> int:
    from whisper_moe.stages.transcribe import transcribe_files

    params = params_from_args(args)
    for path, text, expert in transcribe_files(params, args.checkpoint, args.audio):
        print(f"{path}\t[expert {expert}]\t{text}")
    return 0


COMMANDS = {
    "pipeline": cmd_pipeline,
    "data": cmd_data,
    "make-demo-data": cmd_make_demo_data,
    "import-sap": cmd_import_sap,
    "import-ct2": cmd_import_ct2,
    "validate-data": cmd_validate_data,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export-peft": cmd_export_peft,
    "transcribe": cmd_transcribe,
}


if __name__ == "__main__":
    sys.exit(main())
