"""validate_manifest: every kind of bad input is skipped with its reason, or stops the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from whisper_moe.data.manifest import read_manifest
from whisper_moe.data.validate import DataQualityError, validate_manifest


class WordTokenizer:
    """Stands in for a Whisper tokenizer: one token per word."""

    def encode(self, text):
        return text.split()


def tone(duration_s, sample_rate, channels=1):
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    mono = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)


def line(utt_id, audio, text="turn on the lights"):
    return {
        "id": utt_id,
        "audio_filepath": audio,
        "text": text,
        "duration": 0.0,
        "speaker": "s1",
        "group": "g",
    }


@pytest.fixture
def data_dir(tmp_path):
    """A manifest with good rows and one row of every bad kind."""
    root = tmp_path / "data"
    wavs = root / "wavs"
    wavs.mkdir(parents=True)
    sf.write(wavs / "good1.wav", tone(1.0, 16000), 16000)
    sf.write(wavs / "good2.wav", tone(0.5, 16000), 16000)
    sf.write(wavs / "rate8k.wav", tone(1.0, 8000), 8000)
    sf.write(wavs / "stereo.wav", tone(1.0, 16000, channels=2), 16000)
    sf.write(wavs / "long.wav", tone(3.0, 16000), 16000)
    sf.write(wavs / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(wavs / "empty.wav", np.zeros(0, np.float32), 16000)
    (wavs / "corrupt.wav").write_bytes(b"definitely not audio" * 20)
    full = (wavs / "good1.wav").read_bytes()
    (wavs / "truncated.wav").write_bytes(full[: len(full) // 2])
    (tmp_path / "outside.wav").write_bytes(full)
    rows = [
        line("good1", "wavs/good1.wav", "  Turn on the lights.  "),
        line("good2", "wavs/good2.wav"),
        line("rate8k", "wavs/rate8k.wav"),
        line("stereo", "wavs/stereo.wav"),
        line("long", "wavs/long.wav"),
        line("silent", "wavs/silent.wav"),
        line("empty", "wavs/empty.wav"),
        line("corrupt", "wavs/corrupt.wav"),
        line("truncated", "wavs/truncated.wav"),
        line("missing", "wavs/missing.wav"),
        line("escape", "../outside.wav"),
        line("notext", "wavs/good2.wav", "   "),
        line("wordy", "wavs/good2.wav", "word " * 20),
        line("good1", "wavs/good2.wav"),
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    text += "{this is not json\n"
    text += json.dumps({"id": "nokeys", "text": "x"}) + "\n"
    text += json.dumps({**line("badtype", "wavs/good2.wav"), "duration": "1s"}) + "\n"
    (root / "in.jsonl").write_text(text)
    return root


EXPECTED_SKIPS = {
    "too_long": 1,
    "silent_audio": 1,
    "empty_audio": 1,
    "corrupt_audio": 1,
    "truncated_audio": 1,
    "missing_file": 1,
    "path_escapes_root": 1,
    "empty_transcript": 1,
    "label_too_long": 1,
    "duplicate_id": 1,
    "malformed_json": 1,
    "missing_keys": 1,
    "bad_value": 1,
}


def run(data_dir, **overrides):
    kwargs = {
        "in_path": data_dir / "in.jsonl",
        "out_path": data_dir / "out" / "train.jsonl",
        "report_path": data_dir / "out" / "report.json",
        "max_skip_fraction": 1.0,
        "max_duration_s": 2.0,
        "tokenizer": WordTokenizer(),
        "max_label_tokens": 10,
        "root": data_dir,
        "progress": False,
    }
    kwargs.update(overrides)
    return validate_manifest(**kwargs)


def test_every_reason_is_counted(data_dir):
    report = run(data_dir)
    assert report["skipped"] == EXPECTED_SKIPS
    assert report["kept"] == 4 and report["total"] == 4 + len(EXPECTED_SKIPS)
    assert report["fixed"] == {"resampled": 1, "downmixed": 1}
    assert report["examples"]["missing_file"][0].startswith("missing:")
    assert "missing.wav" in report["examples"]["missing_file"][0]
    assert "in.jsonl:15" in report["examples"]["malformed_json"][0]
    assert json.loads((data_dir / "out" / "report.json").read_text()) == report


def test_cleaned_manifest_holds_the_good_rows(data_dir):
    run(data_dir)
    kept = read_manifest(data_dir / "out" / "train.jsonl")
    assert [r["id"] for r in kept] == ["good1", "good2", "rate8k", "stereo"]
    assert kept[0]["text"] == "Turn on the lights."
    assert [r["duration"] for r in kept] == [1.0, 0.5, 1.0, 1.0]  # measured, not copied
    assert kept[2]["audio_filepath"] == str(data_dir / "wavs" / "rate8k.wav")


def test_fixed_audio_is_written_when_asked(data_dir):
    run(data_dir, fixed_audio_dir=data_dir / "out" / "fixed", num_workers=2)
    kept = {r["id"]: r for r in read_manifest(data_dir / "out" / "train.jsonl")}
    for utt_id in ("rate8k", "stereo"):
        info = sf.info(kept[utt_id]["audio_filepath"])
        assert (info.samplerate, info.channels) == (16000, 1)
        assert "fixed" in kept[utt_id]["audio_filepath"]
    stored = (data_dir / "out" / "train.jsonl").read_text()
    assert '"fixed/rate8k.wav"' in stored  # relative to the manifest folder


def test_threshold_stops_the_run_and_names_files(data_dir):
    with pytest.raises(DataQualityError) as caught:
        run(data_dir, max_skip_fraction=0.2)
    message = str(caught.value)
    assert str(data_dir / "in.jsonl") in message
    assert "corrupt.wav" in message and "missing.wav" in message
    assert "max_skip_fraction" in message
    assert (data_dir / "out" / "report.json").exists()  # reasons stay readable
    assert not (data_dir / "out" / "train.jsonl").exists()  # nothing half-good downstream


def test_empty_manifest_is_an_error(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n")
    with pytest.raises(DataQualityError, match="no rows"):
        validate_manifest(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            tmp_path / "r.json",
            max_skip_fraction=1.0,
            progress=False,
        )


def test_nothing_usable_stops_even_at_full_tolerance(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(line("a", "missing.wav")) + "\n")
    with pytest.raises(DataQualityError, match="no row is usable"):
        validate_manifest(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            tmp_path / "r.json",
            max_skip_fraction=1.0,
            progress=False,
        )
