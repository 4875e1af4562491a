"""Transcribe audio files with a trained checkpoint, reporting the expert each one used.

Each file stands on its own: one that cannot be read is reported and the others are
transcribed. Audio longer than Whisper's 30 s window is cut into consecutive windows
at the quietest moment near each window's end (a pause between words), so no speech
is dropped or transcribed twice, and the windows' texts are joined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whisper_moe.config import check_params
from whisper_moe.data.audio import TARGET_SAMPLE_RATE, load_audio
from whisper_moe.data.features import whisper_features
from whisper_moe.errors import WhisperMoeError
from whisper_moe.model.base import decoder_prefix_ids
from whisper_moe.model.decode import greedy_decode, suppressed_token_ids
from whisper_moe.model.io import load_moe
from whisper_moe.stages.common import special_ids
from whisper_moe.training.runtime import autocast, mixed_precision, resolve_device

WINDOW_S = 30.0  # Whisper's input window
CUT_SEARCH_S = 5.0  # a window ends at the quietest 20 ms in its last 5 s
CUT_FRAME_S = 0.02


@dataclass
class Transcript:
    """One file's result: its text and the top expert of each window, or why it failed."""

    path: str
    text: str = ""
    experts: list[int] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)
    error: str | None = None


def window_bounds(num_samples: int, samples: np.ndarray | None = None,
                  sample_rate: int = TARGET_SAMPLE_RATE, window_s: float = WINDOW_S,
                  search_s: float = CUT_SEARCH_S) -> list[tuple[int, int]]:
    """Consecutive [start, end) sample spans of at most window_s that cover the audio.

    Each cut falls on the lowest-energy 20 ms frame of the last search_s seconds of its
    window, so words are not split between windows; spans never overlap or leave gaps.
    """
    window = int(window_s * sample_rate)
    search = min(int(search_s * sample_rate), window - 1)
    frame = max(1, int(CUT_FRAME_S * sample_rate))
    bounds, start = [], 0
    while num_samples - start > window:
        low = start + window - search
        cut = start + window
        if samples is not None:
            region = samples[low : start + window]
            frames = len(region) // frame
            energy = np.square(region[: frames * frame].reshape(frames, frame)).mean(axis=1)
            cut = low + int(np.argmin(energy)) * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, num_samples))
    return bounds


def read_windows(path: str) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    samples = load_audio(Path(path))
    bounds = window_bounds(len(samples), samples)
    times = [(start / TARGET_SAMPLE_RATE, end / TARGET_SAMPLE_RATE) for start, end in bounds]
    return [samples[start:end] for start, end in bounds], times


def torch_decoder(params: dict, checkpoint_dir, routing: str | None = None):
    """decode(windows) -> [(text, top expert)] with our PyTorch model and greedy decoder.

    routing "top1" sends each window to its gate's top expert alone at full weight (what
    the CT2 export runs); None uses the checkpoint's own routing (top-1 weighted by its
    probability, top-k renormalised, or soft).
    """
    params = check_params(params)
    device = resolve_device(params["runtime"]["device"])
    amp_dtype, _ = mixed_precision(device, params["runtime"]["precision"])
    model, tokenizer = load_moe(checkpoint_dir, device, dtype=params["model"]["dtype"])
    model.eval()
    whisper = model.base
    prefix = decoder_prefix_ids(tokenizer, whisper.config)
    eot = special_ids(tokenizer)["eot"]
    suppress = suppressed_token_ids(tokenizer, whisper.generation_config, eot)
    begin = list(getattr(whisper.generation_config, "begin_suppress_tokens", None) or [])
    max_new_tokens = int(params["evaluate"]["max_new_tokens"])

    @torch.no_grad()
    def decode(windows: list[np.ndarray]) -> list[tuple[str, int]]:
        padded = torch.zeros(len(windows), max(len(w) for w in windows))
        for row, samples in enumerate(windows):
            padded[row, : len(samples)] = torch.from_numpy(samples)
        features, frames = whisper_features(padded, torch.tensor([len(w) for w in windows]),
                                            whisper.config, device, whisper.dtype)
        with autocast(device, amp_dtype):
            pooled = model.pooled_embeddings(features, frames)
            if routing == "top1":  # the top expert at full weight: what an export-ct2 model is
                routed = model.route(pooled, "topk", 1)
                routed["weights"] = torch.nn.functional.one_hot(
                    routed["weights"].argmax(-1), model.config.num_experts).to(routed["weights"].dtype)
            else:
                routed = model.route(pooled, model.config.routing_mode, model.config.top_k)
            with model.routed(routed["weights"]):
                hidden = whisper.model.encoder(features).last_hidden_state
                tokens = greedy_decode(whisper, hidden, prefix, eot, max_new_tokens, suppress, begin)
        return [(tokenizer.decode(ids, skip_special_tokens=True).strip(), int(weights.argmax()))
                for ids, weights in zip(tokens, routed["weights"])]

    return decode


def ct2_decoder(params: dict, export_dir):
    """decode(windows) -> [(text, expert)] with a `whisper-moe export-ct2` folder."""
    from whisper_moe.model.ct2_routed import RoutedCT2Whisper

    device = str(resolve_device(check_params(params)["runtime"]["device"]).type)
    routed = RoutedCT2Whisper(export_dir, device=device)
    max_new_tokens = int(params["evaluate"]["max_new_tokens"])
    return lambda windows: routed.transcribe(windows, max_new_tokens)


def transcribe_files(params: dict, checkpoint_dir, paths: list[str], batch_size: int = 8,
                     backend: str = "torch", routing: str | None = None):
    """Yield a Transcript for each audio file, in the given order.

    backend "torch" reads a checkpoint folder, "ct2" an `export-ct2` folder.
    """
    if backend == "ct2":
        decode = ct2_decoder(params, checkpoint_dir)
    elif backend == "torch":
        decode = torch_decoder(params, checkpoint_dir, routing)
    else:
        raise WhisperMoeError(f"transcription backend {backend!r}", hint="use torch or ct2")

    for path in paths:
        transcript = Transcript(str(path))
        try:
            windows, transcript.windows = read_windows(path)
        except (WhisperMoeError, OSError, RuntimeError) as error:
            transcript.error = str(error)
            yield transcript
            continue
        results = []
        for start in range(0, len(windows), batch_size):
            results.extend(decode(windows[start : start + batch_size]))
        transcript.text = " ".join(text for text, _ in results if text)
        transcript.experts = [expert for _, expert in results]
        yield transcript
