"""Pooled frozen-encoder embeddings of audio rows: the gate's input, batched on a device.

Each utterance becomes the mean of the frozen base encoder's output over the
positions that saw real audio (padding excluded), the same function the gate uses
(`WhisperMoE.pooled_embeddings`). Audio is decoded in DataLoader workers; log-mel,
encoder and pooling run on the device, and only the `[d]` mean is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from whisper_moe.data.audio import AudioError, load_audio
from whisper_moe.data.features import whisper_features
from whisper_moe.model.moe import pool_encoder_output
from whisper_moe.training.runtime import mixed_precision


class AudioRows(Dataset):
    """Manifest rows -> decoded audio; an unusable file becomes a counted reason."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict:
        try:
            return {"position": position, "audio": load_audio(self.rows[position]["audio_filepath"])}
        except AudioError as error:
            return {"position": position, "error": error.reason}


def collate_audio(items: list[dict]) -> dict:
    """Zero-pad the decoded audio of a batch; failed items travel as (position, reason)."""
    good = [item for item in items if "audio" in item]
    num_samples = [len(item["audio"]) for item in good]
    audio = np.zeros((len(good), max(num_samples, default=0)), dtype=np.float32)
    for row, item in enumerate(good):
        audio[row, : len(item["audio"])] = item["audio"]
    return {
        "positions": [item["position"] for item in good],
        "audio": torch.from_numpy(audio),
        "num_samples": torch.tensor(num_samples, dtype=torch.long),
        "errors": [(item["position"], item["error"]) for item in items if "error" in item],
    }


def encoder_pooled(whisper, features: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Frozen-base encoder output averaged over valid positions, float32 `[B, d]`.

    The same computation as `WhisperMoE.pooled_embeddings` (experts off), on a plain
    Whisper so this stage needs no MoE around the base.
    """
    hidden = whisper.model.encoder(features).last_hidden_state
    return pool_encoder_output(hidden, num_frames, 2 * whisper.config.max_source_positions)


def embedding_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The encoder's weights in `runtime.precision`'s compute type: the encoder is frozen,
    so no float32 master copy is needed."""
    compute_dtype, _ = mixed_precision(device, precision)
    return compute_dtype or torch.float32


def pooled_embedding_batches(whisper, rows: list[dict], device: torch.device, batch_size: int,
                             num_workers: int = 0) -> Iterator[dict]:
    """Yield per batch {"positions", "embeddings" float32 [b, d] numpy, "errors"}.

    Audio is decoded in DataLoader workers; log-mel, encoder and pooling run on `device`.
    """
    loader = DataLoader(AudioRows(rows), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_audio,
                        pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if num_workers else None)
    dtype = next(whisper.parameters()).dtype
    for batch in loader:
        embeddings = np.zeros((0, whisper.config.d_model), dtype=np.float32)
        if batch["positions"]:
            with torch.inference_mode():  # not held across the yield: the caller's mode is its own
                features, frames = whisper_features(batch["audio"], batch["num_samples"],
                                                    whisper.config, device, dtype)
                embeddings = encoder_pooled(whisper, features, frames).cpu().numpy()
        yield {"positions": batch["positions"], "embeddings": embeddings, "errors": batch["errors"]}
