"""One run per output folder: a second run stops at once naming the holder; stale locks are taken over."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from whisper_moe.cli import main
from whisper_moe.runlock import LOCK_NAME, FolderInUse, output_folder_lock

HOLD = """
import sys, time
from whisper_moe.runlock import output_folder_lock
with output_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_folder(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_second_run_into_a_folder_in_use_stops_naming_the_holder(held_folder, caplog, capsys):
    folder, holder = held_folder
    (folder / "earlier.txt").write_text("kept")
    code = main(["evaluate", "--params", "/nonexistent.yaml", "--manifest", "m.jsonl",
                 "--out", str(folder)])
    assert code == 2
    message = caplog.text
    assert f"process {holder.pid}" in message and "in use" in message
    assert "choose another output folder" in message
    assert "Traceback" not in capsys.readouterr().err
    assert (folder / "earlier.txt").read_text() == "kept"


def test_the_lock_is_released_when_its_process_dies(held_folder):
    folder, holder = held_folder
    with pytest.raises(FolderInUse):
        with output_folder_lock(folder):
            pass
    holder.kill()
    holder.wait()
    with output_folder_lock(folder):
        pass


def test_a_stale_lock_file_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then",
                                                "command": "whisper-moe train"}))
    with output_folder_lock(folder):
        holder = json.loads((folder / LOCK_NAME).read_text())
        assert holder["pid"] != 999999
    assert "taking over the lock left by process 999999" in caplog.text
    assert (folder / LOCK_NAME).read_text() == ""


def test_a_read_only_parent_is_a_one_line_error(tmp_path, caplog):
    import os

    if os.geteuid() == 0:
        target = "/proc/whisper-moe-test"  # not creatable even by root
    else:
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o500)
        target = str(parent / "run")
    code = main(["evaluate", "--params", "/nonexistent.yaml", "--manifest", "m.jsonl",
                 "--out", target])
    assert code == 2
    assert "cannot create the output folder" in caplog.text and "writable folder" in caplog.text
