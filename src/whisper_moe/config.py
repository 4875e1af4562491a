"""The one configuration: defaults here, overridden by params.yaml, then by flags.

Every stage receives the whole nested dict and reads its own section, so the CLI,
DVC and Kubeflow all run a stage from the same keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS: dict[str, Any] = {
    "seed": 42,
    "mode": "full",  # quick | full: quick shortens epochs and data for a smoke run
    "data": {
        "source": "demo",  # demo | manifest | sap
        "dir": "data/demo",  # demo corpus or imported data lives here
        "manifest_dir": None,  # for source=manifest: a folder with train/dev/test.jsonl
        "sap_root": None,  # for source=sap: the SAP release root
        "data_percent": 100.0,  # stratified share of the training manifest used
        "max_skip_fraction": 0.05,  # stop when more input than this is unusable
        "max_duration_s": 30.0,
        "demo": {
            "speakers_per_accent": 4,
            "utterances_per_speaker": 12,
            "accents": ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"],
        },
    },
    "model": {
        "base_model": "demo",  # 'demo' = tiny.en imported offline; else hub name or directory
        "num_experts": None,  # ??? required with skip_pretraining; else from clustering
        "lora": {
            "rank": 16,
            "alpha": 32,
            "dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"],
        },
        "gate_hidden": 512,
        "dtype": "float32",  # the frozen base's weights: float32 | bfloat16 (GPU memory) | float64
    },
    "routing": {
        "mode": "curriculum",  # soft | topk | curriculum (soft, then top-k)
        "top_k": 2,
        "soft_epochs": 3,  # curriculum: epochs of soft routing before top-k
        "temperature_start": 2.0,
        "temperature_end": 1.0,
        "noise_std": 0.1,  # router noise, relative to each utterance's logit spread across experts
        "load_balance_weight": 0.01,  # Switch E * sum f_i P_i over each optimizer step
        "z_loss_weight": 0.001,
    },
    "embed": {"embedding_percent": 5.0, "batch_size": 16},
    "cluster": {
        "algorithm": "spectral",  # spectral | kmeans | hdbscan
        "num_clusters": None,  # None: chosen automatically in [min_clusters, max_clusters]
        "min_clusters": 2,
        "max_clusters": 8,
        "min_cluster_size": 5,
        "pca_components": 50,
        "plot": True,
    },
    "pretrain_gate": {"epochs": 30, "batch_size": 256, "lr": 1e-3, "patience": 5},
    "pretrain_experts": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
    "train": {
        "epochs": 10,
        "batch_size": 2,  # --asr-batch-size
        "gradient_accumulation_steps": 8,
        "lr": 1e-3,
        "gate_lr": 1e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "max_grad_norm": 1.0,
        "fp16": False,  # mixed precision: bf16 where supported, fp16 + loss scaling otherwise
        "num_workers": 0,
        "eval_every_n_epochs": 1,
        "save_every_n_epochs": 1,
        "keep_checkpoints": 2,
        "device": "auto",
        "max_label_tokens": 448,
        "max_nonfinite_in_a_row": 5,
    },
    "evaluate": {"batch_size": 8, "max_new_tokens": 128, "compare_base": True},
    # The regular MoE (no pretraining) as `dvc repro` and Kubeflow run it; the CLI
    # `pipeline --skip-pretraining` takes --num-experts instead, as the seed did.
    "regular": {"num_experts": 4},
    # The fair baseline: one LoRA with the regular MoE's trainable parameters (rank E*r).
    "baselines": {"single_lora_rank": 64},
    "quick": {"epochs": 2, "max_train_utterances": 48, "max_eval_utterances": 24},
}


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated by override, recursing into nested sections."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_params(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the YAML file (if given), then overrides.

    A path that does not exist is an error: silently running on the defaults (quick caps,
    the demo model) instead of the intended configuration would waste a whole run.
    """
    params = copy.deepcopy(DEFAULT_PARAMS)
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(
            f"{path}: no such parameter file; run from the project folder (where params.yaml "
            "is) or pass --params FILE"
        )
    if path is not None:
        with open(path) as handle:
            from_file = yaml.safe_load(handle) or {}
        if not isinstance(from_file, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        unknown = set(from_file) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
        params = deep_merge(params, from_file)
    return deep_merge(params, overrides or {})


def set_dotted(params: dict, dotted_key: str, value: Any) -> None:
    """Set params['a']['b'] from 'a.b', refusing keys that do not exist."""
    node = params
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise KeyError(f"unknown parameter {dotted_key!r}")
        node = node[part]
    if parts[-1] not in node:
        raise KeyError(f"unknown parameter {dotted_key!r}")
    node[parts[-1]] = value
