"""Data in users' formats: Hugging Face `datasets` folders and NeMo manifests, through
`whisper-moe data` and `train`, on small datasets made here from the tiny corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from whisper_moe.cli import main
from whisper_moe.data.manifest import read_manifest

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def corpus_rows(tiny_corpus):
    """The tiny corpus's rows per split, audio paths absolute."""
    return {split: read_manifest(tiny_corpus / f"{split}.jsonl") for split in SPLITS}


def audio_dataset(rows, text_column="text", speaker_column="speaker"):
    """A datasets.Dataset with an Audio column holding each file's bytes."""
    import datasets

    table = {
        "audio": [{"bytes": Path(row["audio_filepath"]).read_bytes(),
                   "path": Path(row["audio_filepath"]).name} for row in rows],
        text_column: [row["text"] for row in rows],
        speaker_column: [row["speaker"] for row in rows],
        "accent": [row["group"] for row in rows],
    }
    return datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())


def make_save_to_disk(rows_by_split, folder: Path) -> Path:
    """A DatasetDict with train/validation/test, as save_to_disk writes it."""
    import datasets

    names = {"train": "train", "dev": "validation", "test": "test"}
    datasets.DatasetDict({names[split]: audio_dataset(rows) for split, rows in rows_by_split.items()}
                         ).save_to_disk(str(folder))
    return folder


def make_parquet(rows_by_split, folder: Path) -> Path:
    """One unsplit parquet file with Common Voice's column names (sentence, client_id)."""
    rows = [row for split in SPLITS for row in rows_by_split[split]]
    (folder / "data").mkdir(parents=True)
    audio_dataset(rows, text_column="sentence", speaker_column="client_id").to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def make_audiofolder(rows_by_split, folder: Path) -> Path:
    """Split folders of 8 kHz stereo WAVs, each with a metadata.csv (file_name, text, ...)."""
    import pandas as pd

    for split, rows in rows_by_split.items():
        split_dir = folder / {"dev": "validation"}.get(split, split)
        split_dir.mkdir(parents=True)
        for row in rows:
            samples, rate = sf.read(row["audio_filepath"], dtype="float32")
            stereo = np.stack([samples[::2], samples[::2]], axis=1)
            sf.write(split_dir / Path(row["audio_filepath"]).name, stereo, rate // 2)
        pd.DataFrame({"file_name": [Path(row["audio_filepath"]).name for row in rows],
                      "text": [row["text"] for row in rows],
                      "speaker": [row["speaker"] for row in rows],
                      "accent": [row["group"] for row in rows]}).to_csv(split_dir / "metadata.csv", index=False)
    return folder


def make_nemo(rows_by_split, folder: Path) -> Path:
    """NeMo manifests (audio_filepath relative to the manifest, text, duration) by split."""
    folder.mkdir(parents=True)
    for split, rows in rows_by_split.items():
        lines = []
        for row in rows:
            shutil.copy(row["audio_filepath"], folder / Path(row["audio_filepath"]).name)
            lines.append(json.dumps({"audio_filepath": Path(row["audio_filepath"]).name,
                                     "text": row["text"], "duration": row["duration"]}))
        name = {"dev": "validation"}.get(split, split)
        (folder / f"{name}_manifest.json").write_text("\n".join(lines) + "\n")
    return folder


# format -> (what makes the dataset, its data flags)
FORMATS = {
    "save_to_disk": (make_save_to_disk, ["--hf-speaker-column", "speaker", "--hf-group-column", "accent"]),
    "parquet": (make_parquet, ["--hf-text-column", "sentence", "--hf-speaker-column", "client_id",
                               "--hf-group-column", "accent"]),
    "audiofolder": (make_audiofolder, ["--hf-speaker-column", "speaker", "--hf-group-column", "accent"]),
    "nemo": (make_nemo, []),
}


def run_data(tmp_path, params, name, corpus_rows, extra=()):
    """`whisper-moe data` on a freshly made dataset of one format; returns the output folder."""
    maker, flags = FORMATS[name]
    source = maker(corpus_rows, tmp_path / f"{name}-source")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / f"{name}-data"
    source_flag = "--nemo-manifest" if name == "nemo" else "--hf-dataset"
    assert main(["data", "--params", str(params_file), source_flag, str(source), "--out", str(out),
                 "-S", f"data.dir={tmp_path / f'{name}-converted'}", *flags, *extra]) == 0
    return out


def read_split_rows(folder: Path) -> dict[str, list[dict]]:
    return {split: read_manifest(folder / f"{split}.jsonl") for split in SPLITS}


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_goes_through_data_with_every_utterance_and_text(tmp_path, tiny_params, corpus_rows,
                                                                     name):
    out = run_data(tmp_path, tiny_params, name, corpus_rows)
    rows = read_split_rows(out)
    source_texts = sorted(row["text"] for split in SPLITS for row in corpus_rows[split])
    assert sorted(row["text"] for split in SPLITS for row in rows[split]) == source_texts
    if name != "parquet":  # the source's own splits are kept
        for split in SPLITS:
            assert sorted(r["text"] for r in rows[split]) == sorted(r["text"] for r in corpus_rows[split])
    if name == "nemo":  # NeMo audio stays where it is
        assert all(Path(r["audio_filepath"]).parent == tmp_path / "nemo-source" for r in rows["train"])
        return
    speakers = {split: {r["speaker"] for r in rows[split]} for split in SPLITS}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])
    assert {r["group"] for r in rows["test"]} == {"en-us", "en-gb-scotland", "en-029"}
    for row in rows["train"]:
        info = sf.info(row["audio_filepath"])
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "WAV")
        assert str(tmp_path / f"{name}-converted") in row["audio_filepath"]


