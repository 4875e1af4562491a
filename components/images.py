"""The container images the components run in: the project's own, one tag per version.

`make images` builds <repo>:<version>-cpu and <repo>:<version>-cuda from docker/Dockerfile.
The repository and tag are read when the components are defined (compile time):
WHISPER_MOE_IMAGE_REPO (default ghcr.io/whisper-moe/whisper-moe) and
WHISPER_MOE_IMAGE_TAG (default: the version in pyproject.toml); `pipelines/compile.py
--image-repo/--image-tag` set them. WHISPER_MOE_CPU_IMAGE and WHISPER_MOE_CUDA_IMAGE name
one image each in full and win over both (`--cpu-image/--cuda-image`): CI compiles against
the exact images it built and pushed, by digest (repo@sha256:...), so a scheduled run never
pulls an image built from other code.
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
# data, clustering, gate pretraining, publishing
CPU_IMAGE = os.environ.get("WHISPER_MOE_CPU_IMAGE") or f"{IMAGE_REPO}:{IMAGE_TAG}-cpu"
# embedding, expert pretraining, training, evaluation
CUDA_IMAGE = os.environ.get("WHISPER_MOE_CUDA_IMAGE") or f"{IMAGE_REPO}:{IMAGE_TAG}-cuda"
