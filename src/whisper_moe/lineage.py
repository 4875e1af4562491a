"""Lineage of a trained model: which code, image, data, base model and settings made it.

Written as `lineage.json` into every published model folder so that a person holding
only the folder can find the commit to check out, the data revision to `dvc pull` and
the exact configuration to re-run. Values that cannot be known where the code runs
(an image digest outside a container, a commit outside a git checkout) are null,
never guessed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from whisper_moe.fsio import sha256_of, write_json_atomic

LINEAGE_FILE = "lineage.json"
# Set by the image build (docker/Dockerfile: the commit it was built from; the environment
# wins over a git checkout) and by the compiled pipeline on every task (pipelines/compile.py:
# the image reference the task runs, pinned by digest when compiled against repo@sha256:...).
COMMIT_ENV = "WHISPER_MOE_GIT_COMMIT"
IMAGE_ENV = "WHISPER_MOE_IMAGE"
SOURCE_DIR = Path(__file__).resolve().parent


def code_commit(source_dir: Path = SOURCE_DIR) -> dict:
    """{"commit", "dirty"} of the code that runs: the environment's value, else git's."""
    if os.environ.get(COMMIT_ENV):  # '<sha>' or '<sha>-dirty' (mk/images.mk)
        commit, dirty, _ = os.environ[COMMIT_ENV].partition("-dirty")
        return {"commit": commit, "dirty": bool(dirty), "from": COMMIT_ENV}
    try:
        commit = git(source_dir, "rev-parse", "HEAD")
        dirty = bool(git(source_dir, "status", "--porcelain", "--untracked-files=no", "--", "."))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "from": None}
    return {"commit": commit, "dirty": dirty, "from": "git"}


def git(folder: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                            timeout=30, check=True)
    return result.stdout.strip()


def image() -> dict:
    """{"image", "image_digest"} of the container the code runs in, as the task's environment
    names it: the reference, and its sha256 digest when the reference is pinned by one (a tag
    can be moved to other bytes later, a digest cannot). Both null outside such a container."""
    reference = os.environ.get(IMAGE_ENV) or None
    return {"image": reference, "image_digest": digest_of(reference)}


def digest_of(reference: str | None) -> str | None:
    """'sha256:<hex>' of an image reference 'repo[:tag]@sha256:<hex>', else None."""
    if not reference or "@" not in reference:
        return None
    digest = reference.rsplit("@", 1)[1]
    return digest if digest.startswith("sha256:") else None


def folder_sha256(folder: str | Path) -> str:
    """One hash of a folder's contents (relative paths and file bytes), independent of where it lies."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def build(params: dict, data: dict, run_id: str | None = None, pipeline: str | None = None,
          base_model: str | None = None) -> dict:
    """The lineage record of a model trained with `params` on `data` (where the data came
    from, with its resolved revision: {"kind": "dvc", "repo", "rev", "commit", "path", "md5"},
    {"kind": "s3", "uri", "sha256"}, ...)."""
    return {
        "code": code_commit(),
        **image(),
        "data": data,
        "base_model": base_model or params["model"]["base_model"],
        "pipeline": pipeline,
        "run_id": run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": params,
    }


def write(folder: str | Path, lineage: dict) -> Path:
    return write_json_atomic(Path(folder) / LINEAGE_FILE, lineage)


def manifests_data(data_dir: str | Path, source: str) -> dict:
    """The data of a one-machine run: the params' source and the sha256 of each split's manifest."""
    manifests = {split: sha256_of(Path(data_dir) / f"{split}.jsonl") for split in ("train", "dev", "test")
                 if (Path(data_dir) / f"{split}.jsonl").exists()}
    return {"kind": "params", "source": source, "path": str(data_dir), "manifests_sha256": manifests}


def dvc_stage_data(lock_path: str | Path, out_path: str, source: str | None = None) -> dict:
    """The data folder as `dvc repro` recorded it in dvc.lock: its stage and DVC md5."""
    import yaml

    lock = yaml.safe_load(Path(lock_path).read_text()) or {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if out.get("path") == out_path:
                return {"kind": "dvc-stage", "stage": stage, "path": out_path, "md5": out.get("md5"),
                        "source": source}
    raise KeyError(f"{lock_path}: no stage has the output {out_path!r}; run `dvc repro` first")
