"""The real dvc.yaml: `dvc repro` of the regular pipeline, then nothing to do, then
`dvc exp run -S train.lr=...` re-runs exactly the stages that read train.lr.

Runs in a throwaway git + DVC copy of the project's dvc.yaml, params.yaml and code
(the stages' code dependencies), with params.yaml pointed at the tiny random Whisper
and the tiny corpus from conftest.py, in quick mode for one epoch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")
STAGE_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dvc") is None,
                                reason="dvc is not installed (pip install 'dvc[s3]')")


def tiny_overrides(tiny_base_dir: Path, tiny_corpus: Path) -> dict:
    """params.yaml edits: the test model and corpus, one quick epoch on CPU."""
    return {
        "mode": "quick",
        "data": {"source": "manifest", "manifest_dir": str(tiny_corpus)},
        "model": {"base_model": str(tiny_base_dir), "lora": {"rank": 2}, "gate_hidden": 8},
        "routing": {"mode": "soft", "noise_std": 0.0},
        "train": {"batch_size": 4, "gradient_accumulation_steps": 1, "lr": 0.005, "gate_lr": 0.005},
        "runtime": {"device": "cpu"},
        "quick": {"epochs": 1, "max_train_utterances": 8, "max_eval_utterances": 4},
        "evaluate": {"batch_size": 4, "max_new_tokens": 4},
    }


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def run(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=STAGE_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def dvc(*args: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, env, check)


def stages_run(output: str) -> list[str]:
    """Names of the stages `dvc repro` / `dvc exp run` executed, in order."""
    prefix = "Running stage '"
    return [line.split("'")[1] for line in output.splitlines() if line.startswith(prefix)]


@pytest.fixture
def project(tmp_path, tiny_base_dir, tiny_corpus):
    """A git + DVC repository holding the project's pipeline files and code."""
    root = tmp_path / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "src", root / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params_path.write_text(yaml.safe_dump(merge(params, tiny_overrides(tiny_base_dir, tiny_corpus)),
                                          sort_keys=False))
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update({
        # the stages call `whisper-moe` and `python`: the ones of this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "WHISPER_MOE_CACHE": str(tmp_path / "model-cache"),
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    run(["git", "init", "-q"], root, env)
    dvc("init", "-q", cwd=root, env=env)
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", root / ".dvc" / "plots")  # plot templates
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "the project"], root, env)  # as a user's repository is
    return root, env


@pytest.mark.slow
def test_regular_pipeline_repro_is_incremental(project):
    root, env = project
    first = dvc("repro", "regular_evaluate", cwd=root, env=env)
    assert stages_run(first.stdout) == ["data", "regular_train", "regular_evaluate"]
    metrics = json.loads((root / "dvc_runs/regular/evaluate/metrics.json").read_text())
    assert {"moe", "base"} <= set(metrics) and "per_group" in metrics["moe"]
    assert (root / "dvc_runs/regular/train/checkpoint/model.safetensors").exists()
    assert json.loads((root / "dvc_runs/regular/train/loss_curve.json").read_text())

    shown = json.loads(dvc("metrics", "show", "--json", cwd=root, env=env).stdout)
    evaluated = shown[""]["data"]["dvc_runs/regular/evaluate/metrics.json"]["data"]
    assert evaluated["moe"]["wer"] == metrics["moe"]["wer"]
    assert set(evaluated["moe"]["per_group"]) == {"en-us", "en-gb-scotland", "en-029"}
    live = shown[""]["data"]["dvc_runs/regular/train/live/metrics.json"]["data"]
    assert live["train"]["ce_loss"] > 0 and live["step"] >= 1
    experiments = dvc("exp", "show", "--json", cwd=root, env=env).stdout
    assert "dvc_runs/regular/train/live/metrics.json" in experiments and "ce_loss" in experiments
    dvc("plots", "show", "-o", str(root / "plots-html"), cwd=root, env=env)
    assert (root / "plots-html" / "index.html").exists()

    second = dvc("repro", "regular_evaluate", cwd=root, env=env)
    assert stages_run(second.stdout) == []
    assert "Data and pipelines are up to date" in second.stdout

    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "first run"], root, env)
    status = dvc("status", "regular_evaluate", cwd=root, env=env).stdout
    assert "up to date" in status

    changed = dvc("exp", "run", "-S", "train.lr=0.002", "regular_evaluate", cwd=root, env=env)
    assert stages_run(changed.stdout) == ["regular_train", "regular_evaluate"]
    assert "Stage 'data' didn't change, skipping" in changed.stdout
    diff = dvc("params", "diff", "--json", cwd=root, env=env).stdout
    lr_change = json.loads(diff)["params.yaml"]["train.lr"]
    assert (lr_change["old"], lr_change["new"]) == (0.005, 0.002)
    assert "dvc_runs/regular/evaluate/metrics.json" in dvc("metrics", "diff", "--all", "--json",
                                                           cwd=root, env=env).stdout


def live_step(metrics_file: Path) -> int:
    """The step DVCLive last wrote to metrics_file; -1 before it exists or while half written."""
    try:
        return int(json.loads(metrics_file.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_exp_show_lists_live_metrics_while_training(project):
    """`dvc exp show` during `dvc exp run` shows the running experiment's live metrics."""
    root, env = project
    dvc("repro", "data", cwd=root, env=env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "data"], root, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["quick"]["epochs"] = 12  # long enough to be caught mid-run
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    live_metrics = root / "dvc_runs/regular/train/live/metrics.json"
    training = subprocess.Popen([sys.executable, "-m", "dvc", "exp", "run", "regular_train"],
                                cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        while live_step(live_metrics) < 1 and training.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert training.poll() is None, "training ended before its live metrics could be read"
        os.killpg(training.pid, signal.SIGSTOP)  # held mid-run however slow `exp show` is
        try:
            shown = json.loads(dvc("exp", "show", "--json", cwd=root, env=env).stdout)
        finally:
            os.killpg(training.pid, signal.SIGCONT)
    finally:
        output, _ = training.communicate(timeout=STAGE_TIMEOUT_S)
    assert training.returncode == 0, output[-4000:]
    running = [exp for baseline in shown for exp in baseline.get("experiments") or []
               if exp.get("executor", {}).get("state") == "running"]
    assert running, json.dumps(shown)[:2000]
    workspace = shown[0]["data"]["metrics"]
    live = workspace["dvc_runs/regular/train/live/metrics.json"]["data"]
    assert 1 <= live["step"] < 12 * 2 and live["train"]["ce_loss"] > 0
    final = json.loads(live_metrics.read_text())
    assert final["step"] > live["step"]
