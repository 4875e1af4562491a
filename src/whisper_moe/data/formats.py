"""Corpora in the formats users already have, turned into our data folder layout.

A Hugging Face `datasets` folder (written by `save_to_disk`, a parquet folder, or an
audiofolder: audio files plus `metadata.csv`/`metadata.jsonl`) becomes 16 kHz mono WAV
files under `audio/` plus train/dev/test.jsonl. A NeMo folder (train/dev/test
manifests) or a single NeMo manifest becomes train/dev/test.jsonl pointing at the
audio where it lies. Splits the source lacks (dev, test, or both) are carved out of
its training split speaker-disjointly, as the manifest module splits any corpus.

Audio is decoded with soundfile from the stored bytes or path (`Audio(decode=False)`):
`datasets` 5.x decodes, and its audiofolder loader even lists files, only through
torchcodec, which a CPU training image need not carry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_moe.data.audio import TARGET_SAMPLE_RATE, resample_audio
from whisper_moe.data.manifest import (
    DEFAULT_GROUP,
    SPLIT_NAMES,
    read_manifest,
    speaker_disjoint_split,
    write_manifest,
)
from whisper_moe.errors import WhisperMoeError
from whisper_moe.fsio import atomic_folder
from whisper_moe.progress import Progress

log = logging.getLogger("whisper_moe.data")

# split names used by datasets and NeMo -> ours
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "validation": "dev",
                 "valid": "dev", "val": "dev", "test": "test", "testing": "test"}
HOLDOUT_FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")
HF_LAYOUTS = ("save_to_disk", "parquet", "audiofolder")
NEMO_SUFFIXES = (".json", ".jsonl")


class DatasetFormatError(WhisperMoeError, ValueError):
    """A dataset folder or manifest we cannot read as the configured format; names the fix."""


@dataclass(frozen=True)
class HfColumns:
    """Which columns of a Hugging Face dataset hold what (the `data.hf_*_column` settings)."""

    audio: str = "audio"
    text: str = "text"
    speaker: str | None = None
    group: str | None = None

    @classmethod
    def from_params(cls, data: dict) -> HfColumns:
        return cls(audio=data["hf_audio_column"], text=data["hf_text_column"],
                   speaker=data["hf_speaker_column"] or None, group=data["hf_group_column"] or None)


# ------------------------------------------------------------------ shared


def our_split_name(name: str) -> str | None:
    """train/dev/test for a source's split name (validation -> dev), None for others."""
    return SPLIT_ALIASES.get(name.lower())