def test_one_training_run_reads_every_format(tmp_path, tiny_params, corpus_rows):
    """One short training run on the training splits of all four formats together."""
    from whisper_moe.data.manifest import write_manifest

    params = {**tiny_params, "train": {**tiny_params["train"], "epochs": 1}}
    train_rows = []
    for name in FORMATS:
        rows = read_manifest(run_data(tmp_path, params, name, corpus_rows) / "train.jsonl")
        train_rows += [{**row, "id": f"{name}/{row['id']}"} for row in rows]
    write_manifest(tmp_path / "all-train.jsonl", train_rows)
    out = tmp_path / "train"
    assert main(["train", "--params", str(tmp_path / "params.yaml"), "--train-manifest",
                 str(tmp_path / "all-train.jsonl"), "--dev-manifest",
                 str(tmp_path / "nemo-data" / "dev.jsonl"), "--out", str(out)]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["optimizer_steps"] > 0
    assert metrics["train_utterances"] == len(train_rows) >= 4 * len(corpus_rows["train"])


def test_a_single_nemo_manifest_is_split_by_speaker(tmp_path, corpus_rows):
    from whisper_moe.data.formats import convert_nemo

    rows = [row for split in SPLITS for row in corpus_rows[split]]
    manifest = tmp_path / "all.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": r["audio_filepath"], "text": r["text"],
                                            "duration": r["duration"], "speaker": r["speaker"]}) + "\n"
                                for r in rows))
    paths = convert_nemo(manifest, tmp_path / "out", seed=3)
    split_rows = {split: read_manifest(paths[split]) for split in SPLITS}
    assert sum(len(r) for r in split_rows.values()) == len(rows)
    assert all(split_rows[split] for split in SPLITS)
    speakers = {split: {r["speaker"] for r in split_rows[split]} for split in SPLITS}
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]


def test_a_single_dataset_with_decoded_arrays_is_converted_and_split(tmp_path, corpus_rows):
    """A save_to_disk Dataset (no DatasetDict) whose audio is {array, sampling_rate} at 8 kHz."""
    import datasets

    from whisper_moe.data.formats import HfColumns, convert_hf_dataset

    rows = [row for split in SPLITS for row in corpus_rows[split]]
    arrays = [sf.read(r["audio_filepath"], dtype="float32")[0][::2] for r in rows]
    datasets.Dataset.from_dict({
        "audio": [{"array": a.tolist(), "sampling_rate": 8000} for a in arrays],
        "transcription": [r["text"] for r in rows], "speaker": [r["speaker"] for r in rows],
    }).save_to_disk(str(tmp_path / "single"))
    paths = convert_hf_dataset(tmp_path / "single", tmp_path / "out",
                               HfColumns(text="transcription", speaker="speaker"), seed=1)
    converted = {split: read_manifest(paths[split]) for split in SPLITS}
    assert sorted(r["text"] for split in SPLITS for r in converted[split]) == sorted(r["text"] for r in rows)
    first = converted["train"][0]
    source = arrays[int(first["id"].rsplit("-", 1)[1])]
    assert first["duration"] == pytest.approx(len(source) / 8000, abs=1e-3)
    assert sf.info(first["audio_filepath"]).samplerate == 16000


def test_a_missing_column_names_the_setting_and_the_columns(tmp_path, tiny_params, corpus_rows, caplog):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    source = make_parquet(corpus_rows, tmp_path / "parquet")
    code = main(["data", "--params", str(params_file), "--hf-dataset", str(source),
                 "--out", str(tmp_path / "out"), "-S", f"data.dir={tmp_path / 'converted'}"])
    assert code == 2
    assert "no column 'text'" in caplog.text and "'sentence'" in caplog.text
    assert "data.hf_text_column" in caplog.text
    assert not (tmp_path / "converted").exists()  # nothing half-written


