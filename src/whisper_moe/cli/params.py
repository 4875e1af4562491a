"""From the command line to the one configuration: --params, -S overrides, the seed's flags.

Every flag named after the seed's (`--asr-batch-size`, ...) maps onto a params key, so
no flag is ever silently ignored; subcommands offer only the flags that act in them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from whisper_moe.config import (
    DEFAULT_PARAMS,
    PRECISIONS,
    ConfigError,
    check_consistency,
    load_params,
    read_yaml,
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
    "num_clusters": "model.num_experts",
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
        return key, read_yaml(value)
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
    apply_data_source(params, args)
    return check_consistency(params, "the configuration")


def set_precision_alias(args: argparse.Namespace) -> None:
    """The seed's --fp16 / --no-fp16 are runtime.precision mixed / fp32."""
    fp16 = getattr(args, "fp16", None)
    if fp16 is None:
        return
    alias = "mixed" if fp16 else "fp32"
    if getattr(args, "precision", None) not in (None, alias):
        raise ConfigError(f"--{'' if fp16 else 'no-'}fp16 means --precision {alias}, "
                          f"but --precision {args.precision} was given too; keep one")
    args.precision = alias


def apply_data_source(params: dict, args) -> dict:
    """--dataset-root (SAP), --manifest-dir, --hf-dataset or --nemo-manifest replace the demo
    corpus as the data source."""
    if getattr(args, "dataset_root", None):
        params["data"]["source"], params["data"]["sap_root"] = "sap", args.dataset_root
        if params["data"]["dir"] == DEFAULT_PARAMS["data"]["dir"]:
            params["data"]["dir"] = "data/sap"  # never the demo corpus's folder
    if getattr(args, "manifest_dir", None):
        params["data"]["source"], params["data"]["manifest_dir"] = "manifest", args.manifest_dir
    if getattr(args, "hf_dataset", None):
        params["data"]["source"], params["data"]["hf_dataset"] = "hf", args.hf_dataset
    if getattr(args, "nemo_manifest", None):
        params["data"]["source"], params["data"]["nemo_manifest"] = "nemo", args.nemo_manifest
    for flag in ("hf_audio_column", "hf_text_column", "hf_speaker_column", "hf_group_column"):
        if getattr(args, flag, None):
            params["data"][flag] = getattr(args, flag)
    return params


def add_common(parser: argparse.ArgumentParser) -> None:
    """--params, -S, --log-file and --seed: every subcommand that reads the configuration."""
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


def add_data_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["quick", "full"])
    parser.add_argument("--data-percent", type=float)
    parser.add_argument("--base-model", help="hub name, local directory, or 'demo' (tiny.en, offline)")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    add_data_selection(parser)
    parser.add_argument("--num-experts", type=int)
    parser.add_argument("--asr-batch-size", type=int)
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--eval-every-n-epochs", type=int)
    parser.add_argument("--save-every-n-epochs", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--routing", choices=["soft", "topk", "curriculum"])
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last finished stage and the last checkpoint")


def add_data_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-root", help="SAP release root (imported) instead of the demo corpus")
    parser.add_argument("--manifest-dir", help="folder with train/dev/test.jsonl instead of the demo corpus")
    parser.add_argument("--hf-dataset", metavar="DIR",
                        help="Hugging Face datasets folder (save_to_disk, parquet or audiofolder)")
    parser.add_argument("--hf-audio-column", help="its Audio column (default: data.hf_audio_column)")
    parser.add_argument("--hf-text-column", help="its transcript column (default: data.hf_text_column)")
    parser.add_argument("--hf-speaker-column", help="its speaker column, for speaker-disjoint splits")
    parser.add_argument("--hf-group-column", help="its group column (accent, etiology...)")
    parser.add_argument("--nemo-manifest", metavar="PATH",
                        help="NeMo manifest, or folder of train/dev/test manifests")
    parser.add_argument("--max-skip-fraction", type=float)


def add_clustering_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clustering-algorithm", choices=["spectral", "kmeans", "hdbscan"])
    parser.add_argument("--min-clusters", type=int)
    parser.add_argument("--max-clusters", type=int)
    parser.add_argument("--min-cluster-size", type=int, help="HDBSCAN's minimum cluster size")
    parser.add_argument("--no-plot", action="store_true", help="skip the cluster scatter plot")
