"""The Kubeflow pipelines: committed specs, placement, parameters, and both pipelines run
end to end with kfp.local's SubprocessRunner on a tiny random Whisper and a tiny corpus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from test_storage import moto_s3, moto_server  # noqa: F401  (S3 for data in and out)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPILED = REPO_ROOT / "pipelines" / "compiled"
SPECS = ("pretrained_moe", "regular_moe")
GPU_EXECUTORS = {"exec-embed-utterances", "exec-pretrain-experts", "exec-train-moe", "exec-evaluate-moe"}
UNCACHED_TASKS = {"resolve-data", "train-moe", "evaluate-moe", "publish-model"}
# Every A100 that GPU feature discovery reports, 40GB and 80GB (pipelines/placement.py)
A100_PRODUCTS = ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB",
                 "NVIDIA-A100-PCIE-80GB", "NVIDIA-A100-80GB-PCIe"]

if str(REPO_ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(REPO_ROOT))


def load_spec(name: str, folder: Path = COMPILED) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline."""
    pipeline, platform = yaml.safe_load_all((folder / f"{name}.yaml").read_text())
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def compile_cli(*args: str) -> subprocess.CompletedProcess:
    """`python pipelines/compile.py ARGS` with no WHISPER_MOE_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MOE_")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "compile.py"), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


# ------------------------------------------------------------------ committed specs
def test_committed_specs_equal_a_fresh_compile():
    result = compile_cli("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_spec(tmp_path):
    for name in SPECS:
        shutil.copy(COMPILED / f"{name}.yaml", tmp_path)
    stale = tmp_path / "regular_moe.yaml"
    stale.write_text(stale.read_text().replace("nvidia.com/gpu.product", "example.com/gpu"))
    result = compile_cli("--check", "--out-dir", str(tmp_path))
    assert result.returncode == 1
    assert "regular_moe.yaml: differs from a fresh compile" in result.stderr
    assert "pretrained_moe.yaml" not in result.stderr


def test_both_pipelines_hold_the_same_joint_training_component():
    (pretrained, pretrained_k8s), (regular, regular_k8s) = load_spec("pretrained_moe"), load_spec("regular_moe")
    assert pretrained["components"]["comp-train-moe"] == regular["components"]["comp-train-moe"]
    pretrained_executor = pretrained["deploymentSpec"]["executors"]["exec-train-moe"]
    assert pretrained_executor == regular["deploymentSpec"]["executors"]["exec-train-moe"]
    assert pretrained_k8s["exec-train-moe"] == regular_k8s["exec-train-moe"]
    assert "train.run(" in "".join(pretrained_executor["container"]["command"])
    # the pipelines differ in what comes before training: pretrained hands it an init checkpoint
    # and the embed task's vectors (its gate inputs, not encoded again)
    pretrained_inputs = pretrained["root"]["dag"]["tasks"]["train-moe"]["inputs"]["artifacts"]
    regular_inputs = regular["root"]["dag"]["tasks"]["train-moe"]["inputs"]["artifacts"]
    assert set(pretrained_inputs) == {"dataset", "init", "embeddings"} and set(regular_inputs) == {"dataset"}
    experts_inputs = pretrained["root"]["dag"]["tasks"]["pretrain-experts"]["inputs"]["artifacts"]
    for inputs in (pretrained_inputs, experts_inputs):
        assert inputs["embeddings"]["taskOutputArtifact"] == {
            "outputArtifactKey": "embeddings", "producerTask": "embed-utterances"}


@pytest.mark.parametrize("name", SPECS)
def test_gpu_tasks_request_an_a100_with_toleration_and_s3_secret(name):
    pipeline, k8s = load_spec(name)
    executors = pipeline["deploymentSpec"]["executors"]
    gpu_here = GPU_EXECUTORS & set(executors)
    assert "exec-train-moe" in gpu_here and "exec-evaluate-moe" in gpu_here
    for executor_name, executor in executors.items():
        resources = executor["container"]["resources"]
        platform = k8s[executor_name]
        secret = platform["secretAsEnv"][0]
        assert secret["secretName"] == "whisper-moe-s3"
        assert {m["envVar"] for m in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
        if executor_name in gpu_here:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert "nodeSelector" not in platform
            assert platform["nodeAffinity"] == [{"matchExpressions": [{
                "key": "nvidia.com/gpu.product", "operator": "In", "values": A100_PRODUCTS}]}]
            assert platform["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert executor["container"]["image"].endswith("-cuda")
        else:
            assert "accelerator" not in resources and "nodeAffinity" not in platform
            assert "tolerations" not in platform
            assert executor["container"]["image"].endswith("-cpu")
        assert "pip install" not in " ".join(executor["container"]["command"])  # all in the image


@pytest.mark.parametrize("name", SPECS)
def test_every_task_retries_with_backoff_and_training_is_never_cached(name):
    pipeline, k8s = load_spec(name)
    for task_name, task in pipeline["root"]["dag"]["tasks"].items():
        policy = task["retryPolicy"]
        assert {key: policy[key] for key in ("maxRetryCount", "backoffDuration", "backoffFactor")} == {
            "maxRetryCount": 3, "backoffDuration": "60s", "backoffFactor": 2.0}
        # Argo ends all retries once backoff.maxDuration has passed since the first attempt
        # began: the window must outlast every attempt at its timeout plus the waits.
        timeout_s = int(k8s[task["componentRef"]["name"].replace("comp-", "exec-", 1)]
                        ["activeDeadlineSeconds"])
        window_s = int(policy["backoffMaxDuration"].removesuffix("s"))
        assert window_s >= 4 * timeout_s + 60 + 120 + 240, (task_name, window_s, timeout_s)
        cached = task["cachingOptions"].get("enableCache", False)
        assert cached is (task_name not in UNCACHED_TASKS), task_name


@pytest.mark.parametrize("name", SPECS)
def test_every_task_has_a_timeout_and_a_cache_volume_and_gpu_tasks_a_shared_memory(name):
    pipeline, k8s = load_spec(name)
    executors = pipeline["deploymentSpec"]["executors"]
    train_timeout_s = int(k8s["exec-train-moe"]["activeDeadlineSeconds"])
    assert train_timeout_s >= 80 * 3600  # a full SAP run: 60-80 GPU-hours
    for executor_name in executors:
        platform = k8s[executor_name]
        assert 0 < int(platform["activeDeadlineSeconds"]) <= train_timeout_s, executor_name
        mounts = {mount["mountPath"]: mount for mount in platform["emptyDirMounts"]}
        assert mounts["/cache"]["sizeLimit"] and "medium" not in mounts["/cache"], executor_name
        if executor_name in GPU_EXECUTORS:
            assert mounts["/dev/shm"]["medium"] == "Memory", executor_name
            assert mounts["/dev/shm"]["sizeLimit"] == "16Gi"
        else:
            assert "/dev/shm" not in mounts, executor_name


# What the oldest backend the README names (Kubeflow Pipelines 2.15) reads from a compiled
# spec's Kubernetes platform section: a driver that meets a field it does not know stops the
# task ("unknown field \"optional\" in kfp_kubernetes.SecretAsEnv", kubeflow/pipelines#12495).
# A new field here means checking which backend release reads it, and the README.
MIN_BACKEND_PLATFORM_FIELDS = {
    "activeDeadlineSeconds", "emptyDirMounts.medium", "emptyDirMounts.mountPath",
    "emptyDirMounts.sizeLimit", "emptyDirMounts.volumeName", "nodeAffinity.matchExpressions.key",
    "nodeAffinity.matchExpressions.operator", "nodeAffinity.matchExpressions.values",
    "nodeSelector.labels", "pvcMount.constant", "pvcMount.mountPath",
    "pvcMount.pvcNameParameter.runtimeValue.constant", "secretAsEnv.keyToEnv.envVar", "secretAsEnv.keyToEnv.secretKey",
    "secretAsEnv.optional", "secretAsEnv.secretName",
    "secretAsEnv.secretNameParameter.runtimeValue.constant", "tolerations.effect",
    "tolerations.key", "tolerations.operator", "tolerations.value",
}
# Placeholders a 2.15 backend fills in ({{$.pipeline_job_uuid}} only from 2.4, kubeflow/pipelines#10453)
MIN_BACKEND_PLACEHOLDERS = {"{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}"}


def field_paths(value, prefix: str = "") -> set[str]:
    """Dotted paths of every leaf field (lists are looked through; map keys of labels end a path)."""
    if isinstance(value, list):
        return set().union(*(field_paths(item, prefix) for item in value)) if value else {prefix}
    if isinstance(value, dict) and not prefix.endswith(".labels"):
        return set().union(*(field_paths(item, f"{prefix}.{key}" if prefix else key)
                             for key, item in value.items()))
    return {prefix}


@pytest.mark.parametrize("name", SPECS)
def test_compiled_specs_use_only_fields_the_oldest_supported_backend_reads(name, tmp_path):
    pipeline, k8s = load_spec(name)
    used = set().union(*(field_paths(config) for config in k8s.values()))
    assert used <= MIN_BACKEND_PLATFORM_FIELDS, sorted(used - MIN_BACKEND_PLATFORM_FIELDS)
    placeholders = set(re.findall(r"\{\{\$\.pipeline_[a-z_]+\}\}", yaml.safe_dump(pipeline)))
    assert placeholders and placeholders <= MIN_BACKEND_PLACEHOLDERS, placeholders
    # the custom selector flag emits nodeSelector, which the list covers as well
    result = compile_cli("--out-dir", str(tmp_path), "--node-selector", "pool=a100",
                         "--toleration", "gpu=yes:NoSchedule")
    assert result.returncode == 0, result.stderr
    custom = set().union(*(field_paths(config) for config in load_spec(name, tmp_path)[1].values()))
    assert custom <= MIN_BACKEND_PLATFORM_FIELDS, sorted(custom - MIN_BACKEND_PLATFORM_FIELDS)


def test_the_backend_field_check_catches_a_field_the_list_lacks():
    config = {"securityContext": {"runAsUser": 10001}, "activeDeadlineSeconds": "60"}
    assert field_paths(config) - MIN_BACKEND_PLATFORM_FIELDS == {"securityContext.runAsUser"}
    assert field_paths({"nodeSelector": {"labels": {"a/b": "c"}}}) == {"nodeSelector.labels"}


@pytest.mark.parametrize("name", SPECS)
def test_every_pipeline_parameter_has_a_default_and_a_description(name):
    pipeline, _ = load_spec(name)
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {"params_yaml", "mode", "base_model", "epochs", "output_s3_uri", "dvc_repo"} <= set(parameters)
    for parameter_name, parameter in parameters.items():
        assert "defaultValue" in parameter, parameter_name
        assert len(parameter.get("description", "")) > 15, parameter_name


def test_parameter_defaults_come_from_params_yaml():
    from whisper_moe.config import load_params
    from whisper_moe_kfp.parameters import REGULAR_NUM_EXPERTS, params_from_yaml

    params = load_params(REPO_ROOT / "params.yaml")
    parameters = load_spec("regular_moe")[0]["root"]["inputDefinitions"]["parameters"]
    assert parameters["epochs"]["defaultValue"] == params["train"]["epochs"]
    assert params["model"]["num_experts"] is None  # the pretrained pipeline's clustering decides
    assert parameters["num_experts"]["defaultValue"] == REGULAR_NUM_EXPERTS
    assert parameters["base_model"]["defaultValue"] == params["model"]["base_model"]
    assert params_from_yaml(parameters["params_yaml"]["defaultValue"]) == params


def test_gke_pool_and_other_placement_flags(tmp_path):
    result = compile_cli("--out-dir", str(tmp_path), "--gpu-pool", "gke", "--s3-secret", "team-s3",
                         "--toleration", "nvidia.com/gpu=present:NoSchedule", "--gpus", "2",
                         "--image-repo", "registry.example.com/asr/whisper-moe", "--image-tag", "1.2.3")
    assert result.returncode == 0, result.stderr
    pipeline, k8s = load_spec("regular_moe", tmp_path)
    train = k8s["exec-train-moe"]
    assert train["nodeAffinity"] == [{"matchExpressions": [{
        "key": "cloud.google.com/gke-accelerator", "operator": "In",
        "values": ["nvidia-tesla-a100", "nvidia-a100-80gb"]}]}]
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                     "effect": "NoSchedule"}]
    assert train["secretAsEnv"][0]["secretName"] == "team-s3"
    executors = pipeline["deploymentSpec"]["executors"]
    assert executors["exec-train-moe"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    # only joint training runs a process per GPU; evaluation would leave the others idle
    assert executors["exec-evaluate-moe"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    container = executors["exec-train-moe"]["container"]
    assert container["image"] == "registry.example.com/asr/whisper-moe:1.2.3-cuda"


DATA_READERS = {"exec-resolve-data", "exec-prepare-data", "exec-embed-utterances", "exec-pretrain-experts",
                "exec-train-moe", "exec-evaluate-moe"}


@pytest.mark.parametrize("name", SPECS)
def test_a_data_claim_is_mounted_where_every_task_that_reads_data_looks(name, tmp_path):
    import inspect

    from components import prepare_data, resolve_data
    from pipelines.placement import DATA_ROOT

    for component in (resolve_data, prepare_data):
        assert inspect.signature(component.python_func).parameters["data_root"].default == DATA_ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_MOE_")}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "pipelines" / "compile.py"), "--out-dir",
                             str(tmp_path)], cwd=REPO_ROOT, env={**env, "WHISPER_MOE_DATA_PVC": "asr-corpus"},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    pipeline, k8s = load_spec(name, tmp_path)
    mounted = {executor for executor, config in k8s.items()
               if any(m["mountPath"] == DATA_ROOT for m in config.get("pvcMount", []))}
    assert mounted == DATA_READERS & set(pipeline["deploymentSpec"]["executors"])
    for executor in mounted:
        data_mount = next(m for m in k8s[executor]["pvcMount"] if m["mountPath"] == DATA_ROOT)
        assert data_mount["constant"] == "asr-corpus"
    used = set().union(*(field_paths(config) for config in k8s.values()))
    assert used <= MIN_BACKEND_PLATFORM_FIELDS, sorted(used - MIN_BACKEND_PLATFORM_FIELDS)
    # without a claim nothing is mounted there (the committed specs)
    committed = load_spec(name)[1]
    assert not any(m["mountPath"] == DATA_ROOT for config in committed.values()
                   for m in config.get("pvcMount", []))


def test_a_folder_on_the_data_volume_is_read_in_place(tmp_path, tiny_corpus):
    """prepare-data's body with data_dir on the mounted volume: the dataset artifact holds only
    the validated manifests and reports, which name the audio on the volume."""
    from kfp.dsl import Dataset, Markdown

    from components import prepare_data
    from whisper_moe.data.manifest import read_manifest

    volume = tmp_path / "data"  # the claim, as mounted at /data
    shutil.copytree(tiny_corpus, volume / "corpus" / "v1")
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    prepare_data.python_func(params_yaml=yaml.safe_dump({"data": {"max_skip_fraction": 0.5}}),
                             dataset=dataset, data_report=Markdown(uri=str(tmp_path / "report.md")),
                             data_dir="corpus/v1", data_root=str(volume))

    moved = tmp_path / "next-pod"
    shutil.move(tmp_path / "dataset", moved)  # the artifact as the next task downloads it
    assert not list(moved.rglob("*.wav")), "the audio was copied into the artifact"
    assert sum(f.stat().st_size for f in moved.rglob("*") if f.is_file()) < 100_000
    rows = read_manifest(moved / "train.jsonl")
    assert rows and all(Path(row["audio_filepath"]).is_relative_to(volume / "corpus" / "v1")
                        and Path(row["audio_filepath"]).is_file() for row in rows)
    recorded = json.loads((moved / "data_source.json").read_text())
    assert recorded["in_place"] is True and recorded["path"] == str(volume / "corpus" / "v1")
    with pytest.raises(FileNotFoundError, match="no folder .* on the data volume"):
        prepare_data.python_func(params_yaml="{}", dataset=Dataset(uri=str(tmp_path / "d2")),
                                 data_report=Markdown(uri=str(tmp_path / "r2.md")),
                                 data_dir="corpus/v2", data_root=str(volume))


@pytest.mark.parametrize("name", SPECS)
def test_prepare_data_is_cached_on_the_identity_resolve_data_gives_it(name):
    """The fetch's cache key holds what the data is (resolve-data runs every time), and only the
    data settings, so a run on the same data with other training settings reuses the dataset."""
    pipeline, _ = load_spec(name)
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["prepare-data"]["cachingOptions"].get("enableCache") is True
    assert tasks["resolve-data"]["cachingOptions"].get("enableCache", False) is False
    inputs = tasks["prepare-data"]["inputs"]["parameters"]
    for name_in, output in (("data_identity", "identity"), ("params_yaml", "data_params_yaml")):
        assert inputs[name_in]["taskOutputParameter"] == {"producerTask": "resolve-data",
                                                          "outputParameterKey": output}
    for source in ("dvc_repo", "dvc_rev", "dvc_path", "data_s3_uri", "data_dir"):
        assert inputs[source]["componentInputParameter"] == source
        assert tasks["resolve-data"]["inputs"]["parameters"][source]["componentInputParameter"] == source
    # every task that reads the data gets prepare-data's artifact, so their keys follow it
    readers = {task for task, spec in tasks.items()
               if spec["inputs"].get("artifacts", {}).get("dataset", {}).get("taskOutputArtifact", {})
               .get("producerTask") == "prepare-data"}
    assert {"train-moe", "evaluate-moe"} <= readers


def test_the_data_settings_leave_out_what_training_tunes():
    import yaml as yaml_module

    from whisper_moe.config import load_params
    from whisper_moe_kfp.parameters import params_from_yaml
    from whisper_moe_kfp.runtime import data_stage_params

    params = load_params(REPO_ROOT / "params.yaml")
    tuned = json.loads(json.dumps(params))
    tuned["train"]["lr"], tuned["model"]["num_experts"], tuned["routing"]["mode"] = 0.5, 7, "topk"
    assert data_stage_params(tuned) == data_stage_params(params)
    tuned["data"]["max_skip_fraction"] = 0.5
    assert data_stage_params(tuned) != data_stage_params(params)
    back = params_from_yaml(yaml_module.safe_dump(data_stage_params(params)))  # as prepare-data reads it
    assert back["data"] == params["data"] and back["seed"] == params["seed"]
    assert back["model"]["base_model"] == params["model"]["base_model"]
    assert back["train"]["max_label_tokens"] == params["train"]["max_label_tokens"]


def test_a_folder_is_identified_by_its_listing_and_a_changed_one_is_refused(tmp_path, tiny_corpus):
    from whisper_moe_kfp.runtime import (
        DataChangedError,
        fetch_training_data,
        identify_training_data,
    )

    folder = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, folder)
    identity = identify_training_data(data_dir=str(folder))
    assert identity == identify_training_data(data_dir=str(folder))
    assert identity["files"] == sum(1 for p in tiny_corpus.rglob("*") if p.is_file())
    (folder / "train.jsonl").write_text((tiny_corpus / "train.jsonl").read_text() + "\n")
    changed = identify_training_data(data_dir=str(folder))
    assert changed["listing_sha256"] != identity["listing_sha256"]
    with pytest.raises(DataChangedError, match=r"data_dir=.*changed"):
        fetch_training_data(tmp_path / "dataset" / "source", data_dir=str(folder), identity=identity)
    assert not (tmp_path / "dataset" / "source").exists()
    assert fetch_training_data(tmp_path / "dataset" / "source", data_dir=str(folder),
                               identity=changed)["kind"] == "folder"
    assert identify_training_data() == {"kind": "params"}  # the demo: the data settings decide
    with pytest.raises(ValueError, match="give one data source"):
        identify_training_data(data_dir=str(folder), data_s3_uri="s3://b/p")


def test_a_node_selector_flag_replaces_the_pools_affinity(tmp_path):
    result = compile_cli("--out-dir", str(tmp_path), "--node-selector", "pool=a100")
    assert result.returncode == 0, result.stderr
    train = load_spec("regular_moe", tmp_path)[1]["exec-train-moe"]
    assert train["nodeSelector"]["labels"] == {"pool": "a100"} and "nodeAffinity" not in train


def test_whole_image_references_by_digest_win_over_repo_and_tag(tmp_path):
    """CI compiles against the digests it pushed: every task must name exactly those."""
    cpu = "registry.example.com/asr/whisper-moe@sha256:" + "c" * 64
    cuda = "registry.example.com/asr/whisper-moe@sha256:" + "d" * 64
    result = compile_cli("--out-dir", str(tmp_path), "--image-tag", "ignored",
                         "--cpu-image", cpu, "--cuda-image", cuda)
    assert result.returncode == 0, result.stderr
    for name in SPECS:
        pipeline, _ = load_spec(name, tmp_path)
        images = {executor_name: executor["container"]["image"]
                  for executor_name, executor in pipeline["deploymentSpec"]["executors"].items()}
        for executor_name, image in images.items():
            assert image == (cuda if executor_name in GPU_EXECUTORS else cpu), (executor_name, image)
        assert task_images(pipeline) == images  # what lineage records: the digest the pod runs


def task_images(pipeline: dict) -> dict:
    """Executor name -> the $WHISPER_MOE_IMAGE its container is given (None when missing)."""
    return {name: next((variable["value"] for variable in executor["container"].get("env", [])
                        if variable["name"] == "WHISPER_MOE_IMAGE"), None)
            for name, executor in pipeline["deploymentSpec"]["executors"].items()}


@pytest.mark.parametrize("name", SPECS)
def test_every_task_is_told_the_image_it_runs(name):
    pipeline, _ = load_spec(name)
    executors = pipeline["deploymentSpec"]["executors"]
    assert task_images(pipeline) == {executor_name: executor["container"]["image"]
                                     for executor_name, executor in executors.items()}


def test_placement_settings_parse_and_refuse_bad_values():
    from pipelines import placement

    settings = placement.settings_from_env({"WHISPER_MOE_NODE_SELECTOR": "pool=a100,zone=b",
                                            "WHISPER_MOE_TOLERATION": "gpu:NoExecute"})
    assert settings.node_selector == {"pool": "a100", "zone": "b"}
    assert settings.tolerations == (placement.Toleration("gpu", "NoExecute"),)
    assert settings.node_affinity is None  # a given selector replaces the pool's affinity
    defaults = placement.settings_from_env({})
    assert defaults.node_selector == {}
    assert defaults.node_affinity == ("nvidia.com/gpu.product", tuple(A100_PRODUCTS))
    for bad in ({"WHISPER_MOE_GPU_POOL": "azure"}, {"WHISPER_MOE_NODE_SELECTOR": "novalue"},
                {"WHISPER_MOE_TOLERATION": "gpu:Sometimes"}, {"WHISPER_MOE_GPUS": "0"}):
        with pytest.raises(ValueError):
            placement.settings_from_env(bad)


# ------------------------------------------------------------------ parameters and data in
def test_resolve_params_applies_pipeline_values_to_the_nested_params():
    from whisper_moe_kfp.parameters import params_from_yaml, resolve_params_yaml

    resolved = params_from_yaml(resolve_params_yaml(
        "train: {epochs: 9, lr: 0.5}\nmodel: {lora: {rank: 8}}",
        {"epochs": 2, "learning_rate": 0.01, "num_experts": 5, "max_clusters": None}))
    assert resolved["train"]["epochs"] == 2 and resolved["train"]["lr"] == 0.01
    assert resolved["model"]["num_experts"] == 5
    assert resolved["model"]["lora"]["rank"] == 8  # untouched keys keep params_yaml's values
    assert resolved["cluster"]["max_clusters"] == 8  # None: not given, the default stays
    with pytest.raises(ValueError, match="unknown parameter 'trian'"):
        params_from_yaml("trian: {epochs: 1}")
    with pytest.raises(ValueError, match=r"params_yaml: unknown parameter 'train\.lrr'"):
        params_from_yaml("train: {lrr: 1}")
    with pytest.raises(ValueError, match=r"pipeline parameter batch_size: train.batch_size=0"):
        resolve_params_yaml("{}", {"batch_size": 0})


def test_the_regular_moe_has_as_many_experts_under_dvc_as_in_kubeflow():
    from whisper_moe_kfp.parameters import REGULAR_NUM_EXPERTS

    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["regular_train"]
    assert stage["vars"] == [{"regular_num_experts": REGULAR_NUM_EXPERTS}]
    assert "--num-experts ${regular_num_experts}" in stage["cmd"][0]


def test_fetch_training_data_refuses_ambiguous_sources(tmp_path):
    from whisper_moe_kfp.runtime import fetch_training_data

    with pytest.raises(ValueError, match="give one data source"):
        fetch_training_data(tmp_path / "d", dvc_repo="r", dvc_path="p", data_s3_uri="s3://b/p")
    with pytest.raises(ValueError, match="needs dvc_path"):
        fetch_training_data(tmp_path / "d", dvc_repo="https://example.com/repo.git")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        fetch_training_data(tmp_path / "d", data_dir=str(tmp_path / "missing"))
    assert fetch_training_data(tmp_path / "d") == {"kind": "params"}


def test_a_fetched_folder_without_manifests_is_named(tmp_path):
    from whisper_moe.config import load_params
    from whisper_moe_kfp.runtime import fetch_training_data, point_data_stage_at

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("x")
    source = fetch_training_data(tmp_path / "dataset" / "source", data_dir=str(tmp_path / "raw"))
    with pytest.raises(FileNotFoundError, match=r"holds no train.jsonl.*notes.txt"):
        point_data_stage_at(load_params(None), source, tmp_path / "dataset")


def test_prepare_data_without_a_source_synthesises_the_demo_corpus_inside_the_dataset(tmp_path):
    """The component body as the container runs it: the artifact holds manifests and audio."""
    from kfp.dsl import Dataset, Markdown

    from components import prepare_data

    params_yaml = yaml.safe_dump({"data": {"dir": "/nonexistent/demo", "demo": {
        "groups": ["en-us", "en-029"], "speakers_per_group": 3, "utterances_per_speaker": 1}}})
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    report = Markdown(uri=str(tmp_path / "data_report.md"))
    prepare_data.python_func(params_yaml=params_yaml, dataset=dataset, data_report=report)

    moved = tmp_path / "moved"
    shutil.move(tmp_path / "dataset", moved)  # as Kubeflow copies it to the next pod
    from whisper_moe.data.manifest import read_manifest

    rows = read_manifest(moved / "train.jsonl")
    assert rows and all(Path(row["audio_filepath"]).is_file() for row in rows)
    assert all(Path(row["audio_filepath"]).is_relative_to(moved) for row in rows)
    report_text = (tmp_path / "data_report.md").read_text()
    assert f"| train | {len(rows)} | 0 | - |" in report_text and "| test |" in report_text


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_fetch_from_a_dvc_repository_at_a_revision(tmp_path, tiny_corpus):
    """A DVC-versioned data folder (git repo + local DVC remote) fetched as `dvc get` would."""
    from whisper_moe_kfp.runtime import (
        DataChangedError,
        fetch_training_data,
        identify_training_data,
    )

    repo, remote = tmp_path / "repo", tmp_path / "remote"
    shutil.copytree(tiny_corpus, repo / "data" / "corpus")
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "add", "-q", "data/corpus"],
                    [*dvc, "remote", "add", "-q", "-d", "store", str(remote)], [*dvc, "push", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "corpus"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()

    dest = tmp_path / "dataset" / "source"
    source = fetch_training_data(dest, dvc_repo=str(repo), dvc_rev=revision, dvc_path="data/corpus")
    assert source["kind"] == "dvc" and source["rev"] == revision and source["commit"] == revision
    assert source["md5"].endswith(".dir")  # the folder's DVC md5, as data/corpus.dvc records it
    assert source["md5"] in (repo / "data" / "corpus.dvc").read_text()
    assert (dest / "train.jsonl").read_text() == (tiny_corpus / "train.jsonl").read_text()
    first_audio = json.loads((dest / "train.jsonl").read_text().splitlines()[0])["audio_filepath"]
    assert (dest / first_audio).read_bytes() == (tiny_corpus / first_audio).read_bytes()
    with pytest.raises(FileNotFoundError, match="is not in the DVC repository"):
        fetch_training_data(tmp_path / "other", dvc_repo=str(repo), dvc_path="data/missing")

    # the identity resolve-data hands prepare-data: the folder's md5, read without the data
    identity = identify_training_data(dvc_repo=str(repo), dvc_rev=revision, dvc_path="data/corpus")
    assert identity == {"kind": "dvc", "md5": source["md5"]}
    with pytest.raises(DataChangedError, match="start the run again"):
        fetch_training_data(tmp_path / "stale", dvc_repo=str(repo), dvc_rev=revision,
                            dvc_path="data/corpus", identity={"kind": "dvc", "md5": "0" * 32 + ".dir"})
    assert not (tmp_path / "stale").exists()


def test_publish_puts_the_lineage_on_its_artifacts_and_the_card(tmp_path, monkeypatch, tiny_params):
    """The publish-model component itself, with nothing to upload: the pointer and the model
    card artifacts name the commit, the image by digest, the data's commit and md5, the
    pipeline and the run, and the card says which pipeline trained the model."""
    from kfp.dsl import HTML, Artifact, Markdown, Model

    from components import publish_model
    from whisper_moe_kfp import runtime

    image = "registry.example/whisper-moe@sha256:" + "a" * 64
    monkeypatch.setenv("WHISPER_MOE_IMAGE", image)  # as the compiled spec sets it
    monkeypatch.setenv("WHISPER_MOE_GIT_COMMIT", "b" * 40)  # as the image sets it
    checkpoint, evaluation = tmp_path / "checkpoint", tmp_path / "evaluation"
    for folder in (checkpoint, evaluation):
        folder.mkdir()
    (checkpoint / "moe_config.json").write_text("{}")
    (evaluation / "metrics.json").write_text(json.dumps({
        "utterances": 2, "base_model": "openai/whisper-large-v2",
        "moe": {"wer": 0.5, "cer": 0.25, "per_group": {"en-us": {"wer": 0.5, "cer": 0.25, "n": 2}}}}))
    data = {"kind": "dvc", "repo": "https://example.com/data.git", "rev": "v1", "commit": "c" * 40,
            "path": "sap", "md5": "d" * 32 + ".dir"}
    (evaluation / runtime.DATA_SOURCE).write_text(json.dumps(data))
    (tmp_path / "report.html").write_text("<h1>whisper-moe evaluation</h1>")
    pointer, card = Artifact(uri=str(tmp_path / "pointer.json")), Markdown(uri=str(tmp_path / "card.md"))

    publish_model.python_func(
        params_yaml=yaml.safe_dump(tiny_params), checkpoint=Model(uri=str(checkpoint)),
        evaluation=Artifact(uri=str(evaluation)), report=HTML(uri=str(tmp_path / "report.html")),
        pointer=pointer, model_card=card, run_id="run-9", pipeline_name="regular")

    expected = {"code_commit": "b" * 40, "image": image, "image_digest": "sha256:" + "a" * 64,
                "data_commit": "c" * 40, "data_md5": "d" * 32 + ".dir",
                "base_model": "openai/whisper-large-v2", "pipeline": "regular", "run_id": "run-9"}
    for artifact in (pointer, card):
        assert expected.items() <= artifact.metadata.items(), artifact.metadata
    assert json.loads(Path(pointer.path).read_text())["lineage"]["data"] == data
    text = Path(card.path).read_text()
    assert text.startswith("---\n") and "# whisper-moe-regular" in text and "regular MoE" in text
    assert f"`{image}`" in text and "c" * 40 in text and "b" * 40 in text

    # what a training or evaluation task can put on its own artifacts from its dataset folder
    from_dataset = runtime.artifact_lineage(yaml.safe_dump(tiny_params), evaluation, "{{$.pipeline_job_uuid}}")
    assert {**expected, "base_model": tiny_params["model"]["base_model"], "pipeline": "", "run_id": ""} \
        == {key: from_dataset[key] for key in expected}


# ------------------------------------------------------------------ end to end, kfp.local
def tiny_run_params(tiny_base_dir) -> str:
    """params_yaml for a run of a few seconds per task: quick mode, 1 epoch, tiny model."""
    return yaml.safe_dump({
        "mode": "quick",
        "model": {"base_model": str(tiny_base_dir), "lora": {"rank": 4}, "gate_hidden": 16},
        "train": {"batch_size": 2, "gradient_accumulation_steps": 1},
        "runtime": {"device": "cpu"},
        "routing": {"mode": "soft", "noise_std": 0.0},
        "evaluate": {"batch_size": 4, "max_new_tokens": 4, "compare_base": False},
        "quick": {"epochs": 1, "max_train_utterances": 6, "max_eval_utterances": 3},
        "embed": {"embedding_percent": 100.0},
        "cluster": {"algorithm": "kmeans", "max_clusters": 3, "pca_components": 8, "plot": True},
        "pretrain_gate": {"epochs": 3},
        "pretrain_experts": {"epochs": 1, "batch_size": 2},
    })


@pytest.fixture
def local_kfp(tmp_path, monkeypatch):
    """kfp.local with the SubprocessRunner in this environment; outputs under tmp_path."""
    from kfp import local

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    return tmp_path / "kfp"


def common_arguments(tiny_base_dir) -> dict:
    return {"params_yaml": tiny_run_params(tiny_base_dir), "mode": "quick",
            "base_model": str(tiny_base_dir), "batch_size": 2, "gradient_accumulation_steps": 1,
            "routing_mode": "soft"}


def check_run_outputs(outputs) -> dict:
    """The checkpoint, metrics, report and pointer every run produces; returns the pointer."""
    checkpoint = Path(outputs["checkpoint"].path)
    assert (checkpoint / "moe_config.json").exists() and (checkpoint / "model.safetensors").exists()
    metrics = outputs["metrics"].metadata
    groups = {"en-us", "en-gb-scotland", "en-029"}
    assert 0 <= metrics["moe_wer"] and {f"moe_wer_{g}" for g in groups} <= set(metrics)
    assert "<h1>whisper-moe evaluation</h1>" in Path(outputs["report"].path).read_text()
    pointer = json.loads(Path(outputs["pointer"].path).read_text())
    commit = pointer["lineage"]["code"]["commit"]
    for name in ("checkpoint", "report"):  # lineage beside the artifacts in the Kubeflow UI
        lineage = outputs[name].metadata
        assert (lineage["code_commit"], lineage["base_model"]) == (commit, pointer["lineage"]["base_model"])
        assert lineage["data_source"], lineage
    return pointer


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_regular_pipeline_end_to_end_from_s3_to_s3(local_kfp, moto_s3, tiny_base_dir, tiny_corpus):  # noqa: F811
    from pipelines.regular_moe import regular_moe
    from whisper_moe import storage

    storage.upload_folder(tiny_corpus, "s3://data/corpus/v1")
    task = regular_moe(**common_arguments(tiny_base_dir), num_experts=2,
                       data_s3_uri="s3://data/corpus/v1", output_s3_uri="s3://results/runs")

    pointer = check_run_outputs(task.outputs)
    assert pointer["published"] is True
    assert (pointer["lineage"]["pipeline"], pointer["lineage"]["run_id"]) == ("regular", pointer["run"])
    run_prefix = f"s3://results/runs/{pointer['run']}"
    assert pointer["uri"] == f"{run_prefix}/model"
    assert pointer["metrics"]["moe"]["wer"] == pytest.approx(task.outputs["metrics"].metadata["moe_wer"],
                                                             abs=1e-6)
    assert set(pointer["metrics"]["moe"]["per_group"]) == {"en-us", "en-gb-scotland", "en-029"}
    assert storage.read_json(f"{run_prefix}/pointer.json") == pointer
    assert storage.read_json(f"{run_prefix}/metrics.json")["moe"]["wer"] == pointer["metrics"]["moe"]["wer"]
    copy = storage.download_prefix(f"{run_prefix}/model", local_kfp / "published")
    assert sorted(p.name for p in copy) == ["README.md", "lineage.json", "model.safetensors",
                                            "moe_config.json"]
    assert yaml.safe_load(storage.s3_client().get_object(
        Bucket="results", Key=f"runs/{pointer['run']}/params.yaml")["Body"].read())["mode"] == "quick"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_pretrained_pipeline_end_to_end_from_a_folder(local_kfp, tiny_base_dir, tiny_corpus):
    from pipelines.pretrained_moe import pretrained_moe

    task = pretrained_moe(**common_arguments(tiny_base_dir), embedding_percent=100.0,
                          clustering_algorithm="kmeans", max_clusters=3, data_dir=str(tiny_corpus))

    pointer = check_run_outputs(task.outputs)
    assert pointer["published"] is False  # no output_s3_uri: the pointer names Kubeflow's copy
    assert pointer["uri"] == task.outputs["checkpoint"].uri
    confusion = task.outputs["gate_confusion"].metadata["confusionMatrix"]
    num_experts = len(confusion["annotationSpecs"])
    assert num_experts >= 2 and all(len(row["row"]) == num_experts for row in confusion["rows"])
    config = json.loads((Path(task.outputs["checkpoint"].path) / "moe_config.json").read_text())
    assert config["num_experts"] == num_experts  # clustering decided the experts


def test_kubeflow_metrics_carry_whisper_norm_wer_sap_cer_and_routing():
    from whisper_moe_kfp.runtime import log_evaluation

    class Logged:
        def __init__(self):
            self.values = {}

        def log_metric(self, name, value):
            self.values[name] = value

    logged = Logged()
    log_evaluation(logged, {
        "utterances": 4,
        "moe": {"wer": 0.2, "cer": 0.1, "wer_whisper_norm": 0.15, "sap_cer": 0.09,
                "per_group": {"l1-hi": {"wer": 0.3}}},
        "base": {"wer": 0.5, "cer": 0.3, "wer_whisper_norm": 0.45, "sap_cer": None},
        "routing": {"gate_entropy_mean": 0.4, "gate_entropy_max": 1.386, "top1_group_nmi": 0.5,
                    "top1_group_nmi_permutation_95": 0.08, "top1_group_nmi_p_value": 0.001,
                    "idle_experts": [2]}})
    assert logged.values["moe_wer_whisper_norm"] == 0.15 and logged.values["moe_sap_cer"] == 0.09
    assert "base_sap_cer" not in logged.values and logged.values["base_wer_whisper_norm"] == 0.45
    assert logged.values["routing_top1_group_nmi"] == 0.5 and logged.values["routing_idle_experts"] == 1
    assert logged.values["moe_wer_l1-hi"] == 0.3 and logged.values["test_utterances"] == 4