def carve_missing_splits(splits: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    """Fill absent dev/test splits with whole speakers taken from train.

    Rows need `speaker` (and may have `group`); speakers never straddle two splits.
    """
    if "train" not in splits:
        raise DatasetFormatError(f"no training split among {sorted(splits)}",
                                 hint="name one split train (or give a single, unsplit dataset)")
    missing = [name for name in SPLIT_NAMES if name not in splits]
    if not missing:
        return splits
    fractions = [HOLDOUT_FRACTIONS[name] if name in missing or name == "train" else 0.0
                 for name in SPLIT_NAMES]
    log.info("no %s split: taking whole speakers out of train", " or ".join(missing))
    carved = speaker_disjoint_split(splits["train"], fractions, seed=seed)
    return {name: splits[name] if name in splits and name != "train" else carved[name]
            for name in SPLIT_NAMES}


def fingerprint(path: str | os.PathLike) -> str:
    """Digest of the names, sizes and modification times of the files under path.

    Cheap (no file is read), and it changes when a dataset is rewritten in place, so
    a converted copy is never reused for other data at the same path.
    """
    path = Path(path)
    if not path.exists():
        return "missing"  # the conversion then names the path
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0"
                      f"{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ Hugging Face datasets


def import_datasets():
    """The `datasets` package, or an error saying to install it (only source hf needs it)."""
    try:
        import datasets
    except ImportError as error:
        raise DatasetFormatError("data.source hf needs the Hugging Face datasets package",
                                 hint="pip install datasets") from error
    return datasets


def hf_layout(folder: str | os.PathLike) -> str:
    """save_to_disk, parquet or audiofolder, from the files in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder}: no such dataset folder",
                                 hint="pass the folder save_to_disk wrote, or a parquet or audiofolder folder")
    if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
        return "save_to_disk"
    if any(any(folder.rglob(name)) for name in AUDIOFOLDER_METADATA):
        return "audiofolder"
    if any(folder.rglob("*.parquet")):
        return "parquet"
    raise DatasetFormatError(
        f"{folder}: not a Hugging Face dataset folder (no dataset_dict.json or state.json, "
        f"no {' or '.join(AUDIOFOLDER_METADATA)}, no *.parquet)",
        hint="write it with Dataset(Dict).save_to_disk, or point at a parquet or audiofolder folder")


def load_hf_splits(folder: str | os.PathLike, cache_dir: str | os.PathLike) -> dict:
    """The dataset's splits by their own names ({"train": ds} for a single Dataset)."""
    datasets = import_datasets()

    folder = Path(folder)
    layout = hf_layout(folder)
    if layout == "save_to_disk":
        loaded = datasets.load_from_disk(str(folder))
    elif layout == "parquet":
        loaded = datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(cache_dir))
    else:
        loaded = load_audiofolder(folder)
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def load_audiofolder(folder: Path) -> dict:
    """An audiofolder's splits with an `audio` column of absolute paths.

    Read here from its metadata files, not by `load_dataset("audiofolder")`, which
    needs torchcodec to list the files. A metadata file's split is the nearest folder
    above it named like a split (train, validation, test, ...); otherwise train.
    """
    import pandas as pd

    datasets = import_datasets()
    tables: dict[str, list] = {}
    for metadata in sorted(p for name in AUDIOFOLDER_METADATA for p in folder.rglob(name)):
        table = (pd.read_csv(metadata, dtype=str, keep_default_na=False) if metadata.suffix == ".csv"
                 else pd.read_json(metadata, lines=True, dtype=False))
        if "file_name" not in table.columns:
            raise DatasetFormatError(f"{metadata}: no file_name column (found {list(table.columns)})",
                                     hint="an audiofolder's metadata names each audio file in file_name")
        table["audio"] = [str(metadata.parent / name) for name in table.pop("file_name")]
        tables.setdefault(audiofolder_split(metadata, folder), []).append(table)
    return {split: datasets.Dataset.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)
            for split, parts in tables.items()}


def audiofolder_split(metadata: Path, folder: Path) -> str:
    for parent in metadata.relative_to(folder).parents:
        if parent.name and our_split_name(parent.name):
            return parent.name
    return "train"


def check_columns(dataset, columns: HfColumns, where: str) -> None:
    """Every configured column exists; the error lists the columns there are."""
    settings = {"data.hf_audio_column": columns.audio, "data.hf_text_column": columns.text,
                "data.hf_speaker_column": columns.speaker, "data.hf_group_column": columns.group}
    present = list(dataset.column_names)
    for setting, column in settings.items():
        if column is not None and column not in present:
            raise DatasetFormatError(f"{where}: no column {column!r} (columns: {present})",
                                     hint=f"set {setting} to one of them")


def check_audio_feature(dataset, column: str, where: str) -> None:
    """The audio column holds audio: an Audio feature, file paths, or {bytes, path} /
    {array, sampling_rate} structs."""
    datasets = import_datasets()
    feature = dataset.features[column]
    if isinstance(feature, datasets.Audio):
        return
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return
    if isinstance(feature, dict) and ({"bytes", "path"} & set(feature) or {"array", "sampling_rate"} <= set(feature)):
        return
    raise DatasetFormatError(f"{where}: column {column!r} holds {feature}, not audio",
                             hint="set data.hf_audio_column to the Audio column (or a column of file paths)")


def without_decoding(dataset, audio_column: str):
    """The dataset with its Audio column giving {bytes, path} instead of decoded audio."""
    datasets = import_datasets()

    if isinstance(dataset.features[audio_column], datasets.Audio):
        return dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


