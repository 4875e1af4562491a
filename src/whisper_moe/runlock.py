"""One run per output folder: a second run into a folder in use stops at once.

Two runs writing the same checkpoints would silently delete each other's work. The
lock is an OS file lock (`flock`) on `<folder>/.whisper-moe.lock`, so it is released
when its process dies, however it dies; the file also names the holder (pid, host,
start time, command) for the error message. A lock file left by a dead process is
taken over with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from whisper_moe.errors import WhisperMoeError

log = logging.getLogger("whisper_moe.runlock")

LOCK_NAME = ".whisper-moe.lock"


class FolderInUse(WhisperMoeError):
    """Another run holds the output folder."""


def holder_description(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (its lock file is unreadable)"
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}: {holder.get('command', '?')}")


@contextlib.contextmanager
def output_folder_lock(folder: str | os.PathLike):
    """Hold the folder's lock for the duration of the block; FolderInUse if it is taken."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WhisperMoeError(f"cannot create the output folder {folder}: {error.strerror}",
                              hint="choose a writable folder (--out / --output-dir)") from error
    lock_path = folder / LOCK_NAME
    try:
        handle = open(lock_path, "a+")
    except OSError as error:
        raise WhisperMoeError(f"cannot write in the output folder {folder}: {error.strerror}",
                              hint="choose a writable folder (--out / --output-dir)") from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(
                f"{folder} is in use by {holder_description(lock_path)}",
                hint="wait for that run to finish, stop it, or choose another output folder",
            ) from None
        handle.seek(0)
        if handle.read().strip():
            log.warning("%s: taking over the lock left by %s, which is no longer running",
                        folder, holder_description(lock_path))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
        }))
        handle.flush()
        try:
            yield folder
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
