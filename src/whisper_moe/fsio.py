"""Safe file writes: a reader, or a run killed at any moment, sees the old version or the new, never half.

A file is written to a temporary sibling, flushed to disk and renamed over its final
name. A folder is built under a temporary sibling name and swapped into place; an
existing folder is first renamed aside and deleted last. Temporary and set-aside
names start with TEMP_PREFIX and ASIDE_PREFIX, so a later writer can clear what a
killed one left (`remove_leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"
ASIDE_PREFIX = ".deleting-"


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or folder entry to disk so a crash cannot leave it half-written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A stream ("w" text, "wb" bytes) whose content replaces `path` in one rename on success.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600; the result should be readable as any new file would be, so
    # other users of a shared volume or DVC cache can read it.
    os.fchmod(handle, 0o666 & ~current_umask())
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` (UTF-8) in one rename, after the bytes are on disk."""
    with atomic_file(path, "w") as stream:
        stream.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data, sort_keys: bool = False) -> Path:
    """Indented JSON written atomically; the parent folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def temporary_sibling(final: Path) -> Path:
    """The name a folder is built under before it is swapped into `final`."""
    return final.with_name(f"{TEMP_PREFIX}{final.name}-{os.getpid()}")


def replace_folder(temporary: Path, final: Path, overwrite: bool = True) -> None:
    """Move a finished folder into place.

    An existing `final` is renamed aside first and deleted last, so a kill at any
    moment leaves either the old or the new one whole. Without `overwrite` an existing
    non-empty `final` is kept and FileExistsError raised.
    """
    previous = final.with_name(f"{ASIDE_PREFIX}{final.name}-{os.getpid()}")
    if overwrite and final.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    try:
        os.replace(temporary, final)
    except OSError as error:
        if overwrite:
            raise
        raise FileExistsError(f"{final}: was created while this folder was written ({error})") from error
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A fresh temporary folder that becomes `final` when the block succeeds.

    Every file in it is flushed to disk before the swap; on an exception the
    temporary folder is deleted and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(final)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        for path in sorted(temporary.rglob("*")):
            fsync_path(path)
        fsync_path(temporary)
        replace_folder(temporary, final, overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_path(final.parent)


def remove_folder(folder: Path) -> None:
    """Rename a folder aside before deleting it, so a kill mid-delete leaves no
    half-deleted folder under its own name."""
    doomed = folder.with_name(f"{ASIDE_PREFIX}{folder.name}-{os.getpid()}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(root: Path) -> None:
    """Temporary or half-deleted folders that a killed writer left in `root` (one writer per root)."""
    for path in root.iterdir():
        if path.name.startswith((TEMP_PREFIX, ASIDE_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
