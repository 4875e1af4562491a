"""Progress that shows everywhere: a bar on a terminal, log lines in pods and CI logs.

tqdm switches itself off when stderr is not a terminal, which is where long runs live
(Kubeflow pods, CI jobs, `dvc repro > log`): a days-long run would show one line per
epoch. There `Progress` logs one line every `interval_s` seconds instead, with the
step, the rate, the caller's fields (loss, learning rate, ...), elapsed time and ETA.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger("whisper_moe.progress")

DEFAULT_INTERVAL_S = 30.0


def log_interval_s() -> float:
    """Seconds between progress lines off a terminal (WHISPER_MOE_PROGRESS_INTERVAL_S)."""
    value = os.environ.get("WHISPER_MOE_PROGRESS_INTERVAL_S")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def stderr_is_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_field(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_field(item) for item in value) + "]"
    return str(value)


class Progress:
    """Count work done; a tqdm bar on a terminal, periodic log lines elsewhere.

    `unit` names what `update` counts (steps, utterances); `rate_unit`, when given,
    names what `update(items=...)` counts for the rate (utterances per second while
    the total is in steps).
    """

    def __init__(self, desc: str, total: int | None, initial: int = 0, unit: str = "step",
                 rate_unit: str | None = None, interval_s: float | None = None,
                 enabled: bool = True, terminal: bool | None = None) -> None:
        self.desc, self.total, self.done, self.unit = desc, total, initial, unit
        self.rate_unit = rate_unit or unit
        self.interval_s = log_interval_s() if interval_s is None else interval_s
        self.fields: dict = {}
        self.started = self.last_logged = time.monotonic()
        self.initial = initial
        self.items_since_start = 0
        self.enabled = enabled
        terminal = stderr_is_terminal() if terminal is None else terminal
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)
                    if enabled and terminal else None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, items: int | None = None, **fields) -> None:
        """n more units done; `items` for the rate (default n); fields shown beside."""
        self.done += n
        self.items_since_start += n if items is None else items
        self.fields.update({key: value for key, value in fields.items() if value is not None})
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix({key: format_field(value) for key, value in self.fields.items()},
                                     refresh=False)
            return
        now = time.monotonic()
        if now - self.last_logged >= self.interval_s or self.finished():
            self.last_logged = now
            log.info("%s", self.line(now))

    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def line(self, now: float | None = None) -> str:
        """'train: step 12/48 (25%), 3.41 utt/s, loss 1.2345, elapsed 0:01:02, ETA 0:03:05'."""
        elapsed = (now or time.monotonic()) - self.started
        rate = self.items_since_start / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.unit} {self.done}"
                 + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.2f} {self.rate_unit}/s")
        parts.extend(f"{key} {format_field(value)}" for key, value in self.fields.items())
        parts.append(f"elapsed {format_duration(elapsed)}")
        units_per_s = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        if self.total and units_per_s > 0:
            parts.append(f"ETA {format_duration((self.total - self.done) / units_per_s)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def track(iterable, desc: str, total: int | None = None, unit: str = "item",
          enabled: bool = True):
    """Yield from iterable while counting it with a Progress (bar or log lines)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(desc, total=total, unit=unit, enabled=enabled) as progress:
        for item in iterable:
            yield item
            progress.update(1)
