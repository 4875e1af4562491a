"""Data stage: bring in the corpus (demo, SAP, manifests, a Hugging Face dataset or NeMo
manifests) and validate every split.

Writes validated `train/dev/test.jsonl` and one `data_report.json` (kept, skipped
with reasons, fixed) to the stage folder; stops with an error naming files when a
split's skipped share passes `data.max_skip_fraction`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from whisper_moe import artifacts
from whisper_moe.config import DEFAULT_PARAMS, check_params
from whisper_moe.data.manifest import SPLIT_NAMES
from whisper_moe.data.validate import validate_manifest
from whisper_moe.errors import ConfigError
from whisper_moe.fsio import write_json_atomic

log = logging.getLogger("whisper_moe.data")


# source -> (the setting naming its input, the flag that sets it)
SOURCE_INPUTS = {"sap": ("sap_root", "--dataset-root"), "hf": ("hf_dataset", "--hf-dataset"),
                 "nemo": ("nemo_manifest", "--nemo-manifest")}
HF_COLUMN_KEYS = ("hf_audio_column", "hf_text_column", "hf_speaker_column", "hf_group_column")


def source_stamp(params: dict) -> dict:
    """What a built corpus folder was built from; a different stamp means rebuild.

    Datasets and NeMo manifests are stamped with a fingerprint of their files too, so
    a dataset rewritten at the same path is converted again.
    """
    from whisper_moe.data.formats import fingerprint

    data = params["data"]
    source = data["source"]
    if source == "demo":
        return {"source": "demo", "demo": data["demo"], "seed": params["seed"]}
    key = SOURCE_INPUTS[source][0]
    stamp = {"source": source, key: str(Path(data[key]).resolve())}
    if source in ("hf", "nemo"):
        stamp |= {"fingerprint": fingerprint(data[key]), "seed": params["seed"]}
    if source == "hf":
        stamp |= {name: data[name] for name in HF_COLUMN_KEYS}
    return stamp


def is_built_from(folder: Path, stamp: dict) -> bool:
    stamp_path = folder / artifacts.SOURCE_STAMP
    if not all(artifacts.split_manifest(folder, split).exists() for split in SPLIT_NAMES[:2]):
        return False
    return stamp_path.exists() and artifacts.read_json(stamp_path) == stamp


def check_source(data: dict) -> None:
    """A known source whose input is set; the error names the flag that sets it."""
    source = data["source"]
    if source not in ("demo", "manifest", *SOURCE_INPUTS):
        raise ConfigError(f"data.source {source!r}: expected demo, manifest, sap, hf or nemo")
    if source == "manifest" and not data["manifest_dir"]:
        raise ConfigError("data.source is 'manifest' but data.manifest_dir is empty",
                          hint="pass --manifest-dir")
    if source in SOURCE_INPUTS and not data[SOURCE_INPUTS[source][0]]:
        key, flag = SOURCE_INPUTS[source]
        raise ConfigError(f"data.source is {source!r} but data.{key} is empty", hint=f"pass {flag}")


def corpus_folder(params: dict) -> Path:
    """Where a source is built or converted: data.dir, but never the demo corpus's default
    folder for another source (data/<source> instead)."""
    data = params["data"]
    if data["source"] != "demo" and data["dir"] == DEFAULT_PARAMS["data"]["dir"]:
        return Path("data") / data["source"]
    return Path(data["dir"])


def build_corpus(params: dict, folder: Path) -> None:
    """Write train/dev/test.jsonl (and audio where the source needs it) into folder."""
    data = params["data"]
    source = data["source"]
    if source == "demo":
        from whisper_moe.data.demo import make_demo_corpus

        demo = data["demo"]
        log.info("building the demo corpus in %s", folder)
        make_demo_corpus(folder, groups=demo["groups"],
                         speakers_per_group=demo["speakers_per_group"], fractions=demo["split"],
                         eval_utterances_per_speaker=demo["eval_utterances_per_speaker"],
                         utterances_per_speaker=demo["utterances_per_speaker"],
                         seed=params["seed"])
    elif source == "sap":
        from whisper_moe.data.sap import import_sap

        log.info("importing the SAP release %s into %s", data["sap_root"], folder)
        import_sap(data["sap_root"], folder)
    elif source == "hf":
        from whisper_moe.data.formats import HfColumns, convert_hf_dataset

        log.info("converting the Hugging Face dataset %s into %s", data["hf_dataset"], folder)
        convert_hf_dataset(data["hf_dataset"], folder, HfColumns.from_params(data), seed=params["seed"])
    else:
        from whisper_moe.data.formats import convert_nemo

        log.info("reading the NeMo manifests %s into %s", data["nemo_manifest"], folder)
        convert_nemo(data["nemo_manifest"], folder, seed=params["seed"])


def source_manifests(params: dict) -> Path:
    """Folder with raw train/dev/test.jsonl for the configured source (built if needed).

    A built corpus (demo, SAP import, converted dataset) is reused only when its stamp
    matches the current source and settings, so a folder built for one source never
    silently serves another.
    """
    data = params["data"]
    check_source(data)
    if data["source"] == "manifest":
        return Path(data["manifest_dir"])
    folder = corpus_folder(params)
    stamp = source_stamp(params)
    if is_built_from(folder, stamp):
        return folder
    build_corpus(params, folder)
    write_json_atomic(folder / artifacts.SOURCE_STAMP, stamp)
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
        manifest, artifacts.split_manifest(out_dir, split), artifacts.split_report(out_dir, split),
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
        manifest = artifacts.split_manifest(source, split)
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: missing; a data folder needs train/dev/test.jsonl")
        reports[split] = validate_one(params, manifest, out_dir, split=split, tokenizer=tokenizer)
        log.info("%s: kept %d, skipped %s", split, reports[split]["kept"], reports[split]["skipped"])
    write_json_atomic(out_dir / artifacts.DATA_REPORT, {"source": str(source), "splits": reports})
    return {split: str(artifacts.split_manifest(out_dir, split)) for split in SPLIT_NAMES} | {
        "report": str(out_dir / artifacts.DATA_REPORT)}
