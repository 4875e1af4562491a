"""Decode any audio file the project reads into 16 kHz mono float32.

Every stage that touches audio goes through `load_audio`, so a file that cannot be
used fails the same way everywhere: an `AudioError` whose `reason` is a short code
that the validator counts and the reports show.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from whisper_moe.errors import WhisperMoeError

TARGET_SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4  # below this peak amplitude a file carries no usable speech

# reason code -> what it means and how to fix it (used in messages and the README)
AUDIO_REASONS = {
    "missing_file": "the file does not exist; fix the path or restore the file",
    "corrupt_audio": "the file cannot be decoded; re-export or re-download it",
    "truncated_audio": "the file is shorter than its header says; re-copy it",
    "empty_audio": "the file holds no samples; remove the entry",
    "silent_audio": "the file is digital silence; check the recording",
    "too_long": "the audio is longer than the limit; split it or raise the limit",
}

_WAV_SHORT_DATA = re.compile(r"data\s*:\s*\d+\s*\(should be \d+\)")


class AudioError(WhisperMoeError):
    """A file that cannot be used as training or evaluation audio.

    `reason` is one of AUDIO_REASONS (a stable code for counting); the message names
    the file, what is wrong and the fix.
    """

    def __init__(self, reason: str, path: str | os.PathLike, detail: str = ""):
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        hint = AUDIO_REASONS.get(reason, "")
        text = f"{self.path}: {reason}"
        if detail:
            text += f" ({detail})"
        if hint:
            text += f": {hint}"
        super().__init__(text)

    def __reduce__(self):
        """Rebuild from the original arguments (for errors crossing process boundaries)."""
        return (type(self), (self.reason, self.path, self.detail))


@dataclass
class DecodedAudio:
    """Samples plus what was changed on the way, so the validator can count fixes."""

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    fixes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)


def load_audio(
    path: str | os.PathLike,
    target_sr: int = TARGET_SAMPLE_RATE,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Return the file as float32 mono at target_sr in [-1, 1], or raise AudioError."""
    return decode_audio(path, target_sr=target_sr, max_duration_s=max_duration_s).samples


def decode_audio(
    path: str | os.PathLike,
    target_sr: int = TARGET_SAMPLE_RATE,
    max_duration_s: float | None = None,
    silence_peak: float = SILENCE_PEAK,
) -> DecodedAudio:
    """Like load_audio, but also report resampling/downmixing (the validator counts them).

    The header is checked before decoding so an over-long file is refused without
    reading it all.
    """
    info = _read_header(path)
    header_duration_s = info.frames / float(info.samplerate) if info.samplerate else 0.0
    if max_duration_s is not None and header_duration_s > max_duration_s:
        raise AudioError(
            "too_long", path, f"{header_duration_s:.1f} s > max_duration_s={max_duration_s:g}"
        )
    samples = _read_samples(path, info)
    fixes: list[str] = []
    if samples.shape[1] > 1:
        fixes.append("downmixed")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    _check_content(path, mono, silence_peak)
    if info.samplerate != target_sr:
        mono = resample_audio(mono, info.samplerate, target_sr)
        fixes.append("resampled")
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
    return DecodedAudio(mono, target_sr, int(info.samplerate), int(info.channels), fixes)


def audio_duration_s(path: str | os.PathLike) -> float:
    """Duration from the header alone (cheap: used by importers on large corpora)."""
    info = _read_header(path)
    return info.frames / float(info.samplerate) if info.samplerate else 0.0


def resample_audio(samples: np.ndarray, source_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling: exact rational ratio, no drift, deterministic."""
    if source_sr == target_sr:
        return samples.astype(np.float32, copy=False)
    divisor = math.gcd(int(source_sr), int(target_sr))
    up, down = int(target_sr) // divisor, int(source_sr) // divisor
    return resample_poly(samples, up, down).astype(np.float32)


def _read_header(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Open the header; missing, zero-byte and undecodable files get their own reason."""
    if not os.path.isfile(path):
        raise AudioError("missing_file", path)
    if os.path.getsize(path) == 0:
        raise AudioError("empty_audio", path, "0 bytes")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError("corrupt_audio", path, _short(error)) from error
    if _WAV_SHORT_DATA.search(info.extra_info or ""):
        raise AudioError("truncated_audio", path, "WAV data chunk shorter than its header")
    return info


def _read_samples(path: str | os.PathLike, info: sf._SoundFileInfo) -> np.ndarray:
    """Decode all frames as [frames, channels]; a short read means a cut-off file."""
    try:
        samples, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError("corrupt_audio", path, _short(error)) from error
    if info.frames > 0 and samples.shape[0] < info.frames:
        raise AudioError(
            "truncated_audio", path, f"read {samples.shape[0]} of {info.frames} frames"
        )
    return samples


def _check_content(path: str | os.PathLike, mono: np.ndarray, silence_peak: float) -> None:
    """Refuse audio with no samples, non-finite values or nothing above silence."""
    if mono.size == 0:
        raise AudioError("empty_audio", path, "0 frames")
    if not np.all(np.isfinite(mono)):
        raise AudioError("corrupt_audio", path, "NaN or infinite samples")
    peak = float(np.max(np.abs(mono)))
    if peak < silence_peak:
        raise AudioError("silent_audio", path, f"peak {peak:.2e} < {silence_peak:g}")


def _short(error: Exception) -> str:
    """First line of a libsndfile error, without the repeated file name."""
    lines = str(error).splitlines()
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"^Error opening '.*?': ", "", text)[:200]
