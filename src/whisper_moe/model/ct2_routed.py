"""Routed transcription on CTranslate2: base encoder -> gate -> the chosen expert's model.

Reads the folder `export_ct2` writes. The gate sees what it saw in training (the mean
of the frozen base's encoder output over the valid positions) and picks the top-1
expert; that expert's merged model decodes greedily with the same prefix and
suppressed tokens as our PyTorch decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from whisper_moe.data.features import log_mel_batch, num_valid_frames
from whisper_moe.errors import WhisperMoeError
from whisper_moe.model.ct2_export import EXPORT_INFO, GATE_FILE
from whisper_moe.model.gate import Gate
from whisper_moe.model.moe import pool_encoder_output


class RoutedCT2Whisper:
    """The E+1 CTranslate2 models and the gate of one export, ready to transcribe."""

    def __init__(self, export_dir: str | Path, device: str = "cpu", compute_type: str = "default",
                 threads: int = 0) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        export_dir = Path(export_dir)
        if not (export_dir / EXPORT_INFO).exists():
            raise WhisperMoeError(f"{export_dir} is not a CTranslate2 export of whisper-moe",
                                  hint="make one with `whisper-moe export-ct2 CHECKPOINT --out DIR`")
        self.info = json.loads((export_dir / EXPORT_INFO).read_text())

        def load(name: str):
            return ctranslate2.models.Whisper(str(export_dir / name), device=device,
                                              compute_type=compute_type, intra_threads=threads)

        self.base = load("base")
        self.experts = [load(f"expert_{e}") for e in range(self.info["num_experts"])]
        self.gate = Gate(self.info["gate_input_dim"], self.info["num_experts"], self.info["gate_hidden"])
        gate_state = load_file(str(export_dir / GATE_FILE))
        gate_state.setdefault("balance_bias", torch.zeros(self.info["num_experts"]))  # older exports
        self.gate.load_state_dict(gate_state)
        self.gate.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(export_dir / "tokenizer"))

    def features(self, windows: list[np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        padded = torch.zeros(len(windows), max(len(w) for w in windows))
        for row, samples in enumerate(windows):
            padded[row, : len(samples)] = torch.from_numpy(samples)
        total_frames = self.info["total_frames"]
        mel = log_mel_batch(padded, self.info["num_mel_bins"], total_frames)
        frames = num_valid_frames(torch.tensor([len(w) for w in windows]), total_frames)
        return np.ascontiguousarray(mel.numpy(), dtype=np.float32), frames

    @torch.no_grad()
    def route(self, features: np.ndarray, frames: torch.Tensor) -> list[int]:
        """The top-1 expert of each window, from the base encoder's pooled output."""
        import ctranslate2

        encoded = self.base.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
        hidden = torch.from_numpy(np.array(encoded, dtype=np.float32))
        pooled = pool_encoder_output(hidden, frames, self.info["total_frames"])
        return self.gate(pooled).argmax(dim=-1).tolist()

    def transcribe(self, windows: list[np.ndarray], max_new_tokens: int = 128) -> list[tuple[str, int]]:
        """(text, expert) for each window of 16 kHz audio (each at most 30 s)."""
        import ctranslate2

        features, frames = self.features(windows)
        experts = self.route(features, frames)
        # CTranslate2's Whisper generates at most max_length / 2 tokens after the prompt
        # (openai/whisper's sample_len of half the text context), so ask for twice ours.
        prefix = self.info["prefix_ids"]
        texts: list[str] = [""] * len(windows)
        for expert in sorted(set(experts)):
            rows = [row for row, chosen in enumerate(experts) if chosen == expert]
            results = self.experts[expert].generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(features[rows])),
                [prefix] * len(rows), beam_size=1, max_length=2 * max_new_tokens,
                suppress_blank=True, suppress_tokens=self.info["suppress_ids"])
            for row, result in zip(rows, results):
                texts[row] = self.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip()
        return list(zip(texts, experts))
