"""What each stage leaves in its output folder: the file names, and how they are written and read.

A stage writes its outputs through the savers here, and every reader of them (a
later stage, a pipeline component, the Kubeflow runtime, the comparison) goes
through the loaders here, so a file's name and format are decided in one place and
stages need not import each other. All writes are atomic (`whisper_moe.fsio`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from whisper_moe.fsio import atomic_file, write_json_atomic, write_text_atomic

# ------------------------------------------------------------------ data
DATA_REPORT = "data_report.json"
SOURCE_STAMP = "source_stamp.json"


def split_manifest(folder: str | Path, split: str) -> Path:
    """A data folder's validated manifest of one split (train, dev or test)."""
    return Path(folder) / f"{split}.jsonl"


def split_report(folder: str | Path, split: str) -> Path:
    """The validation report of one split's manifest."""
    return Path(folder) / f"{split}_report.json"


def load_data_report(folder: str | Path) -> dict:
    return read_json(Path(folder) / DATA_REPORT)


# ------------------------------------------------------------------ embed
EMBEDDINGS = "embeddings.npy"
EMBEDDING_INDEX = "index.jsonl"
EMBED_REPORT = "embed_report.json"
EMBEDDING_INDEX_KEYS = ("id", "group", "speaker", "audio_filepath")


def save_embeddings(out_dir: Path, embeddings: np.ndarray, rows: list[dict]) -> None:
    """embeddings.npy (float32 [N, d]) and index.jsonl: one line per array row, in order."""
    save_array(out_dir / EMBEDDINGS, embeddings)
    lines = [json.dumps({key: row.get(key, "") for key in EMBEDDING_INDEX_KEYS}) for row in rows]
    write_text_atomic(out_dir / EMBEDDING_INDEX, "".join(line + "\n" for line in lines))


def has_embeddings(embeddings_dir: str | Path) -> bool:
    """Whether an embed folder holds the array, its index and the report."""
    folder = Path(embeddings_dir)
    return all((folder / name).exists() for name in (EMBEDDINGS, EMBEDDING_INDEX, EMBED_REPORT))


