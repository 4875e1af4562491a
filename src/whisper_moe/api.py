"""The Python API for the common jobs: load a trained model, transcribe, see the experts used.

    from whisper_moe import api

    model = api.load("runs/quick/train/checkpoint")          # a WhisperMoE
    for result in api.transcribe("runs/quick/train/checkpoint", ["a.wav", "b.flac"]):
        print(result.path, result.experts, result.text)       # experts: top expert per window
    weights = api.routing(model, ["a.wav"])                   # [files, experts] gate weights

A front door like the command line: it calls the stages, which call the library.
"""

from __future__ import annotations

from pathlib import Path

import torch

from whisper_moe.config import defaults, set_dotted
from whisper_moe.data.audio import load_audio
from whisper_moe.data.features import whisper_features
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.stages.transcribe import Transcript, transcribe_files

__all__ = ["Transcript", "WhisperMoE", "load", "routing", "transcribe"]


def load(checkpoint: str | Path, device: str = "cpu") -> WhisperMoE:
    """The trained model of a checkpoint folder, in eval mode."""
    model = WhisperMoE.from_pretrained(checkpoint, device=device)
    model.eval()
    return model


def transcribe(checkpoint: str | Path, audio: list[str], device: str = "auto",
               backend: str = "torch", max_new_tokens: int = 128):
    """Yield a Transcript per file (text, top expert of each 30 s window, or its error).

    backend "ct2" takes an `export-ct2` folder instead of a checkpoint.
    """
    params = defaults()
    set_dotted(params, "runtime.device", device, source="api")
    set_dotted(params, "evaluate.max_new_tokens", max_new_tokens, source="api")
    yield from transcribe_files(params, checkpoint, [str(path) for path in audio], backend=backend)


@torch.no_grad()
def routing(model: WhisperMoE, audio: list[str]) -> torch.Tensor:
    """The gate's expert weights `[files, experts]` for the first 30 s of each file."""
    samples = [torch.from_numpy(load_audio(path)[: 30 * 16000]) for path in audio]
    padded = torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)
    device = next(model.parameters()).device
    features, frames = whisper_features(padded, torch.tensor([len(s) for s in samples]),
                                        model.base.config, device, model.base.dtype)
    pooled = model.pooled_embeddings(features, frames)
    return model.route(pooled, model.config.routing_mode, model.config.top_k)["weights"].cpu()
