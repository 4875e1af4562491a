"""Plots people would rather look at than read: curves, WER per group, expert usage."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from whisper_moe.fsio import atomic_file  # noqa: E402


def save_figure(fig, path: str | Path | None) -> bytes:
    """PNG bytes of the figure, also written to `path` when given."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as stream:
            stream.write(data)
    return data


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def plot_training_curves(history: list[dict], path: str | Path | None) -> bytes:
    steps = [h for h in history if "ce_loss" in h]
    dev = [h for h in history if "dev_loss" in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    if steps:
        x = [h["step"] for h in steps]
        axes[0].plot(x, [h["ce_loss"] for h in steps], label="train CE")
    if dev:
        axes[0].plot([h["step"] for h in dev], [h["dev_loss"] for h in dev], "o-", label="dev CE")
    axes[0].set(title="loss", xlabel="optimizer step")
    axes[0].legend()
    if steps:
        axes[1].plot(x, [h["lb_loss"] for h in steps], label="load balance")
        axes[1].plot(x, [h["gate_entropy"] for h in steps], label="gate entropy")
        axes[1].legend()
        axes[2].plot(x, [h["lr"] for h in steps])
    axes[1].set(title="router", xlabel="optimizer step")
    axes[2].set(title="learning rate", xlabel="optimizer step")
    return save_figure(fig, path)


def plot_wer_per_group(per_group: dict[str, dict[str, float]], path: str | Path | None,
                       title: str = "WER per group") -> bytes:
    """Grouped bars: one bar per system (e.g. base, MoE, oracle) for each group."""
    systems = list(per_group)
    groups = sorted({g for values in per_group.values() for g in values})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 3.6))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        heights = [per_group[system].get(g, np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, heights, width, label=system)
    ax.set_xticks(np.arange(len(groups)) + width * (len(systems) - 1) / 2, groups, rotation=20)
    ax.set(title=title, ylabel="WER")
    ax.legend()
    return save_figure(fig, path)


def plot_expert_usage(usage: dict[str, list[float]], path: str | Path | None) -> bytes:
    """Heat map of the mean routing weight of each expert for each group."""
    groups = sorted(usage)
    matrix = np.array([usage[g] for g in groups]) if groups else np.zeros((0, 0))
    fig, ax = plt.subplots(figsize=(1.0 * max(matrix.shape[1], 2) + 3, 0.5 * max(len(groups), 2) + 1.5))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xticks(range(matrix.shape[1] if matrix.size else 0))
    ax.set(title="expert usage per group (mean routing weight)", xlabel="expert")
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)
