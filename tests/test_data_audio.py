"""load_audio: the one decoder every stage uses, and the reason codes of its failures."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf

from whisper_moe.data.audio import AudioError, audio_duration_s, decode_audio, load_audio


def tone(duration_s: float, sample_rate: int, channels: int = 1, amplitude: float = 0.5):
    """A 220 Hz sine, [frames] or [frames, channels]."""
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    mono = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def test_mono_16k_is_returned_unchanged(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, tone(1.0, 16000), 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape == (16000,)
    np.testing.assert_allclose(audio, tone(1.0, 16000), atol=1e-6)
    assert decode_audio(path).fixes == []


def test_stereo_44k_is_downmixed_and_resampled(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(0.5, 44100, channels=2), 44100)
    decoded = decode_audio(path)
    assert decoded.fixes == ["downmixed", "resampled"]
    assert decoded.samples.shape == (8000,)
    assert decoded.source_sample_rate == 44100 and decoded.source_channels == 2
    assert np.max(np.abs(decoded.samples)) <= 1.0
    assert abs(np.max(np.abs(decoded.samples)) - 0.5) < 0.02


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.reason == "missing_file"
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunkjunk" * 4, "corrupt_audio"),
        (b"this is not audio at all" * 10, "corrupt_audio"),
        (b"", "empty_audio"),
    ],
)
def test_undecodable_bytes(tmp_path, payload, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(payload)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.reason == reason
    assert "bad.wav" in str(caught.value)


def test_truncated_wav(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(1.0, 16000), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AudioError) as caught:
        load_audio(cut)
    assert caught.value.reason == "truncated_audio"


def test_zero_frames_is_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.reason == "empty_audio"


def test_silence_is_refused(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.reason == "silent_audio"


def test_non_finite_samples_are_corrupt(tmp_path):
    samples = tone(0.1, 16000)
    samples[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    assert caught.value.reason == "corrupt_audio"


def test_too_long_is_refused_from_the_header(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(2.0, 8000), 8000)
    assert audio_duration_s(path) == pytest.approx(2.0)
    with pytest.raises(AudioError) as caught:
        load_audio(path, max_duration_s=1.5)
    assert caught.value.reason == "too_long"
    assert load_audio(path, max_duration_s=2.5).shape == (32000,)


def test_audio_error_survives_pickling(tmp_path):
    error = AudioError("silent_audio", tmp_path / "x.wav", "peak 0")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.path, str(copy)) == (error.reason, error.path, str(error))
