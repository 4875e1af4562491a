"""Turn the failures users hit first into one clear line and an exit code."""

from __future__ import annotations

import os


def explain(error: BaseException) -> tuple[str, int | None]:
    """(message, exit code) for known failures; code None means re-raise (a bug)."""
    if os.environ.get("WHISPER_MOE_DEBUG"):
        return "", None
    name = type(error).__name__
    text = str(error)
    if name == "TrainingInterrupted":
        return text, 143
    if "out of memory" in text.lower() and ("cuda" in text.lower() or name == "OutOfMemoryError"):
        return ("out of GPU memory: reduce --asr-batch-size and increase "
                "--gradient-accumulation-steps to keep the effective batch size "
                f"(e.g. --asr-batch-size 1 --gradient-accumulation-steps 16). ({text.splitlines()[0]})"), 3
    known = {"GPUUnavailable", "BaseModelNotFound", "ConfigError", "DataQualityError",
             "ManifestError", "NonFiniteLoss", "StorageError", "StageUnavailable", "FileNotFoundError",
             "AudioError", "ClusteringError", "TrainingInterrupted", "KfpCommandError"}
    if name in known:
        return f"{name}: {text}", 2
    if isinstance(error, (KeyError, ValueError)) and name in {"KeyError", "ValueError"}:
        return f"error: {text}", 2
    return "", None
