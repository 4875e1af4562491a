"""The container images the components run in: the project's own, one tag per version.

`make images` builds <repo>:<version>-cpu and <repo>:<version>-cuda from docker/Dockerfile.
The repository and tag are read when the components are defined (compile time):
WHISPER_MOE_IMAGE_REPO (default ghcr.io/whisper-moe/whisper-moe) and
WHISPER_MOE_IMAGE_TAG (default: the version in pyproject.toml); `pipelines/compile.py
--image-repo/--image-tag` set them.
"""

import os
import tomllib
from importlib import metadata
from pathlib import Path

DEFAULT_IMAGE_REPO = "ghcr.io/whisper-moe/whisper-moe"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def project_version() -> str:
    """The version in pyproject.toml (the source of truth), else the installed one."""
    if PYPROJECT.exists():
        with open(PYPROJECT, "rb") as handle:
            return tomllib.load(handle)["project"]["version"]
    return metadata.version("whisper-moe")


IMAGE_REPO = os.environ.get("WHISPER_MOE_IMAGE_REPO") or DEFAULT_IMAGE_REPO
IMAGE_TAG = os.environ.get("WHISPER_MOE_IMAGE_TAG") or project_version()
CPU_IMAGE = f"{IMAGE_REPO}:{IMAGE_TAG}-cpu"  # data, clustering, gate pretraining, publishing
CUDA_IMAGE = f"{IMAGE_REPO}:{IMAGE_TAG}-cuda"  # embedding, expert pretraining, training, evaluation
