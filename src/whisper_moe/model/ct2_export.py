"""Export a checkpoint for CTranslate2 / faster-whisper: one merged model per expert, plus the gate.

CTranslate2 runs a plain Whisper, so each expert is merged into the base
(`W + scaling * B_e @ A_e` on every target projection) and converted on its own; the
gate needs the frozen base's encoder output, so the base is exported too. A routed
transcription encodes with the base, lets the gate pick the top-1 expert, and decodes
with that expert's model: exactly our model under one-hot routing. Each folder is a
model faster-whisper loads (`WhisperModel(out/expert_0)`).

    out/base/  out/expert_0/ ... out/expert_{E-1}/  out/gate.safetensors  out/ct2_export.json
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import atomic_folder

EXPORT_INFO = "ct2_export.json"
GATE_FILE = "gate.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "preprocessor_config.json", "vocabulary.json",
                   "vocabulary.txt")


class CT2ExportError(WhisperMoeError):
    """The checkpoint cannot be exported to CTranslate2; the message says why."""


def expert_deltas(model, expert: int) -> dict[str, torch.Tensor]:
    """`scaling * B_e @ A_e` for every target projection (module name -> weight delta)."""
    deltas = {}
    for name, layer in model.expert_layers():
        a_block = layer.expert_A(expert).float()
        b_block = layer.expert_B(expert).float()
        deltas[name] = layer.scaling * (b_block @ a_block)
    return deltas


def merge_into(base, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the deltas to the base's Linear weights in place; return the originals to restore."""
    originals = {}
    for name, delta in deltas.items():
        linear = base.get_submodule(name)
        originals[name] = linear.weight.data.clone()
        linear.weight.data += delta.to(linear.weight.dtype)
    return originals


def restore(base, originals: dict[str, torch.Tensor]) -> None:
    for name, weight in originals.items():
        base.get_submodule(name).weight.data.copy_(weight)


def convert_transformers_dir(source: Path, target: Path, quantization: str | None) -> Path:
    """A transformers Whisper folder -> a CTranslate2 folder (tokenizer files copied)."""
    import ctranslate2.converters

    copy_files = [name for name in TOKENIZER_FILES if (source / name).exists()]
    converter = ctranslate2.converters.TransformersConverter(str(source), copy_files=copy_files)
    converter.convert(str(target), quantization=quantization, force=True)
    return target


def export_ct2(checkpoint_dir: str | Path, out_dir: str | Path,
               quantization: str | None = None) -> Path:
    """Write the base, one merged model per expert and the gate under out_dir."""
    from whisper_moe.model.base import decoder_prefix_ids, load_base_model, whisper_token_ids
    from whisper_moe.model.decode import suppressed_token_ids
    from whisper_moe.model.io import load_moe

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CT2ExportError(f"--out {out_dir} is a file", hint="give a folder for the export")
    model, tokenizer = load_moe(checkpoint_dir)
    plain, _ = load_base_model(model.config.base_model)
    plain.eval()
    with tempfile.TemporaryDirectory(prefix="whisper-moe-ct2-") as scratch, \
            atomic_folder(out_dir) as build:
        hf_dir = Path(scratch) / "hf"
        for index, name in enumerate(["base"] + [f"expert_{e}" for e in range(model.config.num_experts)]):
            originals = merge_into(plain, expert_deltas(model, index - 1)) if index else {}
            plain.save_pretrained(hf_dir, safe_serialization=True)
            tokenizer.save_pretrained(hf_dir)
            restore(plain, originals)
            convert_transformers_dir(hf_dir, build / name, quantization)
            shutil.rmtree(hf_dir)
        gate_state = {key: value.detach().float().contiguous().cpu()
                      for key, value in model.gate.state_dict().items()}
        save_file(gate_state, build / GATE_FILE)
        tokenizer.save_pretrained(build / "tokenizer")
        info = {"num_experts": model.config.num_experts, "base_model": model.config.base_model,
                "gate_hidden": model.config.gate_hidden, "gate_input_dim": plain.config.d_model,
                "num_mel_bins": plain.config.num_mel_bins,
                "total_frames": 2 * plain.config.max_source_positions,
                "prefix_ids": decoder_prefix_ids(tokenizer, plain.config),
                "suppress_ids": suppressed_token_ids(tokenizer, plain.generation_config,
                                                     whisper_token_ids(tokenizer)["eot"]),
                "quantization": quantization, "gate_input": "mean of the base encoder output over "
                "valid positions", "routing": "top-1 of the gate"}
        (build / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
