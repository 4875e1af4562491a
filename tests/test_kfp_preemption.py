"""A pipeline training task that is killed and retried resumes from its checkpoint volume.

The train-moe component body runs in its own process, as in the pod, with the checkpoint
volume (checkpoint_root) and run id a retry gets again. It is stopped with SIGTERM (a
preempted pod) and with SIGKILL (a node lost mid-epoch), run again each time, and must end
with weights bit-identical to an attempt that was never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTEMPT = textwrap.dedent("""
    import logging
    import sys
    from kfp.dsl import Artifact, Dataset, Metrics, Model
    from components import train_moe

    logging.basicConfig(level=logging.INFO)
    params_yaml, dataset, out, checkpoint_root, run_id = sys.argv[1:6]
    train_moe.python_func(
        params_yaml=open(params_yaml).read(), dataset=Dataset(uri=dataset),
        checkpoint=Model(uri=out + "/checkpoint"), training_log=Artifact(uri=out + "/training_log"),
        training_metrics=Metrics(uri=out + "/metrics"), run_id=run_id,
        checkpoint_root=checkpoint_root)
""")


def training_params(tiny_params, tmp_path) -> Path:
    """Eight short epochs, a checkpoint after each, dropout and routing noise: resuming must restore
    every random generator and the data order to end bit-identical."""
    params = tiny_params
    params["train"].update(epochs=8, save_every_n_epochs=1, keep_checkpoints=2)
    params["routing"].update(mode="curriculum", soft_epochs=1, noise_std=0.1)
    params["model"]["lora"]["dropout"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def start_attempt(params: Path, dataset: Path, out: Path, checkpoint_root: Path, run_id: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", ATTEMPT, str(params), str(dataset), str(out),
                             str(checkpoint_root), run_id], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, process, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the attempt ended early:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the attempt"
        time.sleep(0.05)


def checkpoints(work_dir: Path) -> list[str]:
    folder = work_dir / "checkpoints"
    from whisper_moe.training.checkpointing import MANIFEST_NAME

    return sorted(p.name for p in folder.glob("step-*") if (p / MANIFEST_NAME).exists()) \
        if folder.is_dir() else []


def finish(process, timeout_s: float = 600) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout_s)
    return process.returncode, output


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "checkpoint" / "model.safetensors")


@pytest.mark.slow
def test_a_killed_train_task_resumes_on_retry_and_ends_bit_identical(tmp_path, tiny_params,
                                                                      tiny_corpus):
    params = training_params(tiny_params, tmp_path)
    volume = tmp_path / "volume"  # the checkpoint PVC, as mounted in every attempt
    volume.mkdir()
    run_id = "run-7f3a"
    work_dir = volume / run_id / "train-moe"

    # attempt 1: the pod is preempted (SIGTERM) after its first epoch
    first = start_attempt(params, tiny_corpus, tmp_path / "attempt1", volume, run_id)
    wait_for(lambda: checkpoints(work_dir), first)
    first.send_signal(signal.SIGTERM)
    code, output = finish(first)
    # the task fails (Argo retries it) after saving: not killed by the signal itself
    assert code == 1 and "TrainingInterrupted" in output, output[-3000:]
    saved = checkpoints(work_dir)
    assert saved, "SIGTERM must leave a checkpoint on the volume"

    # attempt 2 (the retry): resumes, and its node dies (SIGKILL) after one more checkpoint
    second = start_attempt(params, tiny_corpus, tmp_path / "attempt2", volume, run_id)
    wait_for(lambda: checkpoints(work_dir) and checkpoints(work_dir)[-1] > saved[-1], second)
    second.kill()
    assert finish(second)[0] == -signal.SIGKILL

    # attempt 3: resumes from the newest checkpoint and finishes
    third = start_attempt(params, tiny_corpus, tmp_path / "attempt3", volume, run_id)
    code, output = finish(third)
    assert code == 0, output[-3000:]
    assert f"resumed from {work_dir}/checkpoints/step-" in output, output[-3000:]
    assert not (volume / run_id).exists(), "a finished task leaves nothing on the volume"
    log_dir = tmp_path / "attempt3" / "training_log"
    assert (log_dir / "train_log.jsonl").exists() and not (log_dir / "checkpoints").exists()

    # an attempt never stopped, under another run id on the same volume
    whole = start_attempt(params, tiny_corpus, tmp_path / "whole", volume, "run-other")
    code, output = finish(whole)
    assert code == 0, output[-3000:]

    resumed, uninterrupted = weights(tmp_path / "attempt3"), weights(tmp_path / "whole")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert resumed[name].equal(tensor), f"{name} differs after the retries"
    resumed_log = [json.loads(line) for line in open(log_dir / "train_log.jsonl")]
    whole_log = [json.loads(line) for line in open(tmp_path / "whole" / "training_log" / "train_log.jsonl")]
    loss = [(h["step"], h["ce_loss"]) for h in whole_log if "ce_loss" in h]
    assert [(h["step"], h["ce_loss"]) for h in resumed_log if "ce_loss" in h] == loss


def test_without_a_checkpoint_volume_the_task_trains_in_its_own_folder(tmp_path):
    from whisper_moe_kfp.runtime import durable_work_dir

    assert durable_work_dir(str(tmp_path / "not-mounted"), "run-1", "train-moe") is None
    assert durable_work_dir(str(tmp_path), "{{$.pipeline_job_uuid}}", "train-moe") is None
    assert durable_work_dir(str(tmp_path), "run/1", "train-moe") == tmp_path / "run-1" / "train-moe"


def test_the_pipelines_mount_the_volume_where_the_training_components_look():
    import inspect

    from components import pretrain_experts, train_moe
    from pipelines.placement import CHECKPOINT_ROOT, RESUMABLE

    for component in (train_moe, pretrain_experts):
        default = inspect.signature(component.python_func).parameters["checkpoint_root"].default
        assert default == CHECKPOINT_ROOT
    assert RESUMABLE == {"train", "pretrain_experts"}
    for name in ("pretrained_moe", "regular_moe"):
        pipeline, platform = yaml.safe_load_all((REPO_ROOT / "pipelines" / "compiled" / f"{name}.yaml")
                                                .read_text())
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        mounted = {name for name, config in executors.items() if "pvcMount" in config}
        assert mounted == {"exec-train-moe", "exec-pretrain-experts"} & set(pipeline["deploymentSpec"]["executors"])
        for executor in mounted:
            assert executors[executor]["pvcMount"] == [{
                "constant": "whisper-moe-checkpoints", "mountPath": CHECKPOINT_ROOT,
                "pvcNameParameter": {"runtimeValue": {"constant": "whisper-moe-checkpoints"}}}]
        tasks = pipeline["root"]["dag"]["tasks"]
        run_id = tasks["train-moe"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"]
        assert run_id == "{{$.pipeline_job_uuid}}"
