"""JSONL manifests: reading, writing, sampling and speaker-disjoint splitting.

A manifest line is {"id", "audio_filepath", "text", "duration", "speaker", "group"}
plus optional extra keys. Only `audio_filepath` and `text` are required, so NeMo
manifests (`audio_filepath`, `text`, `duration`) are read as they are: `id` defaults to
the audio path, `duration` is measured by the validator, `group` defaults to "all" and
`speaker` to the utterance id (with a warning: the train/dev/test split is then per
utterance, not per speaker). Relative audio paths are relative to the manifest's
folder, so a data folder can be moved (or versioned by DVC) as one piece.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import write_text_atomic

REQUIRED_KEYS = ("audio_filepath", "text")
DEFAULT_GROUP = "all"
SPLIT_NAMES = ("train", "dev", "test")


class ManifestError(WhisperMoeError, ValueError):
    """A manifest line that cannot be used; names the file and line number.

    `reason` is a short code the validator counts: malformed_json, missing_keys,
    bad_value or path_escapes_root.
    """

    def __init__(self, path: str | os.PathLike, line_number: int, reason: str, detail: str):
        self.path = str(path)
        self.line_number = line_number
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}:{line_number}: {reason}: {detail}")

    def __reduce__(self):
        """Rebuild from the original arguments (for errors crossing process boundaries)."""
        return (type(self), (self.path, self.line_number, self.reason, self.detail))


def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[dict]:
    """All rows with absolute audio paths; the first bad line raises ManifestError.

    Strict on purpose: stages read manifests the validator has already cleaned, so
    a bad line here means the file was edited by hand and should be fixed, not skipped.
    """
    return [row for _, row in iter_manifest(path, root=root)]


def iter_manifest(
    path: str | os.PathLike, root: str | os.PathLike | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, row) for every non-blank line, raising on the first bad one."""
    for line_number, text in iter_manifest_lines(path):
        yield line_number, parse_manifest_line(text, path, line_number, root=root)


def check_manifest_file(path: str | os.PathLike) -> Path:
    """The path is a readable manifest file, or a one-line error that says what to pass."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.jsonl"))[:3]
        raise WhisperMoeError(f"{path} is a folder, not a manifest",
                              hint=f"pass a JSONL manifest file{' such as ' + str(path / found[0]) if found else ''}")
    if not path.exists():
        raise WhisperMoeError(f"{path}: no such manifest", hint="check the path (JSONL, one utterance a line)")
    return path


def iter_manifest_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, raw text) of non-blank lines, for lenient readers."""
    check_manifest_file(path)
    with open(path, encoding="utf-8") as handle:
        for line_number, text in enumerate(handle, start=1):
            if text.strip():
                yield line_number, text


def parse_manifest_line(
    text: str,
    manifest_path: str | os.PathLike,
    line_number: int,
    root: str | os.PathLike | None = None,
) -> dict:
    """One JSON line -> row with checked keys and an absolute audio path."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(manifest_path, line_number, "malformed_json", str(error)) from error
    if not isinstance(row, dict):
        raise ManifestError(manifest_path, line_number, "malformed_json", "not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in row]
    if missing:
        raise ManifestError(manifest_path, line_number, "missing_keys",
                            f"missing {', '.join(repr(key) for key in missing)}")
    fill_defaults(row, manifest_path)
    _check_value_types(row, manifest_path, line_number)
    row["audio_filepath"] = resolve_audio_path(
        row["audio_filepath"], manifest_path, line_number, root=root
    )
    return row


_WARNED_NO_SPEAKER: set[str] = set()


def fill_defaults(row: dict, manifest_path: str | os.PathLike) -> dict:
    """Defaults for the optional keys (module docstring); warns once per manifest without speakers."""
    if isinstance(row.get("audio_filepath"), str):
        row.setdefault("id", row["audio_filepath"])
    row.setdefault("group", DEFAULT_GROUP)
    row.setdefault("duration", None)
    if "speaker" not in row:
        row["speaker"] = row.get("id")
        if str(manifest_path) not in _WARNED_NO_SPEAKER:
            _WARNED_NO_SPEAKER.add(str(manifest_path))
            logging.getLogger("whisper_moe.data").warning(
                "%s: rows without 'speaker': each utterance counts as its own speaker, so "
                "train/dev/test are split per utterance and test speakers may appear in training; "
                "add a 'speaker' key for speaker-disjoint splits", manifest_path)
    return row


def resolve_audio_path(
    audio_path: str,
    manifest_path: str | os.PathLike,
    line_number: int = 0,
    root: str | os.PathLike | None = None,
) -> str:
    """Absolute path (relative ones against the manifest's folder), kept inside root.

    The root check resolves symlinks so a link cannot smuggle a path outside.
    """
    manifest_dir = Path(manifest_path).resolve().parent
    candidate = Path(os.path.expanduser(audio_path))
    absolute = candidate if candidate.is_absolute() else manifest_dir / candidate
    absolute = Path(os.path.normpath(absolute))
    if root is not None:
        root_resolved = Path(root).resolve()
        if not absolute.resolve().is_relative_to(root_resolved):
            raise ManifestError(
                manifest_path,
                line_number,
                "path_escapes_root",
                f"{audio_path!r} is outside the data root {str(root_resolved)!r}",
            )
    return str(absolute)


def _check_value_types(row: dict, manifest_path: str | os.PathLike, line_number: int) -> None:
    """Catch values of the wrong type early, where the line number is still known."""
    for key in ("id", "audio_filepath", "text", "speaker", "group"):
        if not isinstance(row[key], str):
            raise ManifestError(
                manifest_path, line_number, "bad_value", f"{key!r} must be a string"
            )
    duration = row["duration"]
    if duration is None:
        return  # measured by the validator
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ManifestError(manifest_path, line_number, "bad_value", "'duration' must be a number")
    if not math.isfinite(duration) or duration < 0:
        raise ManifestError(manifest_path, line_number, "bad_value", f"'duration' is {duration!r}")


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows atomically (temp file + rename) so a crash never leaves half a manifest.

    Audio paths inside the manifest's folder are written relative to it, so the folder
    stays movable; paths elsewhere stay absolute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest_dir = path.resolve().parent
    lines = [json.dumps(_portable_row(row, manifest_dir), ensure_ascii=False) for row in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return path


def _portable_row(row: dict, manifest_dir: Path) -> dict:
    """Copy of row whose audio path is relative when it lies under manifest_dir, or when
    both lie in the working directory (a project checkout: `dvc repro` output moved with
    its repository still finds its audio)."""
    out = dict(row)
    audio = Path(str(row["audio_filepath"]))
    if audio.is_absolute():
        absolute = Path(os.path.normpath(audio))
        if absolute.is_relative_to(manifest_dir):
            out["audio_filepath"] = absolute.relative_to(manifest_dir).as_posix()
        else:
            workdir = Path.cwd().resolve()
            if absolute.is_relative_to(workdir) and manifest_dir.is_relative_to(workdir):
                out["audio_filepath"] = Path(os.path.relpath(absolute, manifest_dir)).as_posix()
    return out


def stratified_sample(
    rows: Sequence[dict], percent: float, seed: int, key: str = "group"
) -> list[dict]:
    """About percent % of each group (at least one per group when percent > 0).

    Sampling per group keeps rare groups represented in small samples (the embed
    stage clusters a 5 % sample). Deterministic for a seed; rows keep their order.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent!r}")
    if percent == 0:
        return []
    if percent == 100:
        return list(rows)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for _group, indices in sorted(_indices_by(rows, key).items()):
        count = max(1, round(len(indices) * percent / 100.0))
        chosen.update(rng.sample(indices, min(count, len(indices))))
    return [row for index, row in enumerate(rows) if index in chosen]


