"""Clustering pooled utterance embeddings into expert groups: the numbers, no files.

The cluster stage (whisper_moe.stages.cluster) reads and writes; this module only
computes: standardise + PCA, k-means / spectral / HDBSCAN labels, the number of
clusters by silhouette, calibrated soft labels, and the group x cluster tables.

Soft labels. Each utterance gets a softmax over its negative distances to the
cluster centroids, `p_ij = softmax_j(-d_ij / (T * mean(d)))`. The temperature T is
fitted so that the mean top probability equals the clustering's own confidence:
the mean over utterances of `1/k + (1 - 1/k) * max(silhouette_i, 0)`. A point deep
inside a well-separated cluster (silhouette near 1) counts as certain, a point
between clusters (silhouette <= 0) as no better than chance. So soft labels are
sharp where clusters are clear and soft where they overlap, and never flat by
construction (a fixed temperature would be flat or one-hot depending on the scale
of the embeddings).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import HDBSCAN, KMeans, SpectralClustering
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    pairwise_distances,
    silhouette_samples,
    silhouette_score,
)
from sklearn.preprocessing import StandardScaler

from whisper_moe.errors import WhisperMoeError

log = logging.getLogger("whisper_moe.cluster")

ALGORITHMS = ("spectral", "kmeans", "hdbscan")
SILHOUETTE_SAMPLE_SIZE = 5000  # silhouette is O(n^2): score a sample on large sets


class ClusteringError(WhisperMoeError, ValueError):
    """The embeddings cannot be clustered as asked; the message says what to change."""


@dataclass
class Clustering:
    """Everything the cluster stage reports about one clustering."""

    labels: np.ndarray  # int64 [N], 0 = largest cluster
    soft_labels: np.ndarray  # float32 [N, k], rows sum to 1
    num_clusters: int
    algorithm: str
    k_scores: dict[int, float] = field(default_factory=dict)  # silhouette of each k tried
    k_selection: str = "fixed"  # fixed | silhouette | hdbscan
    silhouette: float | None = None
    calibration: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # algorithm-specific (HDBSCAN retries, ...)


# ------------------------------------------------------------------------ preprocessing


def reduce_embeddings(embeddings: np.ndarray, pca_components: int, seed: int) -> tuple[np.ndarray, dict]:
    """Standardise every dimension, then PCA: distances weigh all dimensions alike.

    Returns the reduced features (components ordered by variance, so the first two
    columns are the 2-D PCA view) and what was kept.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ClusteringError(f"need at least 2 embeddings of shape [N, d], got {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ClusteringError("embeddings contain NaN or inf; recompute them with the embed stage")
    standardised = StandardScaler().fit_transform(embeddings)
    components = max(1, min(int(pca_components), embeddings.shape[0], embeddings.shape[1]))
    pca = PCA(n_components=components, random_state=seed, svd_solver="full")
    reduced = pca.fit_transform(standardised)
    info = {"components": components,
            "explained_variance": float(pca.explained_variance_ratio_.sum())}
    return reduced, info


# ------------------------------------------------------------------------------- labels


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids ordered by size (0 = largest, ties by first appearance): stable names."""
    labels = np.asarray(labels)
    ids, first_index, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first_index[i]))
    mapping = {int(ids[i]): new for new, i in enumerate(order)}
    return np.array([mapping[int(x)] for x in labels], dtype=np.int64)


def fit_labels(features: np.ndarray, algorithm: str, num_clusters: int, seed: int) -> np.ndarray:
    """k-means or spectral labels with exactly `num_clusters` clusters requested."""
    n = len(features)
    if not 1 <= num_clusters <= n:
        raise ClusteringError(f"cannot make {num_clusters} clusters from {n} embeddings")
    if num_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    if algorithm == "kmeans":
        model = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
        return relabel_by_size(model.fit_predict(features))
    if algorithm == "spectral":
        # A k-nearest-neighbour graph: an RBF kernel with a fixed width would be all
        # zeros (or all ones) depending on the scale of the reduced embeddings.
        model = SpectralClustering(
            n_clusters=num_clusters, affinity="nearest_neighbors",
            n_neighbors=max(2, min(10, n - 1)), assign_labels="cluster_qr", random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            # raised whenever N == d (square input), which is fine here
            warnings.filterwarnings("ignore", message="The spectral clustering API has changed")
            return relabel_by_size(model.fit_predict(features))
    raise ClusteringError(f"clustering algorithm {algorithm!r}: expected one of {ALGORITHMS}")


def silhouette(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Mean silhouette (-1..1); a sample of the points on large sets."""
    k = len(np.unique(labels))
    if not 2 <= k <= len(features) - 1:
        return float("nan")
    sample = SILHOUETTE_SAMPLE_SIZE if len(features) > SILHOUETTE_SAMPLE_SIZE else None
    return float(silhouette_score(features, labels, sample_size=sample, random_state=seed))


def choose_num_clusters(features: np.ndarray, algorithm: str, min_clusters: int, max_clusters: int,
                        seed: int) -> tuple[int, dict[int, float], np.ndarray]:
    """The k in [min_clusters, max_clusters] with the highest silhouette (ties: smaller k).

    Returns (k, silhouette of every k tried, labels of the chosen k).
    """
    upper = min(int(max_clusters), len(features) - 1)
    lower = max(2, int(min_clusters))
    if lower > upper:
        raise ClusteringError(
            f"cannot choose a number of clusters between {min_clusters} and {max_clusters} from "
            f"{len(features)} embeddings (silhouette needs 2 <= k <= N-1); embed more utterances "
            "(raise embed.embedding_percent) or set model.num_experts (the number of clusters)"
        )
    scores: dict[int, float] = {}
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(lower, upper + 1):
        labels = fit_labels(features, algorithm, k, seed)
        score = silhouette(features, labels, seed)
        scores[k] = score
        log.info("k=%d: silhouette %.4f", k, score)
        if np.isfinite(score) and (best is None or score > best[0]):
            best = (score, k, labels)
    if best is None:
        raise ClusteringError(f"no k between {lower} and {upper} gave a valid silhouette")
    return best[1], scores, best[2]


def cluster_centroids(features: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    return np.stack([features[labels == c].mean(0) for c in range(num_clusters)])


def merge_closest_clusters(features: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
    """Merge the two clusters with the closest centroids until `target` remain."""
    labels = relabel_by_size(labels)
    while len(np.unique(labels)) > target:
        k = len(np.unique(labels))
        centroids = cluster_centroids(features, labels, k)
        distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        a, b = np.unravel_index(np.argmin(distances), distances.shape)
        labels = relabel_by_size(np.where(labels == max(a, b), min(a, b), labels))
    return labels


def hdbscan_labels(features: np.ndarray, min_cluster_size: int, min_clusters: int,
                   max_clusters: int) -> tuple[np.ndarray, dict]:
    """HDBSCAN (scikit-learn's), then noise to the nearest cluster and merges down to max.

    HDBSCAN finds its own number of clusters. When it finds fewer than `min_clusters`
    the minimum cluster size is halved and it runs again (down to 2); when it finds
    more than `max_clusters` the closest clusters are merged.
    """
    size = max(2, int(min_cluster_size))
    attempts = []
    while True:
        raw = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(features)
        found = len(set(raw.tolist()) - {-1})
        attempts.append({"min_cluster_size": size, "clusters": found,
                         "noise": int((raw == -1).sum())})
        if found >= min_clusters or size == 2:
            break
        size = max(2, size // 2)
    if found < max(1, min_clusters):
        raise ClusteringError(
            f"HDBSCAN found {found} clusters (need at least {min_clusters}) even with "
            f"min_cluster_size=2 on {len(features)} embeddings; use --clustering-algorithm "
            "spectral or kmeans, or embed more utterances"
        )
    clustered = raw != -1
    labels = relabel_by_size(raw[clustered])
    full = np.empty(len(features), dtype=np.int64)
    full[clustered] = labels
    if (~clustered).any():
        centroids = cluster_centroids(features[clustered], labels, found)
        distances = pairwise_distances(features[~clustered], centroids)
        full[~clustered] = distances.argmin(1)
    merged = merge_closest_clusters(features, full, max_clusters) if found > max_clusters else full
    details = {"attempts": attempts, "clusters_found": found,
               "noise_reassigned": int((~clustered).sum()),
               "merged_to": len(np.unique(merged)) if found > max_clusters else None}
    return relabel_by_size(merged), details


# --------------------------------------------------------------------------- soft labels


def silhouette_confidence(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Mean of 1/k + (1 - 1/k) * max(silhouette_i, 0): how sure the clustering is, 1/k..1."""
    k = len(np.unique(labels))
    if k < 2:
        return 1.0
    if k > len(features) - 1:
        return 1.0 / k
    index = np.arange(len(features))
    if len(features) > SILHOUETTE_SAMPLE_SIZE:
        index = np.random.default_rng(seed).choice(len(features), SILHOUETTE_SAMPLE_SIZE, replace=False)
        if len(np.unique(labels[index])) < 2:
            index = np.arange(len(features))
    scores = silhouette_samples(features[index], labels[index])
    return float(np.mean(1.0 / k + (1.0 - 1.0 / k) * np.clip(scores, 0.0, 1.0)))


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def fit_temperature(distances: np.ndarray, target_top_probability: float) -> float:
    """T with mean_i max_j softmax(-d_ij / T) == target (bisection on log T).

    The mean top probability falls monotonically from 1 (T -> 0) to 1/k (T -> inf).
    """
    k = distances.shape[1]
    target = float(np.clip(target_top_probability, 1.0 / k + 1e-6, 1.0 - 1e-6))

    def top(temperature: float) -> float:
        return float(softmax_rows(-distances / temperature).max(1).mean())

    low, high = np.log(1e-4), np.log(1e4)
    for _ in range(80):
        middle = 0.5 * (low + high)
        if top(float(np.exp(middle))) > target:
            low = middle
        else:
            high = middle
    return float(np.exp(0.5 * (low + high)))


def calibrated_soft_labels(features: np.ndarray, labels: np.ndarray, num_clusters: int,
                           seed: int) -> tuple[np.ndarray, dict]:
    """Soft labels [N, k] from distances to centroids, calibrated to the silhouette (see top)."""
    n = len(features)
    if num_clusters == 1:
        return np.ones((n, 1), dtype=np.float32), {"method": "single cluster"}
    centroids = cluster_centroids(features, labels, num_clusters)
    distances = pairwise_distances(features, centroids)
    distances = distances / max(float(distances.mean()), 1e-12)  # unit-free temperature
    target = silhouette_confidence(features, labels, seed)
    temperature = fit_temperature(distances, target)
    soft = softmax_rows(-distances / temperature).astype(np.float32)
    info = {
        "method": "softmax(-distance to centroid / T); T fitted so the mean top probability "
                  "equals the mean silhouette confidence 1/k + (1-1/k)*max(s_i, 0)",
        "temperature": temperature,
        "target_confidence": target,
        "mean_top_probability": float(soft.max(1).mean()),
        "agreement_with_hard_labels": float((soft.argmax(1) == labels).mean()),
    }
    return soft, info


# --------------------------------------------------------------------------- the whole


def cluster_embeddings(features: np.ndarray, algorithm: str, num_clusters: int | None,
                       min_clusters: int, max_clusters: int, min_cluster_size: int,
                       seed: int) -> Clustering:
    """Hard and soft labels for reduced features; k fixed, by silhouette, or by HDBSCAN."""
    if algorithm not in ALGORITHMS:
        raise ClusteringError(f"clustering algorithm {algorithm!r}: expected one of {ALGORITHMS}")
    n = len(features)
    if num_clusters is not None:
        num_clusters = int(num_clusters)
        if num_clusters < 1 or num_clusters > n:
            raise ClusteringError(
                f"model.num_experts={num_clusters} clusters but there are {n} embeddings; embed more "
                "utterances (raise embed.embedding_percent) or ask for fewer experts"
            )
    scores: dict[int, float] = {}
    details: dict = {}
    if algorithm == "hdbscan":
        wanted_min = num_clusters if num_clusters is not None else int(min_clusters)
        wanted_max = num_clusters if num_clusters is not None else int(max_clusters)
        labels, details = hdbscan_labels(features, min_cluster_size, wanted_min, wanted_max)
        selection = "fixed" if num_clusters is not None else "hdbscan"
    elif num_clusters is not None:
        labels = fit_labels(features, algorithm, num_clusters, seed)
        selection = "fixed"
    else:
        _, scores, labels = choose_num_clusters(features, algorithm, min_clusters, max_clusters, seed)
        selection = "silhouette"
    k = len(np.unique(labels))
    if num_clusters is not None and k != num_clusters:
        raise ClusteringError(
            f"{algorithm} produced {k} non-empty clusters where {num_clusters} were asked for "
            "(duplicate embeddings?); try --clustering-algorithm kmeans"
        )
    soft, calibration = calibrated_soft_labels(features, labels, k, seed)
    return Clustering(labels=labels, soft_labels=soft, num_clusters=k, algorithm=algorithm,
                      k_scores=scores, k_selection=selection, silhouette=silhouette(features, labels, seed),
                      calibration=calibration, details=details)


# ------------------------------------------------------------------------ group tables


def group_cluster_table(groups: list[str], labels: np.ndarray, num_clusters: int) -> dict[str, list[int]]:
    """{group: utterances of that group in each cluster}."""
    table: dict[str, list[int]] = {}
    for group, label in zip(groups, labels):
        table.setdefault(group, [0] * num_clusters)[int(label)] += 1
    return dict(sorted(table.items()))


def majority_cluster(table: dict[str, list[int]]) -> dict[str, int]:
    """Each group's most frequent cluster (ties: the lower id): the oracle routing table."""
    return {group: int(np.argmax(counts)) for group, counts in table.items()}


def adjusted_rand_index(groups: list[str], labels: np.ndarray) -> float:
    return float(adjusted_rand_score(groups, labels))


def has_group_labels(groups: list[str]) -> bool:
    """Whether the manifest carried real groups (more than one, none empty)."""
    return len(set(groups)) > 1 and all(groups)


def group_probe(embeddings: np.ndarray, groups: list[str], speakers: list[str], seed: int,
                max_folds: int = 5) -> dict | None:
    """How well a linear probe tells the groups apart from the gate input, on speakers it
    never saw: the ceiling of what any gate could learn per group.

    A standardised logistic regression is fitted on most speakers and scored on the
    rest (speaker-grouped folds, every speaker held out once). `chance` is the share of
    the most common group, what guessing it every time would score. None when there are
    not two groups with two speakers each.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline

    speakers_of: dict[str, set] = {}
    for group, speaker in zip(groups, speakers):
        speakers_of.setdefault(group, set()).add(speaker)
    if len(speakers_of) < 2 or min(len(s) for s in speakers_of.values()) < 2:
        return None
    labels = np.asarray(groups)
    folds = min(max_folds, len(set(speakers)))
    correct = np.zeros(len(labels), dtype=bool)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(embeddings, labels, groups=speakers):
        if len(set(labels[train])) < 2:
            continue  # a fold without two groups to learn: its speakers count as missed
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(embeddings[train], labels[train])
        correct[test] = probe.predict(embeddings[test]) == labels[test]
    names, counts = np.unique(labels, return_counts=True)
    return {
        "accuracy": float(correct.mean()),
        "chance": float(counts.max() / counts.sum()),
        "per_group": {str(name): float(correct[labels == name].mean()) for name in names},
        "held_out_speaker_folds": folds,
        "utterances": int(len(labels)),
    }


# -------------------------------------------------------------------------------- plot


def plot_clusters(points_2d: np.ndarray, labels: np.ndarray, groups: list[str] | None, path) -> bytes:
    """PCA 2-D scatter coloured by cluster and (second panel) by group."""
    from whisper_moe.plots import plt, save_figure

    panels = [("cluster", [f"cluster {int(x)}" for x in labels])]
    if groups is not None:
        panels.append(("group", list(groups)))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels):
        for i, name in enumerate(sorted(set(names))):
            mask = np.array([n == name for n in names])
            ax.scatter(points_2d[mask, 0], points_2d[mask, 1], s=12, alpha=0.75, label=name,
                       color=plt.get_cmap("tab10" if len(set(names)) <= 10 else "tab20")(i % 20))
        ax.set(title=f"embeddings (PCA 2-D) by {title}", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    return save_figure(fig, path)


def points_2d(features: np.ndarray) -> np.ndarray:
    """The first two PCA components (zero-padded when there is only one)."""
    if features.shape[1] >= 2:
        return features[:, :2]
    return np.concatenate([features, np.zeros((len(features), 1))], axis=1)