def test_a_converted_folder_is_reused_only_for_the_same_dataset_and_settings(tmp_path, corpus_rows,
                                                                               tiny_params):
    from whisper_moe.stages import data as data_stage

    params = {**tiny_params, "data": {**tiny_params["data"], "source": "hf",
                                      "dir": str(tmp_path / "converted"), "hf_speaker_column": "speaker"}}
    params["data"]["hf_dataset"] = str(make_save_to_disk(corpus_rows, tmp_path / "ds"))
    folder = data_stage.source_manifests(params)
    built = (folder / "train.jsonl").stat().st_mtime_ns
    assert data_stage.source_manifests(params) == folder
    assert (folder / "train.jsonl").stat().st_mtime_ns == built  # reused
    params["data"]["hf_group_column"] = "accent"
    data_stage.source_manifests(params)
    assert {r["group"] for r in read_manifest(folder / "train.jsonl")} != {"all"}  # other settings: rebuilt


def test_an_unknown_folder_and_a_nemo_folder_without_train_say_what_to_pass(tmp_path):
    from whisper_moe.data.formats import DatasetFormatError, hf_layout, nemo_manifests

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="save_to_disk"):
        hf_layout(tmp_path / "empty")
    (tmp_path / "nemo").mkdir()
    (tmp_path / "nemo" / "dev_manifest.json").write_text("")
    with pytest.raises(DatasetFormatError, match="no training manifest.*dev_manifest.json"):
        nemo_manifests(tmp_path / "nemo")


def test_kubeflow_converts_a_fetched_dataset_inside_the_artifact(tmp_path):
    """With data.source hf (or nemo), a fetched folder is the dataset, converted into the artifact."""
    from whisper_moe.config import load_params
    from whisper_moe_kfp.runtime import point_data_stage_at

    for source, key in (("hf", "hf_dataset"), ("nemo", "nemo_manifest")):
        params = load_params(None)
        params["data"]["source"] = source
        pointed = point_data_stage_at(params, {"kind": "folder", "path": "/mnt/x"}, tmp_path / "dataset")
        assert pointed["data"][key] == str(tmp_path / "dataset" / "source")
        assert pointed["data"]["dir"] == str(tmp_path / "dataset" / "imported")


def test_audio_that_cannot_be_decoded_is_counted_by_the_validator(tmp_path, tiny_params, corpus_rows):
    import datasets

    train = audio_dataset(corpus_rows["train"]).cast_column("audio", datasets.Audio(decode=False))
    broken = train.map(lambda row, index: {"audio": {"bytes": b"not audio" if index == 0 else row["audio"]["bytes"],
                                                     "path": row["audio"]["path"]}}, with_indices=True)
    datasets.DatasetDict({"train": broken.cast_column("audio", datasets.Audio()),
                          "validation": audio_dataset(corpus_rows["dev"]),
                          "test": audio_dataset(corpus_rows["test"])}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    assert main(["data", "--params", str(tmp_path / "params.yaml"), "--hf-dataset", str(tmp_path / "ds"),
                 "--hf-speaker-column", "speaker", "--max-skip-fraction", "0.5", "--out", str(tmp_path / "out"),
                 "-S", f"data.dir={tmp_path / 'converted'}"]) == 0
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert report["skipped"] == {"corrupt_audio": 1}
    assert report["kept"] == len(corpus_rows["train"]) - 1


def test_a_nemo_segment_and_a_non_audio_column_are_refused_with_the_fix(tmp_path, corpus_rows):
    import datasets

    from whisper_moe.data.formats import (
        DatasetFormatError,
        HfColumns,
        convert_hf_dataset,
        convert_nemo,
    )

    row = corpus_rows["train"][0]
    (tmp_path / "segments.json").write_text(json.dumps(
        {"audio_filepath": row["audio_filepath"], "text": "x", "duration": 0.5, "offset": 1.0}) + "\n")
    with pytest.raises(DatasetFormatError, match="segment.*cut the segments"):
        convert_nemo(tmp_path / "segments.json", tmp_path / "nemo-out")
    datasets.Dataset.from_dict({"audio": [1, 2], "text": ["a", "b"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DatasetFormatError, match="column 'audio' holds .*data.hf_audio_column"):
        convert_hf_dataset(tmp_path / "ds", tmp_path / "hf-out", HfColumns())
    assert not (tmp_path / "hf-out").exists()
