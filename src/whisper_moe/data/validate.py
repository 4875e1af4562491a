"""Check every manifest line and its audio before training sees it.

Bad input is skipped with a counted reason (never a crash mid-epoch, never a silent
drop); when the skipped share passes max_skip_fraction the run stops with an error
naming the manifest and example files, because that much bad data means a broken
path or export rather than a few bad recordings.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from whisper_moe.data.audio import AUDIO_REASONS, TARGET_SAMPLE_RATE, AudioError, decode_audio
from whisper_moe.data.manifest import (
    ManifestError,
    iter_manifest_lines,
    parse_manifest_line,
    write_manifest,
)
from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import sha256_of, write_json_atomic
from whisper_moe.progress import track

MAX_EXAMPLES = 5
FIX_NAMES = ("resampled", "downmixed")

# reason code -> meaning and fix (shown in errors; the README table lists the same)
ROW_REASONS = {
    "malformed_json": "the line is not a JSON object; fix the line",
    "missing_keys": "a required key ('audio_filepath' or 'text') is missing; add it",
    "bad_value": "a value has the wrong type; fix it",
    "path_escapes_root": "audio_filepath points outside the data root; fix the path",
    "duplicate_id": "the id was used by an earlier line; make ids unique",
    "empty_transcript": "the text is empty; transcribe it or remove the line",
    "label_too_long": "the text has more tokens than max_label_tokens; split the utterance",
}


class DataQualityError(WhisperMoeError, RuntimeError):
    """Too much of a manifest is unusable; the message names files and the fix."""


@dataclass
class ValidationTally:
    """Running counts for the data report (audio checks update it from threads)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    fixed: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def skip(self, reason: str, example: str) -> None:
        with self._lock:
            self.skipped[reason] += 1
            shown = self.examples.setdefault(reason, [])
            if len(shown) < MAX_EXAMPLES:
                shown.append(example)

    def count_fixes(self, fixes: list[str]) -> None:
        with self._lock:
            for fix in fixes:
                self.fixed[fix] += 1

    @property
    def total(self) -> int:
        return self.kept + sum(self.skipped.values())

    def report(self, in_path, max_skip_fraction: float) -> dict:
        return {
            "manifest": str(in_path),
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_fraction": _fraction(sum(self.skipped.values()), self.total),
            "max_skip_fraction": max_skip_fraction,
            "fixed": {name: self.fixed.get(name, 0) for name in FIX_NAMES},
            "examples": {reason: self.examples[reason] for reason in sorted(self.examples)},
        }


@dataclass(frozen=True)
class ValidationRules:
    """What a usable row must satisfy (from params: data.max_duration_s, ...)."""

    max_duration_s: float = 30.0
    tokenizer: object = None
    max_label_tokens: int = 448
    root: str | os.PathLike | None = None
    fixed_audio_dir: str | os.PathLike | None = None


