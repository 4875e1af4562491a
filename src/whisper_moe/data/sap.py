"""Import the Speech Accessibility Project (SAP) release into manifests.

Layout: <root>/{Train,Dev}/<speaker>/<speaker>.json plus the speaker's WAVs. A
speaker JSON holds "Contributor ID", "Etiology" and "Files": [{"Filename",
"Prompt": {"Prompt Text", "Transcript", "Category Description",
"Sub Category Description"}, "Ratings": [...]}].

Splits: SAP Dev is the benchmark, so it becomes test.jsonl untouched, and it never
enters training. Model selection needs its own held-out speakers, so dev.jsonl is
carved from SAP Train: a speaker-disjoint share (dev_fraction), stratified by
etiology. train.jsonl is the rest of SAP Train. When only Train is imported, test
is carved from it the same way.

Bad entries never stop the import: each is skipped with a counted reason in
data_report.json. Audio is checked only through its header here (duration); the
validator decodes every file later.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from whisper_moe.data.audio import AudioError, audio_duration_s
from whisper_moe.data.manifest import speaker_disjoint_split, write_manifest
from whisper_moe.fsio import write_json_atomic
from whisper_moe.progress import track
from whisper_moe.text import clean_sap_transcript, sap_transcript_with_disfluencies

SPEAKER_KEYS = ("Contributor ID", "Etiology", "Files")
MAX_EXAMPLES = 5


@dataclass
class SkipLog:
    """Skipped items by reason, with the first few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str, count: int = 1) -> None:
        self.counts[reason] += count
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)


def import_sap(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: tuple[str, ...] = ("Train", "Dev"),
    dev_fraction: float = 0.1,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, Path]:
    """Write train/dev/test.jsonl and data_report.json; return their paths.

    Audio stays where it is (manifests hold absolute paths into root).
    """
    root, out_dir = Path(root), Path(out_dir)
    _check_split_dirs(root, splits)
    skips = SkipLog()
    rows_by_source = {split: read_sap_split(root / split, skips, progress) for split in splits}
    outputs = _assign_splits(rows_by_source, dev_fraction, seed, skips)
    paths = {
        name: write_manifest(out_dir / f"{name}.jsonl", rows) for name, rows in outputs.items()
    }
    report = _sap_report(root, splits, outputs, skips, dev_fraction, seed)
    paths["report"] = write_json_atomic(out_dir / "data_report.json", report, sort_keys=True)
    return paths


def _check_split_dirs(root: Path, splits: tuple[str, ...]) -> None:
    """A wrong root is a configuration error, not bad data: stop with the fix."""
    if "Train" not in splits:
        raise ValueError(f"splits={splits!r} must include 'Train' (training data comes from it)")
    for split in splits:
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root / split}: SAP split folder not found; set data.sap_root to the folder "
                f"that holds {', '.join(splits)}"
            )


def read_sap_split(split_dir: Path, skips: SkipLog, progress: bool = True) -> list[dict]:
    """Rows of every usable utterance in one SAP split folder, speakers in sorted order."""
    rows: list[dict] = []
    speaker_dirs = sorted(path for path in split_dir.iterdir() if path.is_dir())
    for speaker_dir in track(speaker_dirs, f"SAP {split_dir.name}", unit="speaker", enabled=progress):
        rows.extend(read_sap_speaker(speaker_dir, skips, split_dir.name))
    return rows


def read_sap_speaker(speaker_dir: Path, skips: SkipLog, source_split: str) -> list[dict]:
    """Rows of one speaker folder; a bad speaker JSON skips the whole speaker."""
    metadata = _load_speaker_json(speaker_dir, skips)
    if metadata is None:
        return []
    speaker = str(metadata["Contributor ID"]).strip()
    etiology = _etiology_label(metadata["Etiology"])
    rows = []
    for index, entry in enumerate(metadata["Files"]):
        row = _file_entry_row(entry, index, speaker_dir, speaker, etiology, skips)
        if row is not None:
            row["sap_split"] = source_split
            rows.append(row)
    return rows


