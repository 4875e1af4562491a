"""One exception hierarchy for failures a user can fix, each with its exit code and hint.

Every error the front doors (CLI, Kubeflow task, k8s job) should turn into one clear
line derives from `WhisperMoeError`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class WhisperMoeError(Exception):
    """A failure with a known cause: the message names what is wrong, `hint` the fix."""

    exit_code = 2

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}. {self.hint}" if self.hint else message


class ConfigError(WhisperMoeError, ValueError):
    """A parameter is unknown, of the wrong type or out of range; names key and value."""


OOM_HINT = ("reduce --asr-batch-size and increase --gradient-accumulation-steps to keep the "
            "effective batch size (e.g. --asr-batch-size 1 --gradient-accumulation-steps 16)")


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or ("out of memory" in text and "cuda" in text)


def explain(error: BaseException) -> tuple[str, int | None]:
    """(one-line message, exit code) for failures users can fix; code None means a bug.

    WHISPER_MOE_DEBUG=1 re-raises everything, for the traceback.
    """
    if os.environ.get("WHISPER_MOE_DEBUG"):
        return "", None
    if isinstance(error, WhisperMoeError):
        return f"{type(error).__name__}: {error}", error.exit_code
    if is_out_of_memory(error):
        return f"out of GPU memory: {OOM_HINT}. ({str(error).splitlines()[0]})", 3
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
        return f"{type(error).__name__}: {error}", 2
    if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
        return f"disk full: {error}. Free space (or point --out elsewhere) and rerun with --resume", 2
    return "", None
