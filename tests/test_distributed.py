"""Data-parallel training under torchrun (2 gloo processes) equals one process with the
same global batch."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file


def write_params(params, path):
    path.write_text(yaml.safe_dump(params))
    return path


def torchrun_train(params_path, train_manifest, dev_manifest, out) -> subprocess.CompletedProcess:
    """`whisper-moe train` under torchrun with 2 gloo processes, one torch thread each."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "whisper_moe.cli", "train", "--params", str(params_path),
         "--train-manifest", str(train_manifest), "--dev-manifest", str(dev_manifest),
         "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True, text=True)


def test_two_gloo_processes_match_one_process(tmp_path, tiny_params, tiny_corpus):
    params = copy.deepcopy(tiny_params)
    params["model"]["lora"]["dropout"] = 0.0  # random streams differ per process count
    # float64: Adam turns float32 rounding of near-zero gradients into visible weight
    # differences; in float64 only the data-parallel logic itself can make a difference.
    params["model"]["dtype"] = "float64"
    params["routing"].update(mode="curriculum", soft_epochs=1, noise_std=0.0)
    params["train"].update(epochs=2, gradient_accumulation_steps=1)
    params["runtime"]["device"] = "cpu"
    common = ["--train-manifest", str(tiny_corpus / "train.jsonl"),
              "--dev-manifest", str(tiny_corpus / "dev.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    single = copy.deepcopy(params)
    single["train"]["batch_size"] = 2
    subprocess.run([sys.executable, "-m", "whisper_moe.cli", "train", "--params",
                    str(write_params(single, tmp_path / "single.yaml")), *common,
                    "--out", str(tmp_path / "single")], check=True, env=env, timeout=600)

    per_process = copy.deepcopy(params)
    per_process["train"]["batch_size"] = 1
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "whisper_moe.cli", "train", "--params",
         str(write_params(per_process, tmp_path / "ddp.yaml")), *common,
         "--out", str(tmp_path / "ddp")], env=env, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    assert_same_trained_weights(tmp_path / "single" / "checkpoint" / "model.safetensors",
                                tmp_path / "ddp" / "checkpoint" / "model.safetensors")
    # Only rank 0 wrote checkpoints and logs.
    assert (tmp_path / "ddp" / "train_log.jsonl").exists()


def test_data_that_does_not_divide_evenly_across_processes_still_trains(tmp_path, tiny_params,
                                                                        tiny_corpus):
    """6 utterances, 2 processes x batch 2: the epoch order is padded so no process waits forever."""
    params = copy.deepcopy(tiny_params)
    params["train"].update(epochs=1, batch_size=2, gradient_accumulation_steps=1)
    params["runtime"]["device"] = "cpu"
    result = torchrun_train(write_params(params, tmp_path / "ddp.yaml"), tiny_corpus / "train.jsonl",
                            tiny_corpus / "dev.jsonl", tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").exists()


def test_a_process_whose_micro_batch_is_unreadable_does_not_stall_the_others(tmp_path, tiny_params,
                                                                             tiny_corpus):
    """Audio that became unreadable after validation empties one process's micro-batch: that
    process runs a forward of weight zero, so the gradient all-reduce still completes."""
    import json
    import shutil

    from whisper_moe.data.validate import validate_manifest

    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    validate_manifest(data / "train.jsonl", data / "checked" / "train.jsonl",
                      data / "checked" / "train_report.json", max_skip_fraction=0.0, progress=False)
    first = json.loads((data / "checked" / "train.jsonl").read_text().splitlines()[0])
    audio = data / "checked" / first["audio_filepath"]
    audio.write_bytes(b"RIFF but no longer a wav")  # damaged after validation
    params = copy.deepcopy(tiny_params)
    params["train"].update(epochs=1, batch_size=1, gradient_accumulation_steps=1)
    params["runtime"]["device"] = "cpu"
    result = torchrun_train(write_params(params, tmp_path / "ddp.yaml"),
                            data / "checked" / "train.jsonl", tiny_corpus / "dev.jsonl",
                            tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").exists()


def assert_same_trained_weights(expected_path: Path, actual_path: Path) -> None:
    """Every tensor within 1e-5 relative error, and every one moved away from zero (B blocks
    start at zero): a comparison of two trainings, not of two untrained models."""

    expected, actual = load_file(expected_path), load_file(actual_path)
    assert expected.keys() == actual.keys()
    changed = 0
    for key, value in expected.items():
        relative_error = float((actual[key] - value).norm() / value.norm().clamp_min(1e-12))
        assert relative_error <= 1e-5, f"{key}: relative error {relative_error:.2e}"
        changed += int(value.abs().sum() > 0)
    assert changed == len(expected)
