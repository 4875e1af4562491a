"""transcribe: each file on its own, and audio over 30 s cut into windows at pauses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from whisper_moe.cli import main
from whisper_moe.stages.transcribe import WINDOW_S, transcribe_files, window_bounds

RATE = 16000


def speech_with_pauses(seconds: float, pauses_at: list[float], seed: int = 0) -> np.ndarray:
    """Noise standing in for speech, with 300 ms of silence starting at each pause."""
    samples = np.random.default_rng(seed).normal(0, 0.1, int(seconds * RATE)).astype(np.float32)
    for at in pauses_at:
        samples[int(at * RATE) : int((at + 0.3) * RATE)] = 0.0
    return samples


def test_windows_cover_the_audio_once_and_cut_in_pauses():
    samples = speech_with_pauses(70.0, [27.2, 55.6])
    bounds = window_bounds(len(samples), samples)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(samples)
    assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:]))
    assert all(0 < end - start <= WINDOW_S * RATE for start, end in bounds)
    cuts = [end / RATE for _, end in bounds[:-1]]
    assert len(cuts) == 2
    assert 27.2 <= cuts[0] <= 27.5 and 55.6 <= cuts[1] <= 55.9


def test_short_audio_is_one_window():
    assert window_bounds(RATE * 12) == [(0, RATE * 12)]


@pytest.fixture
def checkpoint(tmp_path, tiny_moe):
    from whisper_moe.model.io import save_moe

    return save_moe(tiny_moe(2), tmp_path / "ckpt")


def test_a_bad_file_is_reported_and_the_others_transcribed(tmp_path, checkpoint, tiny_params,
                                                           tiny_corpus, capsys):
    rows = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    good = str(tiny_corpus / rows[0]["audio_filepath"])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    long_audio = tmp_path / "long.wav"
    sf.write(long_audio, speech_with_pauses(45.0, [26.0]), RATE, subtype="PCM_16")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))

    code = main(["transcribe", "--params", str(tmp_path / "params.yaml"), "--checkpoint",
                 str(checkpoint), good, str(broken), str(long_audio)])
    printed = capsys.readouterr()
    assert code == 1
    lines = printed.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [good, str(long_audio)]
    assert f"{broken}\tERROR\t" in printed.err and "1 of 3 files could not be transcribed" in printed.err
    assert "Traceback" not in printed.err

    results = {r.path: r for r in transcribe_files(tiny_params, checkpoint, [str(long_audio)])}
    windows = results[str(long_audio)].windows
    assert len(windows) == 2 and 26.0 <= windows[0][1] <= 26.3 and windows[-1][1] == 45.0
    assert len(results[str(long_audio)].experts) == 2