def split_plan(named: dict, columns: HfColumns, seed: int) -> dict[str, list[tuple[str, int]]]:
    """(source split, row index) of every utterance in each of our splits.

    Only the speaker and group columns are read here, so carving dev/test out of a
    large training split never loads its audio.
    """
    keys: dict[str, list[dict]] = {}
    for name, dataset in named.items():
        ours = our_split_name(name)
        if ours is None:
            log.warning("split %r is not train, validation/dev or test: left out", name)
            continue
        if ours in keys:
            raise DatasetFormatError(f"two splits map to {ours}: {sorted(named)}",
                                     hint="keep one split per train, validation/dev and test")
        speakers = list(dataset[columns.speaker]) if columns.speaker else None
        groups = list(dataset[columns.group]) if columns.group else None
        keys[ours] = [{"split": name, "index": index,
                       "speaker": str(speakers[index]) if speakers is not None else f"{name}-{index}",
                       "group": str(groups[index]) if groups is not None else DEFAULT_GROUP}
                      for index in range(len(dataset))]
    if not columns.speaker and any(name not in keys for name in SPLIT_NAMES):
        log.warning("no data.hf_speaker_column: dev/test are carved from train per utterance, "
                    "so their speakers may also be in training")
    planned = carve_missing_splits(keys, seed)
    return {split: [(row["split"], row["index"]) for row in rows] for split, rows in planned.items()}


