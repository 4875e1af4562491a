"""What several stages share: selecting the rows a mode trains on, tokens, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

from whisper_moe.data.manifest import read_manifest, stratified_sample, write_text_atomic


def mode_rows(params: dict, manifest: str | Path, split: str) -> list[dict]:
    """Rows of a manifest for this run: --data-percent on train, quick-mode caps on all."""
    rows = read_manifest(manifest)
    if split == "train" and float(params["data"]["data_percent"]) < 100:
        rows = stratified_sample(rows, float(params["data"]["data_percent"]), params["seed"])
    if params["mode"] == "quick":
        cap_key = "max_train_utterances" if split == "train" else "max_eval_utterances"
        cap = int(params["quick"][cap_key])
        if len(rows) > cap:
            rows = stratified_sample(rows, 100.0 * cap / len(rows), params["seed"])[:cap]
    return rows


def effective_epochs(params: dict) -> int:
    return int(params["quick"]["epochs"] if params["mode"] == "quick" else params["train"]["epochs"])


def special_ids(tokenizer) -> dict[str, int]:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    return {"eot": eot, "pad": pad}


def write_json(path: str | Path, data) -> Path:
    """Stage outputs are written atomically, like manifests (keys in the order given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return path
