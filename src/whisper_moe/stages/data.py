"""Data stage: bring in the corpus (demo, SAP or manifests) and validate every split.

Writes validated `train/dev/test.jsonl` and one `data_report.json` (kept, skipped
with reasons, fixed) to the stage folder; stops with an error naming files when a
split's skipped share passes `data.max_skip_fraction`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from whisper_moe.config import check_params
from whisper_moe.data.manifest import SPLIT_NAMES
from whisper_moe.data.validate import validate_manifest
from whisper_moe.stages.common import write_json

log = logging.getLogger("whisper_moe.data")

STAMP_NAME = "source_stamp.json"


def source_stamp(params: dict) -> dict:
    """What a built corpus folder was built from; a different stamp means rebuild."""
    data = params["data"]
    if data["source"] == "demo":
        return {"source": "demo", "demo": data["demo"], "seed": params["seed"]}
    return {"source": "sap", "sap_root": str(Path(data["sap_root"]).resolve())}


def is_built_from(folder: Path, stamp: dict) -> bool:
    stamp_path = folder / STAMP_NAME
    if not all((folder / f"{split}.jsonl").exists() for split in SPLIT_NAMES[:2]):
        return False
    return stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp


def source_manifests(params: dict) -> Path:
    """Folder with raw train/dev/test.jsonl for the configured source (built if needed).

    A demo corpus or SAP import is reused only when its stamp matches the current source
    and settings, so a folder built for one source never silently serves another.
    """
    data = params["data"]
    source = data["source"]
    if source == "manifest":
        if not data["manifest_dir"]:
            raise ValueError("data.source is 'manifest' but data.manifest_dir is empty: pass --manifest-dir")
        return Path(data["manifest_dir"])
    if source not in ("demo", "sap"):
        raise ValueError(f"data.source {source!r}: expected demo, sap or manifest")
    if source == "sap" and not data["sap_root"]:
        raise ValueError("data.source is 'sap' but data.sap_root is empty: pass --dataset-root")
    folder = Path(data["dir"])
    stamp = source_stamp(params)
    if is_built_from(folder, stamp):
        return folder
    if source == "demo":
        from whisper_moe.data.demo import make_demo_corpus

        demo = data["demo"]
        log.info("building the demo corpus in %s", folder)
        make_demo_corpus(folder, accents=demo["accents"],
                         speakers_per_accent=demo["speakers_per_accent"],
                         utterances_per_speaker=demo["utterances_per_speaker"],
                         seed=params["seed"])
    else:
        from whisper_moe.data.sap import import_sap

        log.info("importing the SAP release %s into %s", data["sap_root"], folder)
        import_sap(data["sap_root"], folder)
    write_json(folder / STAMP_NAME, stamp)
    return folder


def base_tokenizer(params: dict):
    """The base model's tokenizer (no weights), for the over-long-transcript check."""
    name = str(params["model"]["base_model"])
    try:
        if name == "demo":
            from whisper_moe.model.base import demo_tokenizer

            return demo_tokenizer()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=Path(name).exists())
    except Exception as error:  # the check is skipped, loudly; training still drops long targets
        log.warning("no tokenizer for %s (%s): transcript length is checked at training", name, error)
        return None


def validate_one(params: dict, manifest, out_dir: Path, root=None, split: str | None = None,
                 tokenizer=None) -> dict:
    """Validate one manifest into out_dir/<split>.jsonl + <split>_report.json."""
    params = check_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split or Path(manifest).stem
    return validate_manifest(
        manifest, out_dir / f"{split}.jsonl", out_dir / f"{split}_report.json",
        max_skip_fraction=float(params["data"]["max_skip_fraction"]),
        max_duration_s=float(params["data"]["max_duration_s"]),
        max_label_tokens=int(params["train"]["max_label_tokens"]), root=root,
        tokenizer=tokenizer if tokenizer is not None else base_tokenizer(params),
    )


def run(params: dict, out_dir) -> dict:
    params = check_params(params)
    out_dir = Path(out_dir)
    source = source_manifests(params)
    reports = {}
    tokenizer = base_tokenizer(params)
    for split in SPLIT_NAMES:
        manifest = source / f"{split}.jsonl"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: missing; a data folder needs train/dev/test.jsonl")
        reports[split] = validate_one(params, manifest, out_dir, split=split, tokenizer=tokenizer)
        log.info("%s: kept %d, skipped %s", split, reports[split]["kept"], reports[split]["skipped"])
    write_json(out_dir / "data_report.json", {"source": str(source), "splits": reports})
    return {split: str(out_dir / f"{split}.jsonl") for split in SPLIT_NAMES} | {
        "report": str(out_dir / "data_report.json")}
