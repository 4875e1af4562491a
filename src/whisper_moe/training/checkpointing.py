"""Atomic, verified training checkpoints that a preempted run resumes from exactly.

A checkpoint is a folder `step-00000123/` with a manifest of its files' sizes and
SHA-256 hashes, built and swapped into place by `whisper_moe.fsio.atomic_folder`. A
resume only trusts a folder whose manifest matches its files; a damaged newest
checkpoint falls back to the previous one with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from whisper_moe import fsio
from whisper_moe.fsio import sha256_of

log = logging.getLogger(__name__)

MANIFEST_NAME = "checkpoint_manifest.json"
PREFIX = "step-"


def write_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    torch_state: dict,
    json_state: dict,
    keep: int,
) -> Path:
    """Write one checkpoint atomically and prune all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    fsio.remove_leftovers(root)
    final = root / f"{PREFIX}{step:08d}"
    with fsio.atomic_folder(final) as temporary:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  temporary / "trainable.safetensors")
        torch.save(torch_state, temporary / "training_state.pt")
        (temporary / "trainer_state.json").write_text(json.dumps(json_state, indent=2))
        files = {path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
                 for path in sorted(temporary.iterdir())}
        (temporary / MANIFEST_NAME).write_text(json.dumps({"step": step, "files": files}, indent=2))
    prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        remove_checkpoint(old)


def remove_checkpoint(folder: Path) -> None:
    """Renamed out of the `step-` namespace before deletion: a kill mid-delete leaves no
    half-deleted folder that looks like a checkpoint."""
    fsio.remove_folder(folder)


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders are never listed)."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file matches the manifest, else what is wrong."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.exists():
            return f"{name} missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, expected {expected['bytes']}"
        if sha256_of(path) != expected["sha256"]:
            return f"{name} hash mismatch"
    return None


def latest_valid_checkpoint(root: Path) -> Path | None:
    """Newest checkpoint that verifies; damaged newer ones are reported and skipped."""
    for folder in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        log.warning("checkpoint %s is damaged (%s); falling back to an older one", folder, problem)
    return None


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(trainable tensors, torch state, json state); loads with weights_only only."""
    tensors = load_file(folder / "trainable.safetensors")
    torch_state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    json_state = json.loads((folder / "trainer_state.json").read_text())
    return tensors, torch_state, json_state
