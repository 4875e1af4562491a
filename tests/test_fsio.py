"""Safe writes: a failed or killed write leaves the old file or folder whole and no stray temporaries."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_moe import artifacts, fsio


def test_a_failed_file_write_keeps_the_old_content(tmp_path):
    path = fsio.write_text_atomic(tmp_path / "report.json", "old\n")
    with pytest.raises(RuntimeError), fsio.atomic_file(path, "w") as stream:
        stream.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_json_keys_keep_their_order_unless_sorting_is_asked(tmp_path):
    fsio.write_json_atomic(tmp_path / "a" / "given.json", {"b": 1, "a": 2})
    fsio.write_json_atomic(tmp_path / "a" / "sorted.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "a" / "given.json").read_text() == '{\n  "b": 1,\n  "a": 2\n}\n'
    assert (tmp_path / "a" / "sorted.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_a_folder_is_swapped_in_whole_and_replaces_the_old_one(tmp_path):
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with fsio.atomic_folder(final) as building:
        assert not (building / "old.txt").exists()
        (building / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_failed_folder_write_keeps_the_old_folder_and_no_temporary(tmp_path):
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), fsio.atomic_folder(final) as building:
        (building / "new.txt").write_text("new")
        raise RuntimeError("crash mid-write")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_without_overwrite_a_folder_that_appeared_meanwhile_is_kept(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(FileExistsError, match="was created while"), \
            fsio.atomic_folder(final, overwrite=False) as building:
        (building / "weights").write_text("new")
        final.mkdir()
        (final / "weights").write_text("someone else's")
    assert (final / "weights").read_text() == "someone else's"


def test_leftovers_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    for name in (f"{fsio.TEMP_PREFIX}step-1-99", f"{fsio.ASIDE_PREFIX}step-0-99", "step-00000002"):
        (tmp_path / name).mkdir()
    fsio.remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]


def test_gate_confusion_reads_only_the_gate_metrics(tmp_path):
    fsio.write_json_atomic(tmp_path / "other.json", {"confusion_matrix": [[1]], "categories": ["x"]})
    assert artifacts.gate_confusion(tmp_path) is None
    fsio.write_json_atomic(tmp_path / artifacts.GATE_METRICS,
                           {"confusion_matrix": [[3, 1], [0, 4]], "categories": ["expert 0", "expert 1"]})
    assert artifacts.gate_confusion(tmp_path) == (["expert 0", "expert 1"], [[3.0, 1.0], [0.0, 4.0]])


def test_saved_embeddings_load_back_with_their_index(tmp_path):
    rows = [{"id": "u1", "group": "g", "speaker": "s", "audio_filepath": "/a.wav", "text": "dropped"},
            {"id": "u2", "group": "h", "speaker": "t", "audio_filepath": "/b.wav"}]
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    artifacts.save_embeddings(tmp_path, array, rows)
    embeddings, index = artifacts.load_embeddings(tmp_path)
    assert np.array_equal(embeddings, array)
    assert index == [{key: row[key] for key in artifacts.EMBEDDING_INDEX_KEYS} for row in rows]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mode):
    import os

    previous = os.umask(umask)
    try:
        path = fsio.write_json_atomic(tmp_path / "report.json", {"wer": 0.1})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_export_peft_replaces_the_whole_folder(tmp_path, tiny_moe):
    from whisper_moe.model.export import write_peft_adapters

    write_peft_adapters(tiny_moe(3, rank=2, gate_hidden=8), tmp_path / "peft")
    write_peft_adapters(tiny_moe(2, rank=2, gate_hidden=8), tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["expert_0", "expert_1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