def _load_speaker_json(speaker_dir: Path, skips: SkipLog) -> dict | None:
    """The speaker's metadata, or None with a counted reason."""
    json_path = speaker_dir / f"{speaker_dir.name}.json"
    if not json_path.is_file():
        skips.add("missing_speaker_json", str(json_path))
        return None
    try:
        with open(json_path, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        skips.add("malformed_speaker_json", f"{json_path}: {error}")
        return None
    if not isinstance(metadata, dict):
        skips.add("malformed_speaker_json", f"{json_path}: not a JSON object")
        return None
    missing = [key for key in SPEAKER_KEYS if metadata.get(key) in (None, "")]
    if missing or not isinstance(metadata["Files"], list):
        skips.add("missing_speaker_fields", f"{json_path}: missing {missing or ['Files (list)']}")
        return None
    return metadata


def _etiology_label(value) -> str:
    """One group label per speaker (a list of etiologies is joined in order)."""
    if isinstance(value, list):
        return " + ".join(str(item).strip() for item in value if str(item).strip()) or "Unknown"
    return str(value).strip() or "Unknown"


def _file_entry_row(
    entry, index: int, speaker_dir: Path, speaker: str, etiology: str, skips: SkipLog
) -> dict | None:
    """Manifest row of one "Files" entry, or None with a counted reason."""
    where = f"{speaker_dir / (speaker_dir.name + '.json')} Files[{index}]"
    prompt = entry.get("Prompt") if isinstance(entry, dict) else None
    filename = entry.get("Filename") if isinstance(entry, dict) else None
    if not filename or not isinstance(prompt, dict) or prompt.get("Transcript") is None:
        skips.add("missing_file_fields", f"{where}: needs Filename and Prompt.Transcript")
        return None
    wav_path = _find_wav(speaker_dir, str(filename))
    if wav_path is None:
        skips.add("missing_file", str(speaker_dir / str(filename)))
        return None
    try:
        duration_s = audio_duration_s(wav_path)
    except AudioError as error:
        skips.add(error.reason, str(error))
        return None
    raw_text = str(prompt["Transcript"])
    return {
        "id": f"{speaker}_{Path(str(filename)).stem}",
        "audio_filepath": str(wav_path.resolve()),
        "text": clean_sap_transcript(raw_text),
        "text_with_disfluencies": sap_transcript_with_disfluencies(raw_text),
        "duration": round(duration_s, 4),
        "speaker": speaker,
        "group": etiology,
        "raw_text": raw_text,
        "prompt_text": str(prompt.get("Prompt Text") or ""),
        "category": str(prompt.get("Category Description") or ""),
        "sub_category": str(prompt.get("Sub Category Description") or ""),
    }


def _find_wav(speaker_dir: Path, filename: str) -> Path | None:
    """The audio file of an entry ("Filename" may omit the .wav extension)."""
    for candidate in (speaker_dir / filename, speaker_dir / f"{filename}.wav"):
        if candidate.is_file():
            return candidate
    return None


def _assign_splits(
    rows_by_source: dict[str, list[dict]], dev_fraction: float, seed: int, skips: SkipLog
) -> dict[str, list[dict]]:
    """train/dev/test rows: test = SAP Dev (if imported), dev carved from SAP Train."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction!r}")
    train_pool = _drop_duplicate_ids(rows_by_source["Train"], skips)
    if "Dev" in rows_by_source:
        test_rows = _drop_duplicate_ids(rows_by_source["Dev"], skips)
        train_pool = _drop_test_speakers(train_pool, test_rows, skips)
        fractions = (1 - dev_fraction, dev_fraction, 0.0)
        carved = speaker_disjoint_split(train_pool, fractions=fractions, seed=seed)
        return {"train": carved["train"], "dev": carved["dev"], "test": test_rows}
    fractions = (1 - 2 * dev_fraction, dev_fraction, dev_fraction)
    return speaker_disjoint_split(train_pool, fractions=fractions, seed=seed)


def _drop_duplicate_ids(rows: list[dict], skips: SkipLog) -> list[dict]:
    """Keep the first row of each id: a repeated id would make results ambiguous."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["id"] in seen:
            skips.add("duplicate_id", row["id"])
            continue
        seen.add(row["id"])
        kept.append(row)
    return kept


def _drop_test_speakers(train_rows: list[dict], test_rows: list[dict], skips: SkipLog):
    """Held-out speakers never train: Train rows of a speaker who is also in Dev go."""
    test_speakers = {row["speaker"] for row in test_rows}
    kept = []
    for row in train_rows:
        if row["speaker"] in test_speakers:
            skips.add("speaker_in_test", row["id"])
        else:
            kept.append(row)
    return kept


def _sap_report(
    root: Path, splits, outputs: dict[str, list[dict]], skips: SkipLog, dev_fraction, seed
) -> dict:
    """Counts per output split and per etiology, and every skip reason with examples."""
    return {
        "source": "sap",
        "root": str(root.resolve()),
        "imported_splits": list(splits),
        "test_is_sap_dev": "Dev" in splits,
        "dev_fraction": dev_fraction,
        "seed": seed,
        "kept": sum(len(rows) for rows in outputs.values()),
        "skipped": dict(sorted(skips.counts.items())),
        "examples": {reason: skips.examples[reason] for reason in sorted(skips.examples)},
        "fixed": {"resampled": 0, "downmixed": 0},
        "splits": {
            name: {
                "utterances": len(rows),
                "speakers": len({row["speaker"] for row in rows}),
                "duration_s": round(sum(row["duration"] for row in rows), 3),
                "groups": dict(sorted(Counter(row["group"] for row in rows).items())),
            }
            for name, rows in outputs.items()
        },
    }