def validate_manifest(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    report_path: str | os.PathLike,
    max_skip_fraction: float,
    max_duration_s: float = 30.0,
    tokenizer=None,
    max_label_tokens: int = 448,
    root: str | os.PathLike | None = None,
    fixed_audio_dir: str | os.PathLike | None = None,
    num_workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write the usable rows to out_path and the report to report_path; return the report.

    Kept rows get the measured duration (after resampling). Wrong-rate and stereo
    files are usable (load_audio converts them) and counted under "fixed"; with
    fixed_audio_dir they are also written there as 16 kHz mono WAV so training does
    not convert them every epoch. `tokenizer` is any object with .encode(text).
    The report is written even when the run is stopped, so the reasons can be read;
    the cleaned manifest only when it is not.
    """
    rules = ValidationRules(max_duration_s, tokenizer, max_label_tokens, root, fixed_audio_dir)
    tally = ValidationTally()
    kept_rows = _check_all_lines(in_path, tally, rules, num_workers, progress)
    report = tally.report(in_path, max_skip_fraction)
    write_json_atomic(report_path, report, sort_keys=True)
    _stop_if_too_much_skipped(in_path, tally, max_skip_fraction, report_path)
    write_manifest(out_path, kept_rows)
    report["manifest_sha256"] = sha256_of(out_path)  # marks the cleaned manifest as validated
    write_json_atomic(report_path, report, sort_keys=True)
    return report


def is_validated(manifest: str | os.PathLike) -> bool:
    """The manifest is one validate_manifest wrote, unchanged since (its report says so)."""
    manifest = Path(manifest)
    report_path = manifest.with_name(f"{manifest.stem}_report.json")
    try:
        recorded = json.loads(report_path.read_text()).get("manifest_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded is not None and recorded == sha256_of(manifest)


def _check_all_lines(
    in_path, tally: ValidationTally, rules: ValidationRules, num_workers: int, progress: bool
) -> list[dict]:
    """Parse and check every line, keeping file order; the rows that pass, fixes applied.

    Audio decoding runs in threads (libsndfile and the resampler release the GIL).
    """
    rows = _parse_lines(in_path, tally, rules.root)
    rows = [row for row in rows if _text_ok(row, tally, rules)]

    def check(row: dict) -> dict | None:
        return _audio_ok(row, tally, rules)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(
            track(pool.map(check, rows), "validate", total=len(rows), unit="utt", enabled=progress)
        )
    kept = [row for row in results if row is not None]
    tally.kept = len(kept)
    return kept


def _parse_lines(in_path, tally: ValidationTally, root) -> list[dict]:
    """Rows whose JSON, keys, types, path and id are fine; the rest counted."""
    rows, seen_ids = [], set()
    for line_number, text in iter_manifest_lines(in_path):
        try:
            row = parse_manifest_line(text, in_path, line_number, root=root)
        except ManifestError as error:
            tally.skip(error.reason, f"{in_path}:{line_number} ({error.detail})")
            continue
        if row["id"] in seen_ids:
            tally.skip("duplicate_id", f"{in_path}:{line_number} id={row['id']}")
            continue
        seen_ids.add(row["id"])
        rows.append(row)
    return rows


def _text_ok(row: dict, tally: ValidationTally, rules: ValidationRules) -> bool:
    """The transcript is non-empty and, with a tokenizer, short enough to be a label."""
    text = row["text"].strip()
    if not text:
        tally.skip("empty_transcript", row["id"])
        return False
    if rules.tokenizer is not None:
        num_tokens = len(rules.tokenizer.encode(text))
        if num_tokens > rules.max_label_tokens:
            tally.skip("label_too_long", f"{row['id']} ({num_tokens} tokens)")
            return False
    row["text"] = text
    return True


def _audio_ok(row: dict, tally: ValidationTally, rules: ValidationRules) -> dict | None:
    """Decode the audio; the row with its measured duration, or None with a reason."""
    try:
        decoded = decode_audio(row["audio_filepath"], max_duration_s=rules.max_duration_s)
    except AudioError as error:
        tally.skip(error.reason, f"{row['id']}: {error.path}")
        return None
    tally.count_fixes(decoded.fixes)
    if decoded.fixes and rules.fixed_audio_dir is not None:
        row["audio_filepath"] = _write_fixed_copy(row, decoded.samples, rules.fixed_audio_dir)
    row["duration"] = round(decoded.duration_s, 4)
    return row


def _write_fixed_copy(row: dict, samples, fixed_audio_dir) -> str:
    """Save converted 16 kHz mono audio so later stages read it without converting."""
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in row["id"])
    if safe_name != row["id"]:  # keep ids that differ only in odd characters apart
        safe_name += "-" + hashlib.sha1(row["id"].encode()).hexdigest()[:8]
    path = Path(fixed_audio_dir) / f"{safe_name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, TARGET_SAMPLE_RATE, subtype="PCM_16")
    return str(path.resolve())


def _stop_if_too_much_skipped(in_path, tally: ValidationTally, max_skip_fraction, report_path):
    """Raise DataQualityError naming the manifest, the reasons and example files."""
    skipped = sum(tally.skipped.values())
    if tally.total == 0:
        raise DataQualityError(f"{in_path}: the manifest has no rows; point the run at real data")
    if tally.kept > 0 and _fraction(skipped, tally.total) <= max_skip_fraction:
        return
    share = _fraction(skipped, tally.total)
    verdict = (
        "no row is usable"
        if tally.kept == 0
        else f"{share:.1%} > max_skip_fraction={max_skip_fraction:g}"
    )
    lines = [f"{in_path}: {skipped} of {tally.total} rows are unusable ({verdict})."]
    for reason, count in tally.skipped.most_common():
        hint = ROW_REASONS.get(reason) or AUDIO_REASONS.get(reason, "")
        lines.append(f"  {reason}: {count}, e.g. {', '.join(tally.examples[reason][:3])}: {hint}")
    lines.append(
        f"Full list of reasons in {report_path}. Fix or remove these entries, "
        "or raise data.max_skip_fraction if losing them is acceptable."
    )
    raise DataQualityError("\n".join(lines))


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
