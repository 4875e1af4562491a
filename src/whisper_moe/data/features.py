"""Whisper log-mel features computed in batches on the training device.

The seed computed features on the CPU in the collate function every epoch; here the
collate only pads raw audio and this module turns a batch into log-mel on the GPU.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


@functools.lru_cache(maxsize=8)
def mel_filter_bank(num_mel_bins: int) -> np.ndarray:
    """Slaney-style mel filters `[n_fft // 2 + 1, num_mel_bins]`, as Whisper was trained with."""
    from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

    return hf_mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    ).astype(np.float32)


def log_mel_batch(
    audio: torch.Tensor, num_mel_bins: int = 80, total_frames: int = 3000
) -> torch.Tensor:
    """`[B, samples]` zero-padded audio -> `[B, num_mel_bins, total_frames]` log-mel.

    Audio is padded or cut to `total_frames * HOP_LENGTH` samples (30 s for Whisper),
    then: power STFT, mel, log10, clamp to 8 below each utterance's max, scale to ~[-1, 1].
    """
    num_samples = total_frames * HOP_LENGTH
    audio = audio.float()
    if audio.shape[-1] < num_samples:
        audio = torch.nn.functional.pad(audio, (0, num_samples - audio.shape[-1]))
    audio = audio[..., :num_samples]
    window = torch.hann_window(N_FFT, device=audio.device)
    spectrum = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = spectrum[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filter_bank(num_mel_bins)).to(audio.device)
    mel = filters.T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0


def whisper_features(
    audio: torch.Tensor, num_samples: torch.Tensor, config, device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel `[B, mels, frames]` in the model's dtype, valid frame counts) for a
    Whisper config: every stage turns padded audio into model input this one way."""
    total_frames = 2 * config.max_source_positions
    features = log_mel_batch(audio.to(device, non_blocking=True), config.num_mel_bins, total_frames)
    frames = num_valid_frames(num_samples, total_frames).to(device)
    return features.to(dtype), frames


def num_valid_frames(num_samples: torch.Tensor, total_frames: int = 3000) -> torch.Tensor:
    """Mel frames that hold real audio (the rest of the 30 s window is padding)."""
    return torch.clamp((num_samples + HOP_LENGTH - 1) // HOP_LENGTH, 1, total_frames)
