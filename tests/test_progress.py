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


def test_a_train_run_logging_to_a_file_shows_progress_and_live_metrics(tmp_path, tiny_params,
                                                                       tiny_corpus):
    """stderr to a file (as in a pod): progress lines per step; DVCLive files as it trains."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    out = tmp_path / "train"
    env = {**os.environ, "WHISPER_MOE_PROGRESS_INTERVAL_S": "0", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.log", "w") as stderr:
        subprocess.run([sys.executable, "-m", "whisper_moe.cli", "train", "--params", str(params),
                        "--train-manifest", str(tiny_corpus / "train.jsonl"),
                        "--dev-manifest", str(tiny_corpus / "dev.jsonl"), "--out", str(out),
                        "--epochs", "1"], stderr=stderr, env=env, check=True, timeout=600)
    lines = [line for line in (tmp_path / "stderr.log").read_text().splitlines()
             if "whisper_moe.progress" in line and "train epoch 1/1: batch" in line]
    assert lines, (tmp_path / "stderr.log").read_text()[-2000:]
    last = lines[-1]
    for field in ("utt/s", "loss ", "lr ", "gate entropy ", "dispatch [", "elapsed ", "ETA "):
        assert field in last, (field, last)
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["step"] >= 1
    assert {"ce_loss", "lb_loss", "lr", "gate_entropy", "dispatch_expert_0"} <= set(summary["train"])
    assert "dev_loss" in summary["dev"]
    assert (out / "live" / "plots" / "metrics" / "train" / "ce_loss.tsv").exists()
