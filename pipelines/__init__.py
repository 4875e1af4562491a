"""The two Kubeflow pipelines (pretrained_moe, regular_moe), their placement and compiler.

Run from the repository root: `python pipelines/compile.py` writes pipelines/compiled/.
The pipelines' parameter defaults are read from params.yaml at compile time
(WHISPER_MOE_PARAMS names another file), so the run form in the UI starts from the
repository's configuration.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def params_path() -> Path:
    """The params.yaml the pipeline defaults come from."""
    return Path(os.environ.get("WHISPER_MOE_PARAMS") or REPO_ROOT / "params.yaml")