def decode_hf_audio(value, base_dir: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of one Audio value: bytes, a path or an array."""
    if isinstance(value, str):
        value = {"path": value, "bytes": None}
    if value.get("array") is not None:
        samples = np.asarray(value["array"], dtype=np.float32)
        mono = samples.mean(axis=0) if samples.ndim == 2 else samples  # datasets: (channels, samples)
        return mono, int(value["sampling_rate"])
    if value.get("bytes") is not None:
        source = io.BytesIO(value["bytes"])
    elif value.get("path"):
        source = str(stored_path(value["path"], base_dir))
    else:
        raise ValueError("neither bytes nor a path")
    samples, rate = sf.read(source, dtype="float32", always_2d=True)
    return samples.mean(axis=1, dtype=np.float32), int(rate)


def stored_path(path: str, base_dir: Path) -> Path:
    """A stored audio path: relative ones inside the dataset folder when there, else as given
    (datasets keeps a relative path as written, relative to where the dataset was made)."""
    candidate = base_dir / path
    return candidate if not Path(path).is_absolute() and candidate.exists() else Path(path)


def write_wav(value, base_dir: Path, out: Path) -> tuple[Path, float | None]:
    """Write one utterance as a 16 kHz mono WAV; (path, duration).

    Audio soundfile cannot decode is written as it came (under a `.undecodable` name),
    so the validator counts it like any bad file and the max_skip_fraction check applies.
    """
    try:
        mono, rate = decode_hf_audio(value, base_dir)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError) as error:
        raw = value.get("bytes") if isinstance(value, dict) else None
        kept = out.with_suffix(".undecodable")
        kept.write_bytes(raw or b"")
        log.warning("%s: cannot decode (%s): kept as %s", out.stem, error, kept.name)
        return kept, None
    samples = np.clip(resample_audio(mono, rate, TARGET_SAMPLE_RATE), -1.0, 1.0)
    sf.write(str(out), samples, TARGET_SAMPLE_RATE, subtype="PCM_16")
    return out, len(samples) / float(TARGET_SAMPLE_RATE)


def manifest_rows(dataset, plan: list[tuple[str, int]], split_of_source: str, columns: HfColumns,
                  audio_dir: Path, base_dir: Path) -> Iterable[dict]:
    """Our manifest rows for the planned rows of one source split, writing their audio."""
    for source_split, index in plan:
        if source_split != split_of_source:
            continue
        row = dataset[index]
        utterance_id = f"{source_split}-{index:06d}"
        path, duration = write_wav(row[columns.audio], base_dir, audio_dir / f"{utterance_id}.wav")
        text = row[columns.text]
        yield {"id": utterance_id, "audio_filepath": str(path), "text": "" if text is None else str(text),
               "duration": duration,
               "speaker": str(row[columns.speaker]) if columns.speaker else utterance_id,
               "group": str(row[columns.group]) if columns.group else DEFAULT_GROUP}


def convert_split(named: dict, plan: list[tuple[str, int]], columns: HfColumns, audio_dir: Path,
                  base_dir: Path, split: str) -> list[dict]:
    """Manifest rows of one of our splits, its audio written to audio_dir, with progress."""
    audio_dir.mkdir(parents=True)
    rows = []
    with Progress(f"converting {split}", total=len(plan), unit="utterance", rate_unit="utt") as progress:
        for name, dataset in named.items():
            if our_split_name(name):
                for row in manifest_rows(without_decoding(dataset, columns.audio), plan, name, columns,
                                         audio_dir, base_dir):
                    rows.append(row)
                    progress.update()
    return rows


def convert_hf_dataset(folder: str | os.PathLike, out_dir: str | os.PathLike,
                       columns: HfColumns = HfColumns(), seed: int = 42) -> dict[str, Path]:
    """Write audio/ (16 kHz mono WAV) and train/dev/test.jsonl for a datasets folder.

    The output folder is replaced as a whole when the conversion succeeds.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    with atomic_folder(out_dir) as building:
        named = load_hf_splits(folder, cache_dir=building / ".hf-cache")
        for name, dataset in named.items():
            check_columns(dataset, columns, f"{folder} (split {name})")
            check_audio_feature(dataset, columns.audio, f"{folder} (split {name})")
        plan = split_plan(named, columns, seed)
        for split in SPLIT_NAMES:
            rows = convert_split(named, plan[split], columns, building / "audio" / split, folder, split)
            write_manifest(building / f"{split}.jsonl", rows)
            log.info("%s: %d utterances from %s", split, len(rows), folder)
        shutil.rmtree(building / ".hf-cache", ignore_errors=True)
    return {split: out_dir / f"{split}.jsonl" for split in SPLIT_NAMES}


# ------------------------------------------------------------------ NeMo manifests


def nemo_manifests(path: str | os.PathLike) -> dict[str, Path]:
    """{split: manifest} of a NeMo folder, or {"train": path} for a single manifest.

    In a folder, `train`/`dev`/`validation`/`val`/`test` manifests are found by name,
    with or without a `_manifest` suffix, as .json or .jsonl.
    """
    path = Path(path)
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise DatasetFormatError(f"{path}: no such NeMo manifest or folder",
                                 hint="pass a manifest (JSON lines with audio_filepath, text, duration) "
                                      "or a folder with train/dev/test manifests")
    found: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        stem = file.stem.lower().removesuffix("_manifest").removeprefix("manifest_")
        split = our_split_name(stem) if file.suffix in NEMO_SUFFIXES else None
        if split and split in found:
            raise DatasetFormatError(f"{path}: both {found[split].name} and {file.name} are the {split} split",
                                     hint="keep one manifest per split")
        if split:
            found[split] = file
    if "train" not in found:
        raise DatasetFormatError(
            f"{path}: no training manifest (looked for train.json, train_manifest.json, train.jsonl; "
            f"found {sorted(p.name for p in path.iterdir())[:10]})",
            hint="name the manifests train/dev/test (.json or .jsonl), or pass a single manifest file")
    return found


def check_no_offsets(rows: list[dict], manifest: Path) -> None:
    """NeMo rows may name a segment of a longer file (`offset`); we train on whole files,
    so a segment would silently become its whole recording."""
    segment = next((row for row in rows if row.get("offset")), None)
    if segment is not None:
        raise DatasetFormatError(
            f"{manifest}: {segment['id']} is a segment (offset {segment['offset']}) of a longer recording",
            hint="cut the segments into their own audio files (one utterance a file) and list those")


def convert_nemo(path: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 42) -> dict[str, Path]:
    """Write train/dev/test.jsonl for NeMo manifests; the audio stays where it is."""
    out_dir = Path(out_dir)
    manifests = nemo_manifests(path)
    splits = {split: read_manifest(manifest) for split, manifest in manifests.items()}
    for split, rows in splits.items():
        check_no_offsets(rows, manifests[split])
    splits = carve_missing_splits(splits, seed)
    with atomic_folder(out_dir) as building:
        for split in SPLIT_NAMES:
            write_manifest(building / f"{split}.jsonl", splits[split])
    return {split: out_dir / f"{split}.jsonl" for split in SPLIT_NAMES}
