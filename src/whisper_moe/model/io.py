"""Build a WhisperMoE from params, and save/load it as `moe_config.json` + safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from whisper_moe.config import inference_routing
from whisper_moe.fsio import atomic_folder
from whisper_moe.model.base import load_base_model
from whisper_moe.model.moe import MOE_CONFIG_NAME, WEIGHTS_NAME, MoEConfig, WhisperMoE


def moe_config_from_params(params: dict, num_experts: int) -> MoEConfig:
    """The architecture from params; its routing is the one the trained model keeps."""
    lora = params["model"]["lora"]
    routing = params["routing"]
    return MoEConfig(
        base_model=str(params["model"]["base_model"]),
        num_experts=int(num_experts),
        rank=int(lora["rank"]),
        alpha=float(lora["alpha"]),
        dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        gate_hidden=int(params["model"]["gate_hidden"]),
        routing_mode=inference_routing(routing),
        top_k=int(routing["top_k"]),
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def base_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype {name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_moe(config: MoEConfig, device: torch.device | str = "cpu", seed: int | None = None,
              dtype: str = "float32"):
    """(WhisperMoE, tokenizer) with freshly initialised experts and gate.

    `dtype` is the frozen base's storage type (bfloat16 halves its memory on a GPU);
    experts and gate always train in float32 (float64 when the base is float64).
    """
    base, tokenizer = load_base_model(config.base_model, dtype=base_dtype(dtype))
    if seed is not None:
        torch.manual_seed(seed)
    model = WhisperMoE(base, config)
    return model.to(device), tokenizer


def save_moe(model: WhisperMoE, directory: str | Path) -> Path:
    """Write the checkpoint folder atomically: a reader never sees half of it."""
    directory = Path(directory)
    with atomic_folder(directory) as temporary:
        model.config.save(temporary)
        state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
        save_file(state, temporary / WEIGHTS_NAME, metadata={"format": "pt"})
    return directory


def load_moe(directory: str | Path, device: torch.device | str = "cpu", dtype: str = "float32"):
    """(WhisperMoE, tokenizer) from a checkpoint folder; the base is loaded by its name."""
    directory = Path(directory)
    config = MoEConfig.load(directory)
    model, tokenizer = build_moe(config, device, dtype=dtype)
    load_moe_weights(model, directory)
    return model, tokenizer


def load_moe_weights(model: WhisperMoE, directory: str | Path) -> None:
    """Experts and gate of a checkpoint folder into an already built model."""
    weights_path = Path(directory) / WEIGHTS_NAME
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path}: missing (a checkpoint needs {MOE_CONFIG_NAME} and {WEIGHTS_NAME})")
    device = next(model.parameters()).device
    model.load_trainable_state_dict(load_file(weights_path, device=str(device)))
