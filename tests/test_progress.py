"""Progress off a terminal: periodic log lines with step, rate, fields, elapsed and ETA."""

from __future__ import annotations

import logging

from whisper_moe.progress import Progress


def test_log_lines_off_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="whisper_moe.progress")
    with Progress("train", total=4, unit="step", rate_unit="utt", interval_s=0.0,
                  terminal=False) as progress:
        for step in range(4):
            progress.update(1, items=2, loss=1.5 - step * 0.25, lr=1e-3)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4
    assert lines[1].startswith("train: step 2/4 (50%), ")
    assert "utt/s" in lines[1] and "loss 1.2500" in lines[1] and "lr 0.001" in lines[1]
    assert "elapsed 0:00:00" in lines[1] and "ETA " in lines[1]


def test_interval_limits_lines_but_the_last_step_is_always_logged(caplog):
    caplog.set_level(logging.INFO, logger="whisper_moe.progress")
    with Progress("embed", total=50, unit="utt", interval_s=3600.0, terminal=False) as progress:
        for _ in range(50):
            progress.update(1)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [lines[-1]] and lines[-1].startswith("embed: utt 50/50 (100%)")


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="whisper_moe.progress")
    with Progress("evaluate", total=3, interval_s=0.0, terminal=True) as progress:
        assert progress.bar is not None
        progress.update(3, loss=0.5)
    assert not caplog.records
