"""Transcribe audio files with a trained checkpoint, reporting the expert each one used."""

from __future__ import annotations

from pathlib import Path

import torch

from whisper_moe.config import check_params
from whisper_moe.data.audio import load_audio
from whisper_moe.data.features import whisper_features
from whisper_moe.model.base import decoder_prefix_ids
from whisper_moe.model.decode import greedy_decode, suppressed_token_ids
from whisper_moe.model.io import load_moe
from whisper_moe.stages.common import special_ids
from whisper_moe.training.runtime import autocast, mixed_precision, resolve_device


@torch.no_grad()
def transcribe_files(params: dict, checkpoint_dir, paths: list[str], batch_size: int = 8):
    """Yield (path, text, top expert) for each audio file, in the given order."""
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
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        audio = [load_audio(Path(p), max_duration_s=float(params["data"]["max_duration_s"]))
                 for p in chunk]
        padded = torch.zeros(len(audio), max(len(a) for a in audio))
        for row, samples in enumerate(audio):
            padded[row, : len(samples)] = torch.from_numpy(samples)
        features, frames = whisper_features(padded, torch.tensor([len(a) for a in audio]),
                                            whisper.config, device, whisper.dtype)
        with autocast(device, amp_dtype):
            pooled = model.pooled_embeddings(features, frames)
            routed = model.route(pooled, model.config.routing_mode, model.config.top_k)
            with model.routed(routed["weights"]):
                hidden = whisper.model.encoder(features).last_hidden_state
                tokens = greedy_decode(whisper, hidden, prefix, eot,
                                       int(params["evaluate"]["max_new_tokens"]), suppress, begin)
        for path, ids, weights in zip(chunk, tokens, routed["weights"]):
            yield path, tokenizer.decode(ids, skip_special_tokens=True).strip(), int(weights.argmax())
