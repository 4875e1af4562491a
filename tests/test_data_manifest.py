"""Manifests: path resolution, strict reading, atomic writing, sampling and splitting."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from whisper_moe.data.manifest import (
    ManifestError,
    read_manifest,
    speaker_disjoint_split,
    stratified_sample,
    write_manifest,
)


def row(index: int, speaker: str = "s0", group: str = "g0", audio: str = "a.wav") -> dict:
    return {
        "id": f"u{index}",
        "audio_filepath": audio,
        "text": "hello",
        "duration": 1.0,
        "speaker": speaker,
        "group": group,
    }


def corpus(speakers_per_group: dict[str, int], utterances: int = 3) -> list[dict]:
    rows = []
    for group, count in speakers_per_group.items():
        for s in range(count):
            for _ in range(utterances):
                rows.append(row(len(rows), speaker=f"{group}-s{s}", group=group))
    return rows


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "m.jsonl").write_text(json.dumps(row(0, audio="wavs/a.wav")) + "\n\n")
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    rows = read_manifest(data / "m.jsonl")
    assert rows[0]["audio_filepath"] == str(data / "wavs" / "a.wav")


def test_write_keeps_paths_under_the_folder_relative(tmp_path):
    inside = str(tmp_path / "wavs" / "a.wav")
    outside = "/elsewhere/b.wav"
    path = write_manifest(tmp_path / "m.jsonl", [row(0, audio=inside), row(1, audio=outside)])
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    assert stored[0]["audio_filepath"] == "wavs/a.wav"
    assert stored[1]["audio_filepath"] == outside
    assert [r["audio_filepath"] for r in read_manifest(path)] == [inside, outside]


def test_write_is_atomic(tmp_path):
    path = write_manifest(tmp_path / "m.jsonl", [row(0)])
    before = path.read_text()

    def broken_rows():
        yield row(1)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_manifest(path, broken_rows())
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["m.jsonl"]  # no temp file left behind


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        (json.dumps({"id": "x", "text": "t"}), "missing_keys"),
        (json.dumps({**row(0), "duration": "long"}), "bad_value"),
        (json.dumps({**row(0), "text": None}), "bad_value"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row(0)) + "\n" + line + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert caught.value.reason == reason
    assert caught.value.line_number == 2
    assert f"{path}:2" in str(caught.value)


def test_paths_escaping_root_are_rejected(tmp_path):
    root = tmp_path / "root"
    (root / "wavs").mkdir(parents=True)
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "wavs" / "link.wav")
    path = root / "m.jsonl"
    for audio in ("../secret.wav", str(outside), "wavs/link.wav"):
        path.write_text(json.dumps(row(0, audio=audio)) + "\n")
        with pytest.raises(ManifestError) as caught:
            read_manifest(path, root=root)
        assert caught.value.reason == "path_escapes_root"
    path.write_text(json.dumps(row(0, audio="wavs/ok.wav")) + "\n")
    assert read_manifest(path, root=root)[0]["audio_filepath"] == str(root / "wavs" / "ok.wav")


def test_stratified_sample_keeps_every_group_and_is_deterministic():
    rows = corpus({"big": 10, "small": 1}, utterances=10)  # 100 + 10 rows
    sample = stratified_sample(rows, 5, seed=3)
    counts = Counter(r["group"] for r in sample)
    assert counts == {"big": 5, "small": 1}
    assert sample == stratified_sample(rows, 5, seed=3)
    assert sample != stratified_sample(rows, 5, seed=4)
    assert [r["id"] for r in sample] == sorted((r["id"] for r in sample), key=lambda i: int(i[1:]))
    assert stratified_sample(rows, 0, seed=3) == []
    assert stratified_sample(rows, 100, seed=3) == rows
    with pytest.raises(ValueError):
        stratified_sample(rows, 101, seed=3)


def test_speaker_disjoint_split_is_stratified():
    rows = corpus({"a": 3, "b": 7, "c": 20, "d": 2, "e": 1})
    splits = speaker_disjoint_split(rows, seed=0)
    speakers = {name: {r["speaker"] for r in part} for name, part in splits.items()}
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    assert sum(len(part) for part in splits.values()) == len(rows)
    for name in ("train", "dev", "test"):
        groups = {r["group"] for r in splits[name]}
        assert {"a", "b", "c"} <= groups, name  # >= 3 speakers: present everywhere
    per_group_c = {
        name: len({r["speaker"] for r in splits[name] if r["group"] == "c"}) for name in splits
    }
    assert per_group_c == {"train": 14, "dev": 3, "test": 3}
    groups_of = {name: Counter(r["group"] for r in part) for name, part in splits.items()}
    assert groups_of["train"]["d"] and groups_of["test"]["d"] and not groups_of["dev"]["d"]
    assert groups_of["train"]["e"] == 3
    assert splits == speaker_disjoint_split(rows, seed=0)
    assert splits != speaker_disjoint_split(rows, seed=1)


def test_split_without_test_share_carves_only_dev():
    rows = corpus({"a": 10})
    splits = speaker_disjoint_split(rows, fractions=(0.9, 0.1, 0.0), seed=0)
    assert splits["test"] == []
    assert len({r["speaker"] for r in splits["dev"]}) == 1
    with pytest.raises(ValueError):
        speaker_disjoint_split(rows, fractions=(1.0, -0.5, 0.5), seed=0)


def test_a_nemo_manifest_is_read_as_it_is(tmp_path, tiny_corpus, caplog):
    """NeMo's keys only (and a line without duration): defaults fill the rest, with a warning."""
    from whisper_moe.data.validate import validate_manifest

    rows = [json.loads(line) for line in (tiny_corpus / "train.jsonl").read_text().splitlines()]
    nemo = [{"audio_filepath": str(tiny_corpus / row["audio_filepath"]), "text": row["text"],
             "duration": row["duration"]} for row in rows[:3]]
    del nemo[2]["duration"]
    path = tmp_path / "nemo.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in nemo))
    report = validate_manifest(path, tmp_path / "out" / "train.jsonl",
                               tmp_path / "out" / "report.json", max_skip_fraction=0.0,
                               progress=False)
    assert report["kept"] == 3
    kept = read_manifest(tmp_path / "out" / "train.jsonl")
    assert {row["group"] for row in kept} == {"all"}
    assert [row["speaker"] for row in kept] == [row["id"] for row in kept]
    assert kept[2]["duration"] > 0
    assert "each utterance counts as its own speaker" in caplog.text


def test_a_missing_key_is_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio_filepath": "a.wav"}) + "\n")
    with pytest.raises(ManifestError, match=r"missing_keys: missing 'text'"):
        read_manifest(path)


def test_too_few_speakers_for_a_dev_split_names_the_cause():
    from whisper_moe.data.manifest import SplitError

    rows = [{"id": f"{g}{s}{u}", "speaker": f"{g}{s}", "group": g}
            for g in "ab" for s in range(2) for u in range(2)]
    with pytest.raises(SplitError, match=r"dev split would be empty.*at least 3 speakers.*"
                                         r"\{'a': 2, 'b': 2\}.*speakers_per_group"):
        speaker_disjoint_split(rows, seed=0)
