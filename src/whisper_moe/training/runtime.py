"""Device, precision, seeding and signal handling: the parts of a run that are not the model."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from whisper_moe.errors import WhisperMoeError

log = logging.getLogger("whisper_moe")


class GPUUnavailable(WhisperMoeError, RuntimeError):
    """A GPU (or a GPU feature such as bf16) was requested and is not there."""


def resolve_device(requested: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error, not a fallback."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailable(
            f"device {requested!r} was requested but no CUDA GPU is visible "
            "(check `nvidia-smi`, CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit), "
            "or pass --device cpu"
        )
    return device


def mixed_precision(device: torch.device, precision: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether fp16 loss scaling is needed) for `runtime.precision`.

    fp32: no autocast. mixed (the seed's `--fp16`): bf16 where the device supports it,
    fp16 with a gradient scaler on older GPUs. bf16 / fp16: that type; fp16 always
    with a scaler, because its gradients underflow without one.
    """
    if precision == "fp32":
        return None, False
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if precision == "mixed":
        return (torch.bfloat16, False) if bf16_ok else (torch.float16, True)
    if precision == "bf16":
        if not bf16_ok:
            raise GPUUnavailable(f"runtime.precision='bf16' but {torch.cuda.get_device_name(device)} "
                                 "has no bf16; use runtime.precision=mixed or fp16")
        return torch.bfloat16, False
    if precision == "fp16":
        return torch.float16, True
    raise ValueError(f"runtime.precision={precision!r}: expected fp32 | mixed | bf16 | fp16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator a training step touches, for an exact resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def json_rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def restore_rng_state(torch_state: dict, json_state: dict) -> None:
    torch.set_rng_state(torch_state["torch"])
    if "cuda" in torch_state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(torch_state["cuda"])
    python_state = json_state["python"]
    random.setstate((python_state[1], tuple(python_state[0]), python_state[2]))
    numpy_state = json_state["numpy"]
    np.random.set_state((numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:]))


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop checks it at each optimizer-step boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str) -> None:
        self.signal_name = name

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not in the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:  # second signal: leave now
            sys.exit(128 + signum)
        log.warning("%s received: saving a checkpoint at the next step boundary", name)
        self.signal_name = name

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class TrainingInterrupted(WhisperMoeError):
    """Training stopped on request after saving a checkpoint that `--resume` continues."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a stopped job

    def __init__(self, checkpoint: Path, signal_name: str) -> None:
        super().__init__(
            f"training stopped by {signal_name}; checkpoint saved to {checkpoint}. "
            "Run the same command with --resume to continue."
        )
        self.checkpoint = checkpoint


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced after set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Console plus an optional log file (--log-file), same format on both."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(getattr(h, "_whisper_moe", False) for h in root.handlers):
        console = CurrentStderrHandler()
        console.setFormatter(formatter)
        console._whisper_moe = True
        root.addHandler(console)
    if log_file:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
            handler = logging.FileHandler(path)
            handler.setFormatter(formatter)
            root.addHandler(handler)
    if not sys.stderr.isatty():  # bars of libraries we call would fill pod logs with \r lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        with contextlib.suppress(ImportError):
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()


def init_distributed(params: dict) -> tuple[int, int]:
    """(rank, world size); under torchrun join the process group and pin this process's device.

    NCCL on GPUs, gloo on CPU. Every front door that trains (CLI, Kubeflow task,
    Trainer v2 TrainJob) calls this one function, so they set up data parallelism the same way.
    """
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and params["runtime"]["device"] != "cpu"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        params["runtime"]["device"] = f"cuda:{local_rank}"
    else:
        params["runtime"]["device"] = "cpu"
    return dist.get_rank(), world_size
