"""Where and how each pipeline task runs: the one place that says so.

Every task in both pipelines passes through `place(task, kind)` right where the
pipeline creates it: resources sized for whisper-large-v2, the A100 pool (GPU request,
node affinity, toleration, a memory-backed /dev/shm) for GPU kinds, a /cache volume and
a per-attempt timeout for every task, S3 credentials from a Kubernetes Secret, retries
with exponential backoff over a window longer than all attempts together, and caching
off where a rerun must really rerun.

The pool and the Secret are chosen when the pipelines are compiled (they are baked
into the spec), through pipelines/compile.py flags or these environment variables:

  WHISPER_MOE_GPU_POOL        gpu-operator (default) or gke: a preset node affinity
                              (any A100, 40GB or 80GB)
  WHISPER_MOE_NODE_SELECTOR   KEY=VALUE[,KEY=VALUE]: a node selector replacing the preset
  WHISPER_MOE_TOLERATION      KEY[=VALUE]:EFFECT[,...] (default nvidia.com/gpu:NoSchedule)
  WHISPER_MOE_S3_SECRET       Secret with the S3 keys (default whisper-moe-s3)
  WHISPER_MOE_GPUS            GPUs of the joint-training task, one training process each
                              (default 1); the other GPU tasks run one process on one GPU
  WHISPER_MOE_CHECKPOINT_PVC  PersistentVolumeClaim the training tasks checkpoint to
                              (default whisper-moe-checkpoints, k8s/base)
  WHISPER_MOE_DATA_PVC        PersistentVolumeClaim holding training data, mounted at /data
                              in every task that reads data (default: none); a data_dir
                              there is read in place instead of copied into the run
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kfp import kubernetes

# Node label and accepted values of an A100 pool, 40GB and 80GB alike (batch 16 of
# whisper-large-v2 fits in 30 GiB): a node-affinity `In` term, which one node selector
# label cannot express. The NVIDIA GPU operator's feature discovery labels each GPU node
# with its product name; GKE labels accelerator node pools itself.
GPU_POOLS = {
    "gpu-operator": ("nvidia.com/gpu.product", (
        "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB",
        "NVIDIA-A100-PCIE-80GB", "NVIDIA-A100-80GB-PCIe")),
    "gke": ("cloud.google.com/gke-accelerator", ("nvidia-tesla-a100", "nvidia-a100-80gb")),
}
# GPU pools are tainted so that only pods asking for them land there: GKE adds
# nvidia.com/gpu=present:NoSchedule; with the GPU operator the cluster admin does
# (`kubectl taint nodes NODE nvidia.com/gpu=present:NoSchedule`). A toleration without a
# value (operator Exists) matches both.
DEFAULT_TOLERATIONS = "nvidia.com/gpu:NoSchedule"
DEFAULT_S3_SECRET = "whisper-moe-s3"  # k8s/templates/s3-credentials.secret.yaml
# Training tasks checkpoint to this claim, mounted where their components look for it
# (checkpoint_root), under <run id>/<task>: a retried attempt resumes from there.
DEFAULT_CHECKPOINT_PVC = "whisper-moe-checkpoints"  # k8s/base/checkpoints-pvc.yaml
CHECKPOINT_ROOT = "/checkpoints"
RESUMABLE = {"pretrain_experts", "train"}
# Tasks that run one process per GPU (torchrun inside the task); the other GPU tasks run a
# single process, so more GPUs would sit idle.
MULTI_GPU = {"train"}
# Tasks that read the training audio: with a data claim they all mount it here, so the dataset
# artifact holds only manifests that name the audio on it (prepare_data's data_root).
DATA_ROOT = "/data"
READS_DATA = {"resolve_data", "data", "embed", "pretrain_experts", "train", "evaluate"}
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Resources:
    """Requests and limits for one kind of task."""

    gpu: bool
    cpu: str
    cpu_limit: str
    memory: str
    memory_limit: str


# Sized for whisper-large-v2 (1.55 B parameters, 6.2 GB of fp32 weights loaded on the
# CPU before moving to the GPU) on an A100 40GB node of 12 vCPUs and 85 GB (GKE
# a2-highgpu-1g); the demo and tests need far less and ignore these numbers.
RESOURCES = {
    "light": Resources(gpu=False, cpu="500m", cpu_limit="1", memory="1Gi", memory_limit="2Gi"),
    # a Git clone of the data repository or an S3 listing; no data
    "resolve_data": Resources(gpu=False, cpu="500m", cpu_limit="1", memory="1Gi", memory_limit="2Gi"),
    # audio decoding
    "data": Resources(gpu=False, cpu="4", cpu_limit="8", memory="16Gi", memory_limit="32Gi"),
    "embed": Resources(gpu=True, cpu="8", cpu_limit="12", memory="32Gi", memory_limit="64Gi"),
    "cluster": Resources(gpu=False, cpu="4", cpu_limit="8", memory="16Gi", memory_limit="32Gi"),
    "pretrain_gate": Resources(gpu=False, cpu="2", cpu_limit="4", memory="8Gi", memory_limit="16Gi"),
    "pretrain_experts": Resources(gpu=True, cpu="8", cpu_limit="12", memory="48Gi",
                                  memory_limit="80Gi"),
    "train": Resources(gpu=True, cpu="8", cpu_limit="12", memory="48Gi", memory_limit="80Gi"),
    "evaluate": Resources(gpu=True, cpu="8", cpu_limit="12", memory="32Gi", memory_limit="64Gi"),
    "publish": Resources(gpu=False, cpu="1", cpu_limit="2", memory="4Gi", memory_limit="8Gi"),
}
# A rerun of these must do the work again: training and evaluation (the point of a
# run), publishing (a side effect) and resolving which data the run means (a DVC branch
# or an S3 prefix can change under the same name). The data fetch is cached: its inputs
# hold that resolved identity, so it reruns exactly when the data changed.
NOT_CACHED = {"resolve_data", "train", "evaluate", "publish"}
# Pods are preempted and nodes fail; a retry starts the task again after 1, 2, 4 minutes
# (training resumes from its durable checkpoint).
RETRIES = 3
BACKOFF_S = 60
BACKOFF_FACTOR = 2.0
# One attempt of a task may run this long (the pod's activeDeadlineSeconds); a task stuck
# on a hung node or a dead collective fails instead of holding GPUs forever, and is retried.
TIMEOUT_S = {
    "light": 15 * 60,
    "resolve_data": 30 * 60,  # cloning a large data repository
    "data": 24 * 3600,
    "embed": 12 * 3600,
    "cluster": 4 * 3600,
    "pretrain_gate": 2 * 3600,
    "pretrain_experts": 48 * 3600,
    "train": 96 * 3600,  # a full SAP run is 60-80 GPU-hours on one A100
    "evaluate": 12 * 3600,
    "publish": 3600,
}
# GPU tasks: NCCL and DataLoader workers share memory through /dev/shm, 64 MiB in a pod by
# default. A memory emptyDir counts against the pod's memory limit.
SHM_SIZE = "16Gi"
# Every task: $XDG_CACHE_HOME and $WHISPER_MOE_CACHE point at /cache in the image (a
# downloaded base model, torch.compile kernels); the size limit caps the node's disk use.
CACHE_SIZE = {True: "60Gi", False: "10Gi"}  # GPU task, CPU task
CACHE_PATH = "/cache"


def retry_window_s(kind: str) -> int:
    """Argo's backoff.maxDuration counts from the first attempt's start and ends all retries
    once passed, so it must outlast every attempt at its timeout plus the waits between."""
    waits = sum(BACKOFF_S * BACKOFF_FACTOR ** attempt for attempt in range(RETRIES))
    return int((RETRIES + 1) * TIMEOUT_S[kind] + waits)


@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str
    value: str | None = None

    @property
    def operator(self) -> str:
        return "Equal" if self.value is not None else "Exists"


@dataclass(frozen=True)
class Settings:
    """The compile-time choices: GPU pool labels, taints, Secret, GPUs per task.

    node_affinity is (label, accepted values) or None; node_selector, when given, is used
    instead of it."""

    node_selector: dict[str, str]
    tolerations: tuple[Toleration, ...]
    node_affinity: tuple[str, tuple[str, ...]] | None = None
    s3_secret: str = DEFAULT_S3_SECRET
    gpus: int = 1
    checkpoint_pvc: str = DEFAULT_CHECKPOINT_PVC
    data_pvc: str = ""


def settings_from_env(env=None) -> Settings:
    """Settings from WHISPER_MOE_* variables (see the module docstring); defaults otherwise."""
    env = os.environ if env is None else env
    pool = env.get("WHISPER_MOE_GPU_POOL") or "gpu-operator"
    if pool not in GPU_POOLS:
        raise ValueError(f"WHISPER_MOE_GPU_POOL={pool!r}: expected one of {sorted(GPU_POOLS)}")
    selector_text = env.get("WHISPER_MOE_NODE_SELECTOR")
    gpus = env.get("WHISPER_MOE_GPUS") or "1"
    if not gpus.isdigit() or int(gpus) < 1:
        raise ValueError(f"WHISPER_MOE_GPUS={gpus!r}: expected a whole number >= 1")
    return Settings(
        node_selector=parse_node_selector(selector_text) if selector_text else {},
        node_affinity=None if selector_text else GPU_POOLS[pool],
        tolerations=parse_tolerations(env.get("WHISPER_MOE_TOLERATION") or DEFAULT_TOLERATIONS),
        s3_secret=env.get("WHISPER_MOE_S3_SECRET") or DEFAULT_S3_SECRET,
        gpus=int(gpus),
        checkpoint_pvc=env.get("WHISPER_MOE_CHECKPOINT_PVC") or DEFAULT_CHECKPOINT_PVC,
        data_pvc=env.get("WHISPER_MOE_DATA_PVC") or "",
    )


def parse_node_selector(text: str) -> dict[str, str]:
    """'k=v,k2=v2' -> {'k': 'v', 'k2': 'v2'}."""
    selector = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"node selector {item!r}: expected KEY=VALUE, e.g. "
                             "cloud.google.com/gke-accelerator=nvidia-tesla-a100")
        selector[key] = value
    return selector


def parse_tolerations(text: str) -> tuple[Toleration, ...]:
    """'key[=value]:Effect,...' -> tolerations ('nvidia.com/gpu:NoSchedule')."""
    tolerations = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        taint, sep, effect = item.rpartition(":")
        if not sep or effect not in {"NoSchedule", "PreferNoSchedule", "NoExecute"} or not taint:
            raise ValueError(f"toleration {item!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of "
                             "NoSchedule, PreferNoSchedule, NoExecute (e.g. nvidia.com/gpu:NoSchedule)")
        key, has_value, value = taint.partition("=")
        tolerations.append(Toleration(key=key, effect=effect, value=value if has_value else None))
    return tuple(tolerations)


def place(task, kind: str, settings: Settings | None = None):
    """Apply this kind's resources, pool, volumes, timeout, Secret, retries and caching to a task."""
    settings = settings or settings_from_env()
    resources = RESOURCES[kind]
    task.set_cpu_request(resources.cpu)
    task.set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory)
    task.set_memory_limit(resources.memory_limit)
    if resources.gpu:
        task.set_accelerator_type(GPU_RESOURCE)
        task.set_accelerator_limit(settings.gpus if kind in MULTI_GPU else 1)
        for key, value in settings.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if settings.node_affinity and not settings.node_selector:
            label, values = settings.node_affinity
            kubernetes.add_node_affinity(task, match_expressions=[
                {"key": label, "operator": "In", "values": list(values)}])
        for toleration in settings.tolerations:
            kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                      value=toleration.value, effect=toleration.effect)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm",
                                   medium="Memory", size_limit=SHM_SIZE)
    kubernetes.empty_dir_mount(task, volume_name="cache", mount_path=CACHE_PATH,
                               size_limit=CACHE_SIZE[resources.gpu])
    if kind in RESUMABLE:
        kubernetes.mount_pvc(task, pvc_name=settings.checkpoint_pvc, mount_path=CHECKPOINT_ROOT)
    if settings.data_pvc and kind in READS_DATA:
        kubernetes.mount_pvc(task, pvc_name=settings.data_pvc, mount_path=DATA_ROOT)
    kubernetes.set_timeout(task, seconds=TIMEOUT_S[kind])
    # optional: a run that touches no S3 (the demo) needs no Secret; storage errors
    # name the missing keys when one is needed.
    kubernetes.use_secret_as_env(task, secret_name=settings.s3_secret,
                                 secret_key_to_env={key: key for key in S3_SECRET_KEYS},
                                 optional=True)
    task.set_retry(num_retries=RETRIES, backoff_duration=f"{BACKOFF_S}s",
                   backoff_factor=BACKOFF_FACTOR, backoff_max_duration=f"{retry_window_s(kind)}s")
    task.set_caching_options(enable_caching=kind not in NOT_CACHED)
    return task
