"""The embed stage's pooled embeddings, reused as the gate-input cache of later stages.

Embed, expert pretraining and joint training pool the same frozen encoder over the
same training audio. The later two take the embed stage's vector for every utterance
it holds and encode only the others, so the encoder runs once per utterance.

Reuse only when the numbers provably match: the embed plan records how it pooled
(`pooling_signature`: base model, weight dtype, autocast, device type) and it must
equal this run's; a row counts only with the same id and audio file; and the trainer
encodes one reused utterance again and compares (`REUSE_RTOL`, `REUSE_ATOL`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_moe import artifacts

log = logging.getLogger("whisper_moe.train")

# One utterance pooled in batches of other sizes: equal on the CPU in float32 (measured on
# the demo base), within kernel rounding on a GPU, whose kernels may depend on the batch.
REUSE_RTOL, REUSE_ATOL = 1e-4, 1e-5


@dataclass
class KnownPooled:
    """Pooled embeddings already computed for some rows of a dataset."""

    positions: torch.Tensor  # long [k]: dataset rows
    vectors: torch.Tensor  # float32 [k, d]


def pooling_signature(base_model: str, weights_dtype: torch.dtype, autocast_dtype: torch.dtype | None,
                      device: torch.device) -> dict:
    """What decides a pooled embedding's numbers besides the audio (JSON, kept in the embed plan).

    The weights' dtype is also the log-mel's; autocast changes which ops round to
    half precision; CPU and GPU kernels round differently.
    """
    return {"base_model": str(base_model), "weights_dtype": str(weights_dtype).removeprefix("torch."),
            "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).removeprefix("torch."),
            "device_type": torch.device(device).type}


def reusable_pooled(embeddings_dir: str | Path, rows: list[dict], signature: dict,
                    d_model: int) -> KnownPooled | None:
    """The embed stage's vectors of the `rows` it holds, or None when it pooled otherwise.

    Every refusal and the share reused are logged: a mismatch is never silent.
    """
    if not artifacts.has_embeddings(embeddings_dir):
        log.warning("%s: no complete embed output; encoding every utterance", embeddings_dir)
        return None
    recorded = artifacts.read_json(Path(embeddings_dir) / artifacts.EMBED_REPORT).get("plan", {}).get("pooling")
    if recorded != signature:
        log.warning("%s: pooled as %s, this run pools as %s; not reused, encoding every utterance",
                    embeddings_dir, recorded, signature)
        return None
    embeddings, index = artifacts.load_embeddings(embeddings_dir)
    if embeddings.shape[1] != d_model:
        log.warning("%s: d=%d but the model has d=%d; not reused", embeddings_dir, embeddings.shape[1], d_model)
        return None
    positions, sources = matching_rows(rows, index)
    log.info("gate inputs: %d of %d utterances reused from %s, %d to encode", len(positions), len(rows),
             embeddings_dir, len(rows) - len(positions))
    if not positions:
        return None
    return KnownPooled(torch.tensor(positions, dtype=torch.long), torch.from_numpy(embeddings[sources]))


def matching_rows(rows: list[dict], index: list[dict]) -> tuple[list[int], list[int]]:
    """(dataset positions, embed rows) of the utterances both hold with the same id and audio file."""
    where = {entry["id"]: (row, entry.get("audio_filepath")) for row, entry in enumerate(index)}
    positions, sources, other_audio = [], [], 0
    for position, row in enumerate(rows):
        found = where.get(row["id"])
        if found is not None and found[1] == row["audio_filepath"]:
            positions.append(position)
            sources.append(found[0])
        elif found is not None:
            other_audio += 1
    if other_audio:
        log.warning("%d utterances have the embed stage's id but another audio file; encoded again",
                    other_audio)
    return positions, sources
