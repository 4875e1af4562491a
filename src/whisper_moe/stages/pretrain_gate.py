"""Gate pretraining: the gate learns to predict the clusters from the pooled embeddings.

The gate (`whisper_moe.model.gate.Gate`, hidden size `model.gate_hidden`) is trained
with soft cross-entropy against the calibrated soft cluster labels (the same
gradient as KL(soft labels || gate), whose value is also reported), with early
stopping on a held-out part stratified by cluster (the best epoch's weights are
kept). Its input standardisation is fitted on its training embeddings and saved with it,
so joint training continues with the statistics the gate learned under. Writes `gate.safetensors` + `gate_config.json`, `gate_metrics.json`
(held-out accuracy against the hard cluster labels, the confusion matrix as a list
for Kubeflow's ClassificationMetrics, the learning curve) and `confusion.png`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from whisper_moe import artifacts
from whisper_moe.config import check_params
from whisper_moe.fsio import write_json_atomic
from whisper_moe.model.gate import Gate
from whisper_moe.training.runtime import resolve_device

log = logging.getLogger("whisper_moe.pretrain_gate")

HELDOUT_FRACTION = 0.2


def heldout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, stratified by cluster; a cluster of one stays in train."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for cluster in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cluster))
        count = round(len(members) * fraction) if len(members) > 1 else 0
        count = min(max(count, 1 if len(members) > 1 else 0), len(members) - 1)
        heldout.extend(members[:count].tolist())
        train.extend(members[count:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(heldout, dtype=np.int64))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum p log q, averaged: KL(p || q) plus the (constant) entropy of the targets."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def kl_divergence(logits: torch.Tensor, targets: torch.Tensor) -> float:
    log_q = F.log_softmax(logits, dim=-1)
    log_p = targets.clamp_min(1e-12).log()
    return float((targets * (log_p - log_q)).sum(-1).mean())


def train_gate(embeddings: np.ndarray, soft_labels: np.ndarray, train_index: np.ndarray,
               heldout_index: np.ndarray, hidden: int, epochs: int, batch_size: int, lr: float,
               patience: int, seed: int, device: torch.device | str = "cpu",
               ) -> tuple[Gate, list[dict], int]:
    """(gate with the best epoch's weights, on the CPU; per-epoch history; best epoch).

    The monitored loss is the held-out soft cross-entropy, or the training loss when
    the data is too small to hold any out. The data order is drawn on the CPU, so it is
    the same on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(soft_labels, dtype=np.float32)).to(device)
    gate = Gate(x.shape[1], y.shape[1], hidden).to(device)
    gate.fit_input(x[train_index])
    optimizer = torch.optim.AdamW(gate.parameters(), lr=lr)
    train_x, train_y = x[train_index], y[train_index]
    history: list[dict] = []
    best = (float("inf"), 0, copy.deepcopy(gate.state_dict()))
    for epoch in range(1, epochs + 1):
        gate.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = soft_cross_entropy(gate(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        record = {"epoch": epoch, "train_loss": total / max(len(order), 1)}
        gate.eval()
        with torch.no_grad():
            if len(heldout_index):
                record["heldout_loss"] = float(soft_cross_entropy(gate(x[heldout_index]), y[heldout_index]))
        history.append(record)
        monitored = record.get("heldout_loss", record["train_loss"])
        if monitored < best[0] - 1e-6:
            best = (monitored, epoch, copy.deepcopy(gate.state_dict()))
        elif epoch - best[1] >= patience:
            log.info("early stop at epoch %d (best %d, loss %.4f)", epoch, best[1], best[0])
            break
    gate.load_state_dict(best[2])
    gate.eval()
    return gate.cpu(), history, best[1]


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows: cluster; columns: the gate's choice."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix.tolist()


def plot_confusion(matrix: list[list[int]], path) -> bytes:
    from whisper_moe.plots import plt, save_figure

    values = np.array(matrix)
    size = max(3.0, 0.6 * len(values) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(values, cmap="Blues")
    ax.set(title="gate vs clusters (held-out)", xlabel="gate's expert", ylabel="cluster",
           xticks=range(len(values)), yticks=range(len(values)))
    for (r, c), value in np.ndenumerate(values):
        ax.text(c, r, str(value), ha="center", va="center",
                color="white" if value > values.max() / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def run(params: dict, embeddings_dir, cluster_dir, out_dir) -> dict:
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = params["pretrain_gate"]
    seed = int(params["seed"])
    embeddings, _ = artifacts.load_embeddings(embeddings_dir)
    labels, soft_labels, _ = artifacts.load_cluster_outputs(cluster_dir)
    if len(labels) != len(embeddings):
        raise ValueError(f"{cluster_dir}: {len(labels)} labels for {len(embeddings)} embeddings in "
                         f"{embeddings_dir}; rerun the cluster stage on these embeddings")
    num_experts = soft_labels.shape[1]
    hidden = int(params["model"]["gate_hidden"])
    train_index, heldout_index = heldout_split(labels, HELDOUT_FRACTION, seed)
    gate, history, best_epoch = train_gate(
        embeddings, soft_labels, train_index, heldout_index, hidden, int(settings["epochs"]),
        int(settings["batch_size"]), float(settings["lr"]), int(settings["patience"]), seed,
        device=resolve_device(params["runtime"]["device"]))

    with torch.no_grad():
        logits = gate(torch.from_numpy(embeddings))
    predicted = logits.argmax(-1).numpy()
    evaluated = heldout_index if len(heldout_index) else train_index
    metrics = {
        "num_experts": int(num_experts),
        "input_dim": int(embeddings.shape[1]),
        "hidden_dim": hidden,
        "train_size": len(train_index),
        "heldout_size": len(heldout_index),
        "accuracy": float((predicted[evaluated] == labels[evaluated]).mean()),
        "accuracy_on": "heldout" if len(heldout_index) else "train (too few embeddings to hold out)",
        "train_accuracy": float((predicted[train_index] == labels[train_index]).mean()),
        "soft_target_agreement": float((predicted == soft_labels.argmax(1)).mean()),
        "heldout_kl": (kl_divergence(logits[heldout_index], torch.from_numpy(soft_labels[heldout_index]))
                       if len(heldout_index) else None),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "categories": [f"expert {e}" for e in range(num_experts)],
        "confusion_matrix": confusion_matrix(labels[evaluated], predicted[evaluated], num_experts),
        "confusion_matrix_all": confusion_matrix(labels, predicted, num_experts),
        "history": history,
    }
    artifacts.save_gate_state(out_dir, gate.state_dict(), embeddings.shape[1], num_experts, hidden)
    write_json_atomic(out_dir / artifacts.GATE_METRICS, metrics)
    plot_confusion(metrics["confusion_matrix"], out_dir / artifacts.GATE_CONFUSION_PLOT)
    log.info("gate: %s accuracy %.3f after %d epochs (best %d)", metrics["accuracy_on"],
             metrics["accuracy"], len(history), best_epoch)
    return {"gate": str(out_dir / artifacts.GATE_WEIGHTS), "metrics": str(out_dir / artifacts.GATE_METRICS),
            "confusion": str(out_dir / artifacts.GATE_CONFUSION_PLOT), "accuracy": metrics["accuracy"],
            "num_experts": int(num_experts)}