def load_embeddings(embeddings_dir: str | Path) -> tuple[np.ndarray, list[dict]]:
    """(embeddings [N, d] float32, index rows) of an embed stage output folder."""
    embeddings_dir = Path(embeddings_dir)
    array_path, index_path = embeddings_dir / EMBEDDINGS, embeddings_dir / EMBEDDING_INDEX
    for path in (array_path, index_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `whisper-moe embed --out {embeddings_dir}` first")
    embeddings = np.load(array_path, allow_pickle=False)
    index = read_jsonl(index_path)
    if len(index) != len(embeddings):
        raise ValueError(f"{index_path}: {len(index)} lines but {array_path} has {len(embeddings)} "
                         "rows; rerun the embed stage")
    return embeddings.astype(np.float32, copy=False), index


# ------------------------------------------------------------------ cluster
CLUSTER_LABELS = "labels.npy"
CLUSTER_SOFT_LABELS = "soft_labels.npy"
CLUSTER_REPORT = "cluster_report.json"
CLUSTER_SCATTER = "scatter.png"


def save_cluster_labels(out_dir: Path, labels: np.ndarray, soft_labels: np.ndarray) -> None:
    """labels.npy (int64 [N]) and soft_labels.npy (float32 [N, k])."""
    save_array(out_dir / CLUSTER_LABELS, labels)
    save_array(out_dir / CLUSTER_SOFT_LABELS, soft_labels)


def load_cluster_report(cluster_dir: str | Path) -> dict:
    return read_json(Path(cluster_dir) / CLUSTER_REPORT)


def load_cluster_outputs(cluster_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(hard labels [N], soft labels [N, k], report) of a cluster stage folder."""
    cluster_dir = Path(cluster_dir)
    paths = [cluster_dir / name for name in (CLUSTER_LABELS, CLUSTER_SOFT_LABELS, CLUSTER_REPORT)]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `whisper-moe cluster --out {cluster_dir}` first")
    labels = np.load(paths[0], allow_pickle=False)
    soft = np.load(paths[1], allow_pickle=False)
    return labels, soft, read_json(paths[2])


# ------------------------------------------------------------------ pretrain-gate
GATE_WEIGHTS = "gate.safetensors"
GATE_CONFIG = "gate_config.json"
GATE_METRICS = "gate_metrics.json"
GATE_CONFUSION_PLOT = "confusion.png"


def save_gate_state(out_dir: Path, state: dict, input_dim: int, num_experts: int, hidden: int) -> None:
    """gate.safetensors and gate_config.json (the shapes a loader checks against its model)."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()}
    with atomic_file(out_dir / GATE_WEIGHTS, "wb") as stream:
        stream.write(save(tensors, metadata={"format": "pt"}))
    write_json_atomic(out_dir / GATE_CONFIG,
                      {"input_dim": int(input_dim), "num_experts": int(num_experts), "hidden_dim": int(hidden)})


def load_gate_state(gate_dir: str | Path) -> tuple[dict, dict]:
    """(Gate state dict, its config) of a pretrain-gate folder."""
    from safetensors.torch import load_file

    gate_dir = Path(gate_dir)
    weights, config = gate_dir / GATE_WEIGHTS, gate_dir / GATE_CONFIG
    for path in (weights, config):
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `whisper-moe pretrain-gate --out {gate_dir}` first")
    return load_file(weights), read_json(config)


def load_gate_metrics(gate_dir: str | Path) -> dict:
    return read_json(Path(gate_dir) / GATE_METRICS)


def gate_confusion(gate_dir: str | Path) -> tuple[list[str], list[list[float]]] | None:
    """(categories, matrix) of the gate's held-out confusion matrix; None without gate_metrics.json.

    Rows are clusters, columns the gate's expert.
    """
    path = Path(gate_dir) / GATE_METRICS
    if not path.exists():
        return None
    metrics = read_json(path)
    matrix = [[float(value) for value in row] for row in metrics["confusion_matrix"]]
    return [str(category) for category in metrics["categories"]], matrix


# ------------------------------------------------------------------ pretrain-experts
EXPERT_ASSIGNMENTS = "assignments.jsonl"
PRETRAIN_EXPERTS_METRICS = "pretrain_experts_metrics.json"


def save_assignments(out_dir: Path, rows: list[dict], experts: list[int]) -> None:
    """One line per training utterance: its id, group and the expert the gate chose."""
    lines = [json.dumps({"id": row["id"], "group": row.get("group", ""), "expert": int(expert)})
             for row, expert in zip(rows, experts)]
    write_text_atomic(out_dir / EXPERT_ASSIGNMENTS, "".join(line + "\n" for line in lines))


def load_assignments(out_dir: str | Path) -> list[dict] | None:
    """The saved assignment lines, or None when there are none."""
    path = Path(out_dir) / EXPERT_ASSIGNMENTS
    return read_jsonl(path) if path.exists() else None


# ------------------------------------------------------------------ train (and pretrain-experts)
MODEL_CHECKPOINT = "checkpoint"  # the trained MoE: moe_config.json + model.safetensors
RESUMABLE_CHECKPOINTS = "checkpoints"  # training state a --resume continues from
LIVE_METRICS = "live"  # DVCLive folder, written while training runs
TRAIN_LOG = "train_log.jsonl"
LOSS_CURVE = "loss_curve.json"
TRAINING_CURVES = "training_curves.png"
TRAIN_METRICS = "train_metrics.json"


def save_train_log(out_dir: Path, history: list[dict]) -> None:
    """One JSON line per training record (steps, epochs, dev losses) in order."""
    write_text_atomic(out_dir / TRAIN_LOG, "".join(json.dumps(record) + "\n" for record in history))


def has_train_log(train_dir: str | Path) -> bool:
    return (Path(train_dir) / TRAIN_LOG).exists()


def load_train_log(train_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(train_dir) / TRAIN_LOG)


# ------------------------------------------------------------------ evaluate
EVALUATION_METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
EVALUATION_REPORT = "report.html"


def load_evaluation_metrics(evaluation_dir: str | Path) -> dict:
    return read_json(Path(evaluation_dir) / EVALUATION_METRICS)


EXTRA_TEST_SETS = "extra_test_sets"  # <evaluate folder>/extra_test_sets/<name>/predictions.jsonl


def extra_test_set_predictions(evaluation_dir: str | Path, name: str) -> Path:
    """Where the predictions on the named extra test set are written."""
    return Path(evaluation_dir) / EXTRA_TEST_SETS / name / PREDICTIONS


# ------------------------------------------------------------------ publish (under output_s3_uri/<run>/)
PUBLISHED_MODEL = "model"
PUBLISHED_METRICS = "metrics.json"
PUBLISHED_REPORT = "report.html"
PUBLISHED_PARAMS = "params.yaml"
PUBLISHED_POINTER = "pointer.json"


# ------------------------------------------------------------------ whole pipeline
STAGE_DONE = "stage_done.json"
RUN_PARAMS = "params.json"
RUN_SUMMARY = "summary.json"


# ------------------------------------------------------------------ formats
def save_array(path: Path, array: np.ndarray) -> None:
    """A .npy file written atomically."""
    with atomic_file(path, "wb") as stream:
        np.save(stream, array)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
