"""Cluster stage: the embeddings decide the experts.

Reads the embed stage's `embeddings.npy` + `index.jsonl`; writes `labels.npy` (int64
[N]), `soft_labels.npy` (float32 [N, k], calibrated: see whisper_moe.clustering),
`cluster_report.json` (k and how it was chosen with each k's silhouette, cluster
sizes, calibration, and when the data has groups the adjusted Rand index, the
group x cluster table, `group_to_expert`, the majority cluster of each group used
for oracle routing, and `group_probe`, how well a linear probe recovers the group from
the gate input on held-out speakers) and `scatter.png` (PCA 2-D, by cluster and by group).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from whisper_moe import artifacts, clustering
from whisper_moe.config import check_params
from whisper_moe.fsio import write_json_atomic

log = logging.getLogger("whisper_moe.cluster")


def run(params: dict, embeddings_dir, out_dir) -> dict:
    params = check_params(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = params["cluster"]
    seed = int(params["seed"])
    embeddings, index = artifacts.load_embeddings(embeddings_dir)
    features, pca_info = clustering.reduce_embeddings(embeddings, int(settings["pca_components"]), seed)
    result = clustering.cluster_embeddings(
        features, str(settings["algorithm"]), params["model"]["num_experts"],
        int(settings["min_clusters"]), int(settings["max_clusters"]),
        int(settings["min_cluster_size"]), seed,
    )
    artifacts.save_cluster_labels(out_dir, result.labels, result.soft_labels)
    groups = [row.get("group", "") for row in index]
    report = build_report(result, groups, pca_info, len(embeddings))
    if clustering.has_group_labels(groups):
        speakers = [str(row.get("speaker", row["id"])) for row in index]
        report["group_probe"] = clustering.group_probe(embeddings, groups, speakers, seed)
    outputs = {"labels": str(out_dir / artifacts.CLUSTER_LABELS),
               "soft_labels": str(out_dir / artifacts.CLUSTER_SOFT_LABELS),
               "report": str(out_dir / artifacts.CLUSTER_REPORT), "num_clusters": result.num_clusters}
    if settings.get("plot", True):
        with_groups = groups if clustering.has_group_labels(groups) else None
        clustering.plot_clusters(clustering.points_2d(features), result.labels, with_groups,
                                 out_dir / artifacts.CLUSTER_SCATTER)
        outputs["scatter"] = str(out_dir / artifacts.CLUSTER_SCATTER)
    write_json_atomic(out_dir / artifacts.CLUSTER_REPORT, report)
    log.info("%s: %d clusters (%s), sizes %s, silhouette %s, ARI with groups %s",
             result.algorithm, result.num_clusters, result.k_selection, report["cluster_sizes"],
             _fmt(result.silhouette), _fmt(report.get("adjusted_rand_index")))
    if report["group_probe"]:
        log.info("a linear probe of the gate input tells the groups apart on held-out speakers "
                 "with accuracy %.3f (chance %.3f)", report["group_probe"]["accuracy"],
                 report["group_probe"]["chance"])
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
        "group_probe": None,
    }
    if clustering.has_group_labels(groups):
        table = clustering.group_cluster_table(groups, result.labels, result.num_clusters)
        report["adjusted_rand_index"] = clustering.adjusted_rand_index(groups, result.labels)
        report["group_cluster_table"] = table
        report["group_to_expert"] = clustering.majority_cluster(table)
    return report


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
