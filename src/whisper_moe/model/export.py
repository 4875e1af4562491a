"""Export each expert as a standard PEFT LoRA adapter directory.

Users can then load any single expert with `PeftModel.from_pretrained(base, dir)` and
serve, merge or inspect it with the tools they already know.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import atomic_folder
from whisper_moe.model.moe import WhisperMoE


def expert_adapter_state(model: WhisperMoE, expert: int) -> dict:
    """PEFT's key layout: base_model.model.<module>.lora_{A,B}.weight for one expert."""
    state = {}
    for name, layer in model.expert_layers():
        prefix = f"base_model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = layer.expert_A(expert).detach().clone().contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = layer.expert_B(expert).detach().clone().contiguous().cpu()
    return state


def adapter_config(model: WhisperMoE) -> dict:
    from peft import LoraConfig

    config = model.config
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=sorted(set(config.target_modules)),
        base_model_name_or_path=config.base_model,
        bias="none",
    )
    return lora.to_dict()


def export_peft_adapters(checkpoint_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write `<out>/expert_<i>/` (adapter_config.json + adapter_model.safetensors) per expert."""
    from whisper_moe.model.io import load_moe

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise WhisperMoeError(f"--out {out_dir} is a file",
                              hint="give a folder for the adapters (it is created or replaced)")
    model, _ = load_moe(checkpoint_dir)
    return write_peft_adapters(model, out_dir)


def write_peft_adapters(model: WhisperMoE, out_dir: str | Path) -> list[Path]:
    """All adapters, swapped in as one folder: no expert_N of an earlier export survives."""
    out_dir = Path(out_dir)
    config = adapter_config(model)
    serialisable = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    names = [f"expert_{expert}" for expert in range(model.config.num_experts)]
    with atomic_folder(out_dir) as building:
        for expert, name in enumerate(names):
            folder = building / name
            folder.mkdir()
            save_file(expert_adapter_state(model, expert), folder / "adapter_model.safetensors",
                      metadata={"format": "pt"})
            (folder / "adapter_config.json").write_text(json.dumps(serialisable, indent=2, default=str))
    return [out_dir / name for name in names]
