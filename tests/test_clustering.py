"""Clustering: right clusters on separated blobs, k by silhouette, calibrated soft labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from whisper_moe import artifacts, clustering
from whisper_moe.stages import cluster


def blobs(centers=4, std=0.6, n=160, dim=24, seed=0):
    points, truth = make_blobs(n_samples=n, centers=centers, n_features=dim, cluster_std=std,
                               center_box=(-8, 8), random_state=seed)
    return points.astype(np.float32), truth


def reduced(points, seed=0):
    features, _ = clustering.reduce_embeddings(points, 10, seed)
    return features


@pytest.mark.parametrize("algorithm", ["kmeans", "spectral", "hdbscan"])
def test_separated_blobs_are_recovered(algorithm):
    points, truth = blobs()
    result = clustering.cluster_embeddings(reduced(points), algorithm, 4, 2, 8, 5, seed=0)
    assert result.num_clusters == 4
    assert clustering.adjusted_rand_index([str(t) for t in truth], result.labels) > 0.95
    assert result.labels.dtype == np.int64 and set(result.labels.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("algorithm", ["kmeans", "spectral"])
def test_silhouette_picks_the_true_number_of_clusters(algorithm):
    points, _ = blobs(centers=3, seed=1)
    result = clustering.cluster_embeddings(reduced(points), algorithm, None, 2, 6, 5, seed=0)
    assert result.k_selection == "silhouette"
    assert result.num_clusters == 3
    assert sorted(result.k_scores) == [2, 3, 4, 5, 6]
    assert max(result.k_scores, key=result.k_scores.get) == 3


def test_hdbscan_finds_k_itself_and_merges_down_to_a_fixed_k():
    points, truth = blobs(centers=4, seed=2)
    features = reduced(points)
    found = clustering.cluster_embeddings(features, "hdbscan", None, 2, 8, 5, seed=0)
    assert found.k_selection == "hdbscan" and found.num_clusters == 4
    merged = clustering.cluster_embeddings(features, "hdbscan", 2, 2, 8, 5, seed=0)
    assert merged.num_clusters == 2
    assert merged.details["clusters_found"] == 4 and merged.details["merged_to"] == 2
    # merging keeps each true blob whole
    for blob in range(4):
        assert len(set(merged.labels[truth == blob].tolist())) == 1


def test_soft_labels_are_calibrated_not_flat():
    points, _ = blobs()
    separated = clustering.cluster_embeddings(reduced(points), "kmeans", 4, 2, 8, 5, seed=0)
    soft = separated.soft_labels
    assert soft.shape == (160, 4) and soft.dtype == np.float32
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)
    top = soft.max(1).mean()
    assert 0.7 < top < 0.999  # confident, but not one-hot
    assert abs(top - separated.calibration["target_confidence"]) < 1e-3
    assert separated.calibration["agreement_with_hard_labels"] > 0.95
    # overlapping blobs: the clustering is less sure, and so are the soft labels
    points, _ = blobs(std=4.0)
    overlapping = clustering.cluster_embeddings(reduced(points), "kmeans", 4, 2, 8, 5, seed=0)
    assert 0.25 < overlapping.soft_labels.max(1).mean() < top


def test_fit_temperature_hits_the_target():
    distances = np.random.default_rng(0).random((50, 3))
    for target in (0.4, 0.6, 0.9):
        temperature = clustering.fit_temperature(distances, target)
        top = clustering.softmax_rows(-distances / temperature).max(1).mean()
        assert abs(top - target) < 1e-4


def test_group_tables_and_majority():
    groups = ["a", "a", "a", "b", "b", "c"]
    labels = np.array([0, 0, 1, 1, 1, 0])
    table = clustering.group_cluster_table(groups, labels, 2)
    assert table == {"a": [2, 1], "b": [0, 2], "c": [1, 0]}
    assert clustering.majority_cluster(table) == {"a": 0, "b": 1, "c": 0}
    assert clustering.has_group_labels(groups) and not clustering.has_group_labels(["", ""])


def test_too_many_clusters_for_the_data_is_a_clear_error():
    points, _ = blobs(n=6)
    with pytest.raises(clustering.ClusteringError, match="embedding_percent"):
        clustering.cluster_embeddings(reduced(points), "kmeans", 10, 2, 8, 5, seed=0)
    with pytest.raises(clustering.ClusteringError, match="model.num_experts"):
        clustering.cluster_embeddings(reduced(points[:3]), "kmeans", None, 4, 8, 5, seed=0)


def write_embeddings(folder, points, groups):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", points.astype(np.float32))
    rows = [{"id": f"u{i}", "group": g, "speaker": f"s{i % 5}", "audio_filepath": f"/a/{i}.wav"}
            for i, g in enumerate(groups)]
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_cluster_stage_writes_labels_report_and_scatter(tmp_path):
    points, truth = blobs(centers=3, seed=3, n=90)
    groups = [["us", "scot", "carib"][t] for t in truth]
    embeddings_dir = write_embeddings(tmp_path / "embed", points, groups)
    import copy

    from whisper_moe.config import DEFAULT_PARAMS

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["cluster"].update(algorithm="spectral", min_clusters=2, max_clusters=5)
    outputs = cluster.run(params, embeddings_dir, tmp_path / "cluster")
    labels, soft, report = artifacts.load_cluster_outputs(tmp_path / "cluster")
    assert outputs["num_clusters"] == report["num_clusters"] == 3 == soft.shape[1]
    assert labels.shape == (90,) and soft.shape == (90, 3)
    assert report["adjusted_rand_index"] > 0.95
    assert set(report["k_scores"]) == {"2", "3", "4", "5"}
    assert sorted(report["group_to_expert"]) == ["carib", "scot", "us"]
    assert sorted(report["group_to_expert"].values()) == [0, 1, 2]  # one group per cluster
    assert sum(map(sum, report["group_cluster_table"].values())) == 90
    assert (tmp_path / "cluster" / "scatter.png").stat().st_size > 1000


def test_cluster_cli_with_seed_flags(tmp_path):
    from whisper_moe.cli import main

    points, _ = blobs(centers=2, seed=4, n=40)
    embeddings_dir = write_embeddings(tmp_path / "embed", points, [""] * 40)
    code = main(["cluster", "--params", str(defaults_only_params(tmp_path)), "--embeddings",
                 str(embeddings_dir), "--out", str(tmp_path / "c"), "--clustering-algorithm",
                 "kmeans", "--num-clusters", "2", "--no-plot"])
    assert code == 0
    report = json.loads((tmp_path / "c" / "cluster_report.json").read_text())
    assert report["algorithm"] == "kmeans" and report["num_clusters"] == 2
    assert report["group_to_expert"] is None  # no group labels
    assert not (tmp_path / "c" / "scatter.png").exists()


def defaults_only_params(folder):
    """A parameter file that sets nothing, so the built-in defaults apply."""
    path = folder / "defaults.yaml"
    path.write_text("{}\n")
    return path


def test_group_probe_sees_separable_groups_on_held_out_speakers_and_not_noise():
    rng = np.random.default_rng(0)
    groups = [g for g in ("a", "b", "c") for _ in range(4 * 3)]
    speakers = [f"{g}{i // 3}" for g in ("a", "b", "c") for i in range(4 * 3)]
    centres = {"a": 0.0, "b": 3.0, "c": -3.0}
    visible = np.stack([rng.normal(size=8) + centres[g] for g in groups])
    probe = clustering.group_probe(visible, groups, speakers, seed=0)
    assert probe["accuracy"] == 1.0 and probe["chance"] == pytest.approx(1 / 3)
    assert probe["held_out_speaker_folds"] == 5 and set(probe["per_group"]) == {"a", "b", "c"}
    noise = rng.normal(size=visible.shape)
    assert clustering.group_probe(noise, groups, speakers, seed=0)["accuracy"] < 0.7


def test_group_probe_needs_two_speakers_in_every_group():
    embeddings = np.zeros((4, 2))
    assert clustering.group_probe(embeddings, ["a", "a", "b", "b"], ["s1", "s2", "s3", "s3"], 0) is None
    assert clustering.group_probe(embeddings, ["a"] * 4, ["s1", "s2", "s3", "s4"], 0) is None