def speaker_disjoint_split(
    rows: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    key: str = "group",
) -> dict[str, list[dict]]:
    """Assign whole speakers to train/dev/test, stratified by group.

    Held-out speakers never appear in training (the seed system split per utterance).
    Within each group the speakers are shuffled and dealt out by the fractions; a group
    with >= 3 speakers gets at least one in every split whose fraction is > 0. A group
    with 2 speakers goes to train and test, one with 1 speaker to train.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions!r}")
    total = float(sum(fractions))
    fractions = [f / total for f in fractions]
    rng = random.Random(seed)
    split_of_speaker: dict[str, str] = {}
    for _group, speakers in sorted(_speakers_by_group(rows, key).items()):
        shuffled = sorted(speakers)
        rng.shuffle(shuffled)
        counts = _split_counts(len(shuffled), fractions)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            for speaker in shuffled[start : start + count]:
                split_of_speaker[speaker] = name
            start += count
    splits: dict[str, list[dict]] = {name: [] for name in SPLIT_NAMES}
    for row in rows:
        splits[split_of_speaker[str(row["speaker"])]].append(row)
    check_no_empty_split(splits, fractions, rows, key)
    return splits


class SplitError(WhisperMoeError, ValueError):
    """Speaker-disjoint splitting cannot fill every split; says how many speakers are missing."""


def check_no_empty_split(splits: dict, fractions: Sequence[float], rows: Sequence[dict],
                         key: str) -> None:
    """An empty dev or test split is a data problem to name now, not an empty manifest later."""
    empty = [name for name, fraction in zip(SPLIT_NAMES, fractions) if fraction > 0 and not splits[name]]
    if not rows or not empty:
        return
    speakers = {group: len(names) for group, names in sorted(_speakers_by_group(rows, key).items())}
    raise SplitError(
        f"the {' and '.join(empty)} split would be empty: speaker-disjoint train/dev/test splitting "
        f"needs at least 3 speakers in a group, and the speakers per {key} are {speakers}",
        hint="add speakers (for the demo corpus: data.demo.speakers_per_group of 3 or more)")


def _split_counts(num_speakers: int, fractions: Sequence[float]) -> list[int]:
    """Speakers per split for one group: rounded shares, none empty when >= 3 speakers."""
    train_f, dev_f, test_f = fractions
    if num_speakers < 3:
        wanted = ["train", "test", "dev"] if test_f > 0 else ["train", "dev", "test"]
        counts = {name: 0 for name in SPLIT_NAMES}
        for index in range(num_speakers):
            counts[wanted[index]] += 1
        return [counts[name] for name in SPLIT_NAMES]
    dev = round(num_speakers * dev_f)
    test = round(num_speakers * test_f)
    dev = max(dev, 1) if dev_f > 0 else 0
    test = max(test, 1) if test_f > 0 else 0
    while num_speakers - dev - test < (1 if train_f > 0 else 0):
        if dev >= test and dev > 1:
            dev -= 1
        elif test > 1:
            test -= 1
        else:
            break
    return [num_speakers - dev - test, dev, test]


def _indices_by(rows: Sequence[dict], key: str) -> dict[str, list[int]]:
    """Row indices grouped by rows[i][key]."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[str(row.get(key, ""))].append(index)
    return groups


def _speakers_by_group(rows: Sequence[dict], key: str) -> dict[str, set[str]]:
    """Each speaker counted in the group of its first row (a speaker has one group)."""
    group_of_speaker: dict[str, str] = {}
    for row in rows:
        group_of_speaker.setdefault(str(row["speaker"]), str(row.get(key, "")))
    groups: dict[str, set[str]] = defaultdict(set)
    for speaker, group in group_of_speaker.items():
        groups[group].add(speaker)
    return groups
