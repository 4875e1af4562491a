"""Live training metrics in DVCLive's format, written while the run trains.

`dvc exp show`, `dvc plots show` and DVC Studio read the folder as it grows, so a
days-long run can be watched from its first steps (DVCLive is the DVC project's own
logger; the `dvc` tool itself is not imported). Without dvclive installed, nothing
is written and training goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

log = logging.getLogger("whisper_moe.train")

# train_log.jsonl fields shown live, per optimizer step
STEP_KEYS = ("ce_loss", "lb_loss", "z_loss", "lr", "gate_entropy", "grad_norm", "temperature",
             "utterances_per_s")


class LiveMetrics:
    """Step metrics under `train/`, epoch metrics under `dev/`, in one DVCLive folder."""

    def __init__(self, folder: str | Path, resume: bool, enabled: bool = True) -> None:
        self.live = None
        if not enabled:
            return
        try:
            from dvclive import Live
        except ImportError:
            log.info("dvclive is not installed: no live metrics (train_log.jsonl is still written)")
            return
        try:
            self.live = Live(dir=str(folder), resume=resume, report=None, save_dvc_exp=False,
                             dvcyaml=False)
        except Exception as error:  # a logger must never stop a run (e.g. a git repo without commits)
            log.warning("live metrics off: dvclive could not start (%s)", error)

    def log(self, step: int, prefix: str, record: dict, keys: tuple[str, ...] | None = None) -> None:
        """Write the finite numbers of `record` (only `keys` when given) at `step`."""
        if self.live is None:
            return
        try:
            self.live.step = step
            for key, value in record.items():
                if keys is not None and key not in keys:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    self.live.log_metric(f"{prefix}/{key}", float(value))
            self.live.make_summary()
            self.live.sync()
        except Exception as error:  # e.g. disk full: the run goes on, train_log.jsonl has it all
            log.warning("live metrics off from step %d: %s", step, error)
            self.live = None

    def step(self, step: int, record: dict) -> None:
        self.log(step, "train", record, STEP_KEYS)
        dispatch = record.get("dispatch")
        if self.live is not None and isinstance(dispatch, (list, tuple)):
            self.log(step, "train", {f"dispatch_expert_{i}": count for i, count in enumerate(dispatch)})

    def epoch(self, step: int, record: dict) -> None:
        self.log(step, "dev", record)

    def close(self) -> None:
        if self.live is not None:
            try:
                self.live.end()
            except Exception as error:
                log.warning("live metrics: closing failed (%s)", error)
            self.live = None
