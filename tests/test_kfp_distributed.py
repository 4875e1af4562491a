"""The train-moe task trains in as many processes as its pod has GPUs.

A pod given N GPUs runs `whisper-moe train` under torchrun with N data-parallel processes,
rank 0 writing the outputs. On CPU the same path runs with gloo: two processes with a batch
of one each must end where one process with a batch of two ends (the check the CLI's own
data-parallel test makes), inside a pipeline run by kfp.local.
"""

import copy
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def data_parallel_params(tiny_params, batch_size: int) -> str:
    """float64 without dropout or routing noise: only the data-parallel logic can differ."""
    params = copy.deepcopy(tiny_params)
    params["model"]["lora"]["dropout"] = 0.0
    params["model"]["dtype"] = "float64"
    params["routing"].update(mode="curriculum", soft_epochs=1, noise_std=0.0)
    params["train"].update(epochs=2, batch_size=batch_size, gradient_accumulation_steps=1)
    params["runtime"]["device"] = "cpu"
    return yaml.safe_dump(params)


def train_pipeline(corpus: Path):
    """The dataset read in place (an importer) and the pipelines' own train-moe component."""
    from kfp import dsl
    from kfp.dsl import Dataset, Model

    from components import train_moe

    @dsl.pipeline(name="train-only")
    def train_only(params_yaml: str, processes: int) -> Model:
        data = dsl.importer(artifact_uri=str(corpus), artifact_class=Dataset, reimport=False)
        return train_moe(params_yaml=params_yaml, dataset=data.output,
                         processes=processes).outputs["checkpoint"]

    return train_only


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_two_training_processes_in_the_pipeline_match_one(tmp_path, monkeypatch, tiny_params,
                                                          tiny_corpus):
    from kfp import local
    from test_distributed import assert_same_trained_weights

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    pipeline = train_pipeline(tiny_corpus)

    single = pipeline(params_yaml=data_parallel_params(tiny_params, 2), processes=1).output
    parallel = pipeline(params_yaml=data_parallel_params(tiny_params, 1), processes=2).output

    assert single.metadata["training_processes"] == 1
    assert parallel.metadata["training_processes"] == 2
    assert_same_trained_weights(Path(single.path) / "model.safetensors",
                                Path(parallel.path) / "model.safetensors")


ATTEMPT = textwrap.dedent("""
    import sys
    from kfp.dsl import Artifact, Dataset, Metrics, Model
    from components import train_moe

    params_yaml, dataset, out, checkpoint_root = sys.argv[1:5]
    train_moe.python_func(
        params_yaml=open(params_yaml).read(), dataset=Dataset(uri=dataset),
        checkpoint=Model(uri=out + "/checkpoint"), training_log=Artifact(uri=out + "/training_log"),
        training_metrics=Metrics(uri=out + "/metrics"), run_id="run-2gpu",
        checkpoint_root=checkpoint_root, processes=2)
""")


def start_attempt(params: Path, dataset: Path, out: Path, volume: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", ATTEMPT, str(params), str(dataset), str(out),
                             str(volume)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_preempted_two_process_task_resumes_from_its_volume(tmp_path, tiny_params, tiny_corpus):
    """SIGTERM to the task reaches both workers through torchrun: they save, the task fails,
    and the retry (same run id and volume) resumes and finishes."""
    from test_kfp_preemption import checkpoints, finish, wait_for

    params = copy.deepcopy(tiny_params)
    params["train"].update(epochs=8, batch_size=1, gradient_accumulation_steps=1,
                           save_every_n_epochs=1, keep_checkpoints=2)
    params["runtime"]["device"] = "cpu"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    volume = tmp_path / "volume"
    volume.mkdir()
    work_dir = volume / "run-2gpu" / "train-moe"

    first = start_attempt(params_file, tiny_corpus, tmp_path / "attempt1", volume)
    wait_for(lambda: checkpoints(work_dir), first)
    first.send_signal(signal.SIGTERM)
    code, output = finish(first)
    assert code == 1 and "torchrun with 2 training processes exited" in output, output[-3000:]
    assert "TrainingInterrupted" in output, output[-3000:]  # the workers stopped on request
    saved = checkpoints(work_dir)
    assert saved

    second = start_attempt(params_file, tiny_corpus, tmp_path / "attempt2", volume)
    code, output = finish(second)
    assert code == 0, output[-3000:]
    assert f"resumed from {work_dir}/checkpoints/{saved[-1]}" in output, output[-3000:]
    assert (tmp_path / "attempt2" / "checkpoint" / "model.safetensors").exists()
    assert not (volume / "run-2gpu").exists()


def test_processes_default_to_one_per_gpu_and_one_on_cpu():
    from whisper_moe_kfp.runtime import torchrun_train_command, training_processes

    assert training_processes(3, {"runtime": {"device": "cpu"}}) == 3
    assert training_processes(0, {"runtime": {"device": "cpu"}}) == 1
    command = torchrun_train_command(4, "p.yaml", "train.jsonl", "dev.jsonl", "out", "init", True)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    from whisper_moe.cli import build_parser

    args = build_parser().parse_args(command[command.index("whisper_moe.cli") + 1:])
    assert (args.params, args.out, args.init, args.resume) == ("p.yaml", "out", "init", True)
