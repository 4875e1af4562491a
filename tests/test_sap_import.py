"""SAP import on a tiny fake release: splits, cleaning, and counted skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from whisper_moe.data.manifest import read_manifest
from whisper_moe.data.sap import import_sap


def write_wav(path, duration_s=0.5, sample_rate=16000):
    t = np.arange(int(duration_s * sample_rate)) / sample_rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sample_rate)


def add_speaker(split_dir, speaker, etiology, files=2, extra_entries=(), drop=()):
    folder = split_dir / speaker
    folder.mkdir(parents=True)
    entries = []
    for index in range(files):
        name = f"{speaker}_{index:03d}.wav"
        write_wav(folder / name, duration_s=0.5 + 0.25 * index)
        entries.append(
            {
                "Filename": name,
                "Prompt": {
                    "Prompt Text": "What is your favorite food?",
                    "Transcript": f"[question prompt] I like (disfluency) pizza number {index}.",
                    "Category Description": "Spontaneous Speech Prompts",
                    "Sub Category Description": "Questions",
                },
                "Ratings": [],
            }
        )
    metadata = {"Contributor ID": speaker, "Etiology": etiology, "Files": entries}
    metadata["Files"] += list(extra_entries)
    for key in drop:
        metadata.pop(key)
    (folder / f"{speaker}.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture
def sap_root(tmp_path):
    root = tmp_path / "SAP"
    train, dev = root / "Train", root / "Dev"
    for i in range(4):
        add_speaker(train, f"pd{i}", "Parkinson's Disease")
    for i in range(3):
        add_speaker(train, f"als{i}", "ALS")
    add_speaker(dev, "pd_dev", "Parkinson's Disease")
    add_speaker(dev, "als_dev", "ALS")
    # bad input, each kind once
    broken = add_speaker(
        train,
        "cp0",
        "Cerebral Palsy",
        files=1,
        extra_entries=[
            {"Filename": "cp0_missing.wav", "Prompt": {"Transcript": "hello"}},
            {"Filename": "cp0_corrupt.wav", "Prompt": {"Transcript": "hello"}},
            {"Filename": "cp0_no_text.wav", "Prompt": {"Prompt Text": "hello"}},
            "not an object",
        ],
    )
    (broken / "cp0_corrupt.wav").write_bytes(b"garbage, not a wav file" * 8)
    add_speaker(train, "no_etiology", "x", drop=("Etiology",))
    (train / "no_json").mkdir()
    write_wav(train / "no_json" / "a.wav")
    (train / "bad_json").mkdir()
    (train / "bad_json" / "bad_json.json").write_text("{oops")
    return root


def test_import_sap_splits_and_fields(sap_root, tmp_path):
    paths = import_sap(sap_root, tmp_path / "out", dev_fraction=0.25, seed=0, progress=False)
    splits = {name: read_manifest(paths[name]) for name in ("train", "dev", "test")}
    speakers = {name: {r["speaker"] for r in rows} for name, rows in splits.items()}
    assert speakers["test"] == {"pd_dev", "als_dev"}  # SAP Dev is the benchmark
    assert not speakers["train"] & speakers["dev"]
    assert not (speakers["train"] | speakers["dev"]) & speakers["test"]
    assert {r["group"] for r in splits["dev"]} == {"Parkinson's Disease", "ALS"}
    assert len(speakers["dev"]) == 2
    expected_train_pool = {f"pd{i}" for i in range(4)} | {f"als{i}" for i in range(3)} | {"cp0"}
    assert speakers["train"] | speakers["dev"] == expected_train_pool
    first = next(r for r in splits["test"] if r["id"] == "pd_dev_pd_dev_001")
    assert first["text"] == "I like pizza number 1."
    assert first["raw_text"].startswith("[question prompt]")
    assert first["text_with_disfluencies"] == "I like pizza number 1."  # "(disfluency)" is a mark
    assert first["duration"] == pytest.approx(0.75)
    assert first["category"] == "Spontaneous Speech Prompts"
    assert first["audio_filepath"] == str(sap_root / "Dev" / "pd_dev" / "pd_dev_001.wav")


def test_import_sap_counts_every_skip(sap_root, tmp_path):
    paths = import_sap(sap_root, tmp_path / "out", dev_fraction=0.25, seed=0, progress=False)
    report = json.loads(paths["report"].read_text())
    assert report["skipped"] == {
        "missing_speaker_json": 1,
        "malformed_speaker_json": 1,
        "missing_speaker_fields": 1,
        "missing_file": 1,
        "corrupt_audio": 1,
        "missing_file_fields": 2,
    }
    assert any("cp0_missing.wav" in example for example in report["examples"]["missing_file"])
    assert report["kept"] == 2 * 9 + 1
    assert report["test_is_sap_dev"] is True


def test_import_sap_is_deterministic_and_train_only_works(sap_root, tmp_path):
    a = import_sap(sap_root, tmp_path / "a", dev_fraction=0.25, seed=3, progress=False)
    b = import_sap(sap_root, tmp_path / "b", dev_fraction=0.25, seed=3, progress=False)
    for name in ("train", "dev", "test"):
        assert a[name].read_text() == b[name].read_text()
    only = import_sap(
        sap_root, tmp_path / "c", splits=("Train",), dev_fraction=0.25, progress=False
    )
    test_speakers = {r["speaker"] for r in read_manifest(only["test"])}
    assert test_speakers and not test_speakers & {"pd_dev", "als_dev"}


def test_missing_split_folder_names_it(tmp_path):
    (tmp_path / "Train").mkdir()
    with pytest.raises(FileNotFoundError, match="Dev"):
        import_sap(tmp_path, tmp_path / "out", progress=False)
