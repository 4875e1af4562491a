"""Preemption safety: stop anywhere, resume any number of times, end with identical results."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from whisper_moe.stages import train
from whisper_moe.training import checkpointing
from whisper_moe.training.runtime import TrainingInterrupted
from whisper_moe.training.trainer import Trainer


def resume_params(tiny_params):
    params = copy.deepcopy(tiny_params)
    params["train"].update(epochs=2, batch_size=2, gradient_accumulation_steps=2,
                           save_every_n_epochs=1, keep_checkpoints=3)
    params["routing"].update(mode="curriculum", soft_epochs=1, noise_std=0.1)
    params["model"]["lora"]["dropout"] = 0.1
    return params


def run_training(params, corpus, out_dir, resume=False):
    return train.run(params, corpus / "train.jsonl", corpus / "dev.jsonl", out_dir, resume=resume)


def sigterm_at_micro_batches(monkeypatch, stop_at: set[int]):
    """Send a real SIGTERM to this process while the given micro-batches run."""
    original = Trainer.micro_step
    calls = {"n": 0}

    def micro_step(self, batch, mode, temperature):
        calls["n"] += 1
        if calls["n"] in stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, mode, temperature)

    monkeypatch.setattr(Trainer, "micro_step", micro_step)


def final_state(out_dir):
    weights = load_file(out_dir / "checkpoint" / "model.safetensors")
    history = [json.loads(line) for line in open(out_dir / "train_log.jsonl")]
    losses = [(h["step"], h["ce_loss"], h["lb_loss"]) for h in history if "ce_loss" in h]
    dev = [h["dev_loss"] for h in history if "dev_loss" in h]
    return weights, losses, dev


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, tiny_params, tiny_corpus,
                                                          monkeypatch):
    params = resume_params(tiny_params)
    run_training(params, tiny_corpus, tmp_path / "straight")
    expected_weights, expected_losses, expected_dev = final_state(tmp_path / "straight")
    assert len(expected_losses) >= 4

    # 6 utterances, batch 2, accumulation 2: 3 micro-batches (2 steps) per epoch.
    # Stop 1: during accumulation, mid-epoch 1. Stop 2: on the last, partial group of
    # epoch 1 (before its end-of-epoch eval). Stop 3: mid-epoch 2, as a group completes.
    out = tmp_path / "stopped"
    for stop_at, resume in (({1}, False), ({1}, True), ({2}, True)):
        sigterm_at_micro_batches(monkeypatch, stop_at)
        with pytest.raises(TrainingInterrupted) as stopped:
            run_training(params, tiny_corpus, out, resume=resume)
        assert "--resume" in str(stopped.value)
        monkeypatch.undo()
    run_training(params, tiny_corpus, out, resume=True)

    weights, losses, dev = final_state(out)
    assert losses == expected_losses
    assert dev == expected_dev
    assert weights.keys() == expected_weights.keys()
    for key, value in expected_weights.items():
        assert torch.equal(weights[key], value), key


def test_a_resumed_runs_training_time_adds_the_time_before_the_stop(tmp_path, tiny_params,
                                                                   tiny_corpus, monkeypatch):
    """train_time_s counts every run that led to the model: the checkpoint carries the
    seconds spent before the stop, and the resumed run adds its own."""
    params = resume_params(tiny_params)
    out = tmp_path / "run"
    original = Trainer.micro_step
    slow_seconds = 3.0
    calls = {"n": 0}

    def slow_then_stopped(self, batch, mode, temperature):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(slow_seconds)  # time that only the checkpoint can remember
        if calls["n"] == 3:  # after epoch 1 (3 micro-batches) saved its checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, mode, temperature)

    monkeypatch.setattr(Trainer, "micro_step", slow_then_stopped)
    with pytest.raises(TrainingInterrupted):
        run_training(params, tiny_corpus, out)
    monkeypatch.undo()
    newest = checkpointing.latest_valid_checkpoint(out / "checkpoints")
    before_stop = json.loads((newest / "trainer_state.json").read_text())["training_seconds"]
    assert before_stop >= slow_seconds

    started = time.perf_counter()
    metrics = run_training(params, tiny_corpus, out, resume=True)
    resumed_wall = time.perf_counter() - started
    assert before_stop < metrics["train_time_s"] <= before_stop + resumed_wall


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpointing.write_checkpoint(root, step, {"w": torch.full((4,), float(step))},
                                       {"x": torch.zeros(1)}, {"step": step}, keep=5)
    newest = root / "step-00000002" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:-3])
    chosen = checkpointing.latest_valid_checkpoint(root)
    assert chosen.name == "step-00000001"
    assert "damaged" in caplog.text
    tensors, _, state = checkpointing.read_checkpoint(chosen)
    assert state["step"] == 1 and float(tensors["w"][0]) == 1.0


def test_keeps_only_the_last_k_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(5):
        checkpointing.write_checkpoint(root, step, {"w": torch.zeros(2)}, {}, {"step": step}, keep=2)
    assert [p.name for p in checkpointing.list_checkpoints(root)] == ["step-00000003", "step-00000004"]


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from whisper_moe.training.checkpointing import write_checkpoint
    root = Path(sys.argv[1])
    step = 0
    big = torch.randn(2_000_000)
    while True:
        step += 1
        write_checkpoint(root, step, {"w": big + step}, {"s": torch.tensor(step)}, {"step": step}, keep=3)
        print(step, flush=True)
""")


def test_kill_9_during_checkpoint_writes_never_leaves_a_loadable_damaged_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for delay_s in (0.3, 0.55, 0.8, 1.1):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(root)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay_s + 1.5)  # interpreter start, then some writes
        process.send_signal(signal.SIGKILL)
        process.wait()
        chosen = checkpointing.latest_valid_checkpoint(root)
        for folder in checkpointing.list_checkpoints(root):
            # Every folder with the final name verifies: renames happen only after fsync.
            assert checkpointing.verify_checkpoint(folder) is None, folder
        if chosen is not None:
            tensors, torch_state, state = checkpointing.read_checkpoint(chosen)
            assert tensors["w"].shape == (2_000_000,)
            assert state["step"] == int(chosen.name.split("-")[1]) == int(torch_state["s"])
