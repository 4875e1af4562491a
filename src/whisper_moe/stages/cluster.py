"""Cluster stage: the embeddings decide the experts.

Reads the embed stage's `embeddings.npy` + `index.jsonl`; writes `labels.npy` (int64
[N]), `soft_labels.npy` (float32 [N, k], calibrated: see whisper_moe.clustering),
`cluster_report.json` (k and how it was chosen with each k's silhouette, cluster
sizes, calibration, and when the data has groups the adjusted Rand index, the
group x cluster table and `group_to_expert`, the majority cluster of each group used
for oracle routing) and `scatter.png` (PCA 2-D, by cluster and by group).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from whisper_moe import clustering
from whisper_moe.config import check_params
from whisper_moe.stages.common import write_json
from whisper_moe.stages.embed import load_embeddings

log = logging.getLogger("whisper_moe.cluster")

LABELS_NAME = "labels.npy"
SOFT_LABELS_NAME = "soft_labels.npy"
REPORT_NAME = "cluster_report.json"
SCATTER_NAME = "scatter.png"


def run(params: dict, embeddings_dir, out_dir) -> dict:
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = params["cluster"]
    seed = int(params["seed"])
    embeddings, index = load_embeddings(embeddings_dir)
    features, pca_info = clustering.reduce_embeddings(embeddings, int(settings["pca_components"]), seed)
    result = clustering.cluster_embeddings(
        features, str(settings["algorithm"]), params["model"]["num_experts"],
        int(settings["min_clusters"]), int(settings["max_clusters"]),
        int(settings["min_cluster_size"]), seed,
    )
    np.save(out_dir / LABELS_NAME, result.labels)
    np.save(out_dir / SOFT_LABELS_NAME, result.soft_labels)
    groups = [row.get("group", "") for row in index]
    report = build_report(result, groups, pca_info, len(embeddings))
    outputs = {"labels": str(out_dir / LABELS_NAME), "soft_labels": str(out_dir / SOFT_LABELS_NAME),
               "report": str(out_dir / REPORT_NAME), "num_clusters": result.num_clusters}
    if settings.get("plot", True):
        with_groups = groups if clustering.has_group_labels(groups) else None
        clustering.plot_clusters(clustering.points_2d(features), result.labels, with_groups,
                                 out_dir / SCATTER_NAME)
        outputs["scatter"] = str(out_dir / SCATTER_NAME)
    write_json(out_dir / REPORT_NAME, report)
    log.info("%s: %d clusters (%s), sizes %s, silhouette %s, ARI with groups %s",
             result.algorithm, result.num_clusters, result.k_selection, report["cluster_sizes"],
             _fmt(result.silhouette), _fmt(report.get("adjusted_rand_index")))
    return outputs


def build_report(result: clustering.Clustering, groups: list[str], pca_info: dict, count: int) -> dict:
    report = {
        "algorithm": result.algorithm,
        "num_clusters": result.num_clusters,
        "k_selection": result.k_selection,
        "k_scores": {str(k): _finite(s) for k, s in result.k_scores.items()},
        "silhouette": _finite(result.silhouette),
        "cluster_sizes": np.bincount(result.labels, minlength=result.num_clusters).tolist(),
        "embeddings": count,
        "pca": pca_info,
        "soft_labels": result.calibration,
        "details": result.details,
        "adjusted_rand_index": None,
        "group_cluster_table": None,
        "group_to_expert": None,
    }
    if clustering.has_group_labels(groups):
        table = clustering.group_cluster_table(groups, result.labels, result.num_clusters)
        report["adjusted_rand_index"] = clustering.adjusted_rand_index(groups, result.labels)
        report["group_cluster_table"] = table
        report["group_to_expert"] = clustering.majority_cluster(table)
    return report


def load_cluster_outputs(cluster_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """(hard labels [N], soft labels [N, k], report) of a cluster stage folder."""
    cluster_dir = Path(cluster_dir)
    paths = [cluster_dir / name for name in (LABELS_NAME, SOFT_LABELS_NAME, REPORT_NAME)]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `whisper-moe cluster --out {cluster_dir}` first")
    labels = np.load(paths[0], allow_pickle=False)
    soft = np.load(paths[1], allow_pickle=False)
    report = json.loads(paths[2].read_text())
    return labels, soft, report


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
