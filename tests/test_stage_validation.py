"""Every stage that reads a manifest validates it like the data stage does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from whisper_moe.cli import main
from whisper_moe.data.validate import is_validated, validate_manifest
from whisper_moe.stages.common import checked_rows


def corrupted_copy(tiny_corpus, folder, bad_share: float) -> Path:
    """train.jsonl with empty transcripts, duplicate ids and a 60 s clip mixed in."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio_filepath"] = str(tiny_corpus / row["audio_filepath"])
    sf.write(folder / "long.wav", np.full(16000 * 60, 0.1, dtype=np.float32), 16000)
    bad = []
    count = max(1, round(bad_share * len(rows) / (1 - bad_share)))
    for index in range(count):
        kind = index % 3
        if kind == 0:
            bad.append({**rows[index % len(rows)], "id": f"empty{index}", "text": " "})
        elif kind == 1:
            bad.append(dict(rows[index % len(rows)]))  # duplicate id
        else:
            bad.append({**rows[0], "id": f"long{index}", "audio_filepath": str(folder / "long.wav")})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows + bad))
    return path


def test_a_manifest_from_the_data_stage_is_not_validated_twice(tmp_path, tiny_corpus, tiny_params):
    report = validate_manifest(tiny_corpus / "dev.jsonl", tmp_path / "dev.jsonl",
                               tmp_path / "dev_report.json", max_skip_fraction=0.0, progress=False)
    assert is_validated(tmp_path / "dev.jsonl")
    rows, again = checked_rows(tiny_params, tmp_path / "dev.jsonl")
    assert again is None and len(rows) == report["kept"]
    with open(tmp_path / "dev.jsonl", "a") as handle:
        handle.write(json.dumps({"audio_filepath": "x.wav", "text": "edited by hand"}) + "\n")
    assert not is_validated(tmp_path / "dev.jsonl")


def test_train_on_an_unvalidated_manifest_skips_bad_rows(tmp_path, tiny_corpus, tiny_params):
    manifest = corrupted_copy(tiny_corpus, tmp_path / "data", bad_share=0.04)
    params = {**tiny_params, "data": {**tiny_params["data"], "max_skip_fraction": 0.2}}
    rows, report = checked_rows(params, manifest)
    assert report["skipped"] == {"empty_transcript": 1}
    assert all(row["text"].strip() for row in rows)


def test_train_stops_when_too_much_of_its_manifest_is_bad(tmp_path, tiny_corpus, tiny_params, caplog,
                                                          capsys):
    manifest = corrupted_copy(tiny_corpus, tmp_path / "data", bad_share=0.4)
    shutil.copy(tiny_corpus / "dev.jsonl", tmp_path / "dev.jsonl")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    code = main(["train", "--params", str(params), "--train-manifest", str(manifest),
                 "--dev-manifest", str(tiny_corpus / "dev.jsonl"), "--out", str(tmp_path / "out")])
    assert code == 2
    message = caplog.text
    assert "DataQualityError" in message and "unusable" in message
    assert "empty_transcript" in message and "duplicate_id" in message and "too_long" in message
    assert "max_skip_fraction" in message and "whisper-moe-validation" in message
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_the_stage_report_carries_its_validation(tmp_path, tiny_corpus, tiny_params):
    manifest = corrupted_copy(tiny_corpus, tmp_path / "data", bad_share=0.1)
    params = {**tiny_params, "data": {**tiny_params["data"], "max_skip_fraction": 0.2}}
    params["train"] = {**tiny_params["train"], "epochs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["train", "--params", str(tmp_path / "params.yaml"), "--train-manifest", str(manifest),
                 "--dev-manifest", str(tiny_corpus / "dev.jsonl"), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "train_metrics.json").read_text())
    assert metrics["input_validation"]["train"]["skipped"] == {"empty_transcript": 1}
    assert metrics["input_validation"]["dev"]["kept"] == 6
