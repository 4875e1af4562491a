"""Gate and expert pretraining, and the pretrained pipeline into joint training and oracle evaluation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import make_blobs

from whisper_moe import artifacts
from whisper_moe.model.gate import Gate
from whisper_moe.model.io import build_moe, load_moe, moe_config_from_params
from whisper_moe.stages import cluster, common, pretrain_experts, pretrain_gate


def write_embeddings(folder, points, groups):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", points.astype(np.float32))
    rows = [{"id": f"u{i}", "group": g, "speaker": "s", "audio_filepath": f"/a/{i}.wav"}
            for i, g in enumerate(groups)]
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_heldout_split_is_stratified_and_disjoint():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    train, heldout = pretrain_gate.heldout_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(16))
    assert np.bincount(labels[heldout], minlength=3).tolist() == [2, 1, 0]


def test_gate_learns_separable_clusters(tiny_params, tmp_path):
    points, truth = make_blobs(n_samples=150, centers=3, n_features=64, cluster_std=1.0,
                               center_box=(-4, 4), random_state=0)
    groups = [f"g{t}" for t in truth]
    embeddings_dir = write_embeddings(tmp_path / "embed", points, groups)
    params = copy.deepcopy(tiny_params)
    params["cluster"]["algorithm"] = "kmeans"
    params["model"]["num_experts"] = 3  # k of the clustering
    params["pretrain_gate"].update(epochs=40, batch_size=32, lr=3e-3, patience=5)
    cluster.run(params, embeddings_dir, tmp_path / "cluster")
    outputs = pretrain_gate.run(params, embeddings_dir, tmp_path / "cluster", tmp_path / "gate")
    metrics = json.loads((tmp_path / "gate" / "gate_metrics.json").read_text())
    assert outputs["accuracy"] == metrics["accuracy"] >= 0.95
    assert metrics["accuracy_on"] == "heldout" and metrics["heldout_size"] == 30
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 30
    assert metrics["categories"] == ["expert 0", "expert 1", "expert 2"]
    losses = [h["heldout_loss"] for h in metrics["history"]]
    assert min(losses) < losses[0] and metrics["best_epoch"] == 1 + losses.index(min(losses))
    assert (tmp_path / "gate" / "confusion.png").stat().st_size > 1000
    state, config = artifacts.load_gate_state(tmp_path / "gate")
    assert config == {"input_dim": 64, "num_experts": 3, "hidden_dim": 16}
    assert state["net.0.weight"].shape == (16, 64)


def fake_cluster_and_gate(tmp_path, num_experts, chosen_expert, d_model=64, hidden=16):
    """A cluster folder with k experts and a gate that sends every utterance to one expert."""
    cluster_dir = tmp_path / "cluster"
    cluster_dir.mkdir()
    np.save(cluster_dir / "labels.npy", np.zeros(4, dtype=np.int64))
    np.save(cluster_dir / "soft_labels.npy", np.full((4, num_experts), 1 / num_experts, np.float32))
    table = {"en-us": 0, "en-gb-scotland": 1, "en-029": 2}
    (cluster_dir / "cluster_report.json").write_text(json.dumps({"group_to_expert": table}))
    gate = Gate(d_model, num_experts, hidden)
    torch.nn.init.zeros_(gate.net[2].weight)
    with torch.no_grad():
        gate.net[2].bias.copy_(torch.nn.functional.one_hot(torch.tensor(chosen_expert), num_experts) * 5.0)
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    artifacts.save_gate_state(gate_dir, gate.state_dict(), d_model, num_experts, hidden)
    return cluster_dir, gate_dir, table


def expert_params(params):
    params = copy.deepcopy(params)
    params["pretrain_experts"].update(epochs=1, batch_size=2, lr=5e-3)
    params["model"]["lora"]["dropout"] = 0.0
    return params


def test_pretrain_experts_changes_only_the_experts_that_got_utterances(tiny_params, tiny_corpus,
                                                                       tmp_path):
    params = expert_params(tiny_params)
    cluster_dir, gate_dir, table = fake_cluster_and_gate(tmp_path, 3, chosen_expert=1)
    metrics = pretrain_experts.run(params, tiny_corpus / "train.jsonl", cluster_dir, gate_dir,
                                   tmp_path / "experts")
    assert metrics["utterances_per_expert"] == [0, 6, 0]
    assert metrics["experts_without_utterances"] == [0, 2]
    assert metrics["optimizer_steps"] == 2

    trained, _ = load_moe(metrics["checkpoint"])
    assert trained.config.group_to_expert == table and trained.config.num_experts == 3
    initial, _ = build_moe(moe_config_from_params(params, 3), seed=params["seed"])
    gate_state = load_file(gate_dir / "gate.safetensors")
    for key, value in trained.gate.state_dict().items():
        assert torch.equal(value, gate_state[key]), key  # the pretrained gate is kept as is
    changed = False
    for (name, layer), (_, before) in zip(trained.expert_layers(), initial.expert_layers()):
        for expert in (0, 2):
            assert torch.equal(layer.expert_A(expert), before.expert_A(expert)), name
            assert torch.equal(layer.expert_B(expert), before.expert_B(expert)), name
        changed |= not torch.equal(layer.expert_B(1), before.expert_B(1))
    assert changed
    for key, value in trained.base.state_dict().items():
        if "lora" not in key:
            assert torch.equal(value, initial.base.state_dict()[key]), key


def test_pretrain_experts_resumes_to_the_same_weights(tiny_params, tiny_corpus, tmp_path,
                                                      monkeypatch):
    from whisper_moe.training.runtime import StopRequest, TrainingInterrupted

    params = expert_params(tiny_params)
    params["model"]["lora"]["dropout"] = 0.05  # resume must replay the dropout masks too
    cluster_dir, gate_dir, _ = fake_cluster_and_gate(tmp_path, 3, chosen_expert=2)
    straight = pretrain_experts.run(params, tiny_corpus / "train.jsonl", cluster_dir, gate_dir,
                                    tmp_path / "straight")

    class StopAtFirstStep(StopRequest):
        def __bool__(self):
            self.signal_name = "SIGTERM"
            return True

    monkeypatch.setattr(common, "StopRequest", StopAtFirstStep)
    with pytest.raises(TrainingInterrupted):
        pretrain_experts.run(params, tiny_corpus / "train.jsonl", cluster_dir, gate_dir,
                             tmp_path / "resumed")
    monkeypatch.setattr(common, "StopRequest", StopRequest)
    resumed = pretrain_experts.run(params, tiny_corpus / "train.jsonl", cluster_dir, gate_dir,
                                   tmp_path / "resumed", resume=True)
    assert resumed["optimizer_steps"] == straight["optimizer_steps"] == 2
    a = load_file(f"{straight['checkpoint']}/model.safetensors")
    b = load_file(f"{resumed['checkpoint']}/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_gate_of_another_size_is_refused(tiny_params, tiny_corpus, tmp_path):
    cluster_dir, gate_dir, _ = fake_cluster_and_gate(tmp_path, 3, chosen_expert=0)
    (gate_dir / "gate_config.json").write_text(json.dumps(
        {"input_dim": 1280, "num_experts": 3, "hidden_dim": 16}))
    with pytest.raises(ValueError, match="rerun embed/cluster/pretrain-gate"):
        pretrain_experts.run(expert_params(tiny_params), tiny_corpus / "train.jsonl", cluster_dir,
                             gate_dir, tmp_path / "experts")


def test_pretrained_pipeline_trains_jointly_from_pretraining_and_evaluates_oracle(
        tiny_params, tmp_path):
    """pipeline (no --skip-pretraining, --num-experts 3): embed -> ... -> train -> evaluate."""
    from whisper_moe.model.moe import MoEConfig
    from whisper_moe.stages import pipeline

    params = expert_params(tiny_params)
    params["embed"].update(embedding_percent=100.0, batch_size=2)
    params["train"]["epochs"] = 1
    params["cluster"]["algorithm"] = "kmeans"
    out = tmp_path / "run"
    summary = pipeline.run(params, out, skip_pretraining=False)
    report = json.loads((out / "cluster" / "cluster_report.json").read_text())
    assert report["num_clusters"] == 3 and report["k_selection"] == "fixed"
    init = MoEConfig.load(out / "pretrain_experts" / "checkpoint")
    assert init.num_experts == 3 and init.group_to_expert == report["group_to_expert"]
    final = MoEConfig.load(summary["checkpoint"])
    assert final.group_to_expert == report["group_to_expert"]
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert {"moe", "base", "oracle"} <= set(metrics)
    assert set(metrics["oracle"]["per_group"]) == set(report["group_to_expert"])
    assert all((out / stage / "stage_done.json").exists() for stage in (
        "embed", "cluster", "pretrain_gate", "pretrain_experts"))


def test_expert_pretraining_epochs_count_toward_the_joint_training_budget():
    import copy

    from whisper_moe.config import DEFAULT_PARAMS
    from whisper_moe.stages.common import joint_training_epochs

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["train"]["epochs"], params["pretrain_experts"]["epochs"] = 5, 2
    assert joint_training_epochs(params, after_pretraining=False) == 5
    assert joint_training_epochs(params, after_pretraining=True) == 3
    params["pretrain_experts"]["epochs"] = 9
    assert joint_training_epochs(params, after_pretraining=True) == 1  # never none
    params["pretrain_experts"]["count_toward_train_epochs"] = False
    assert joint_training_epochs(params, after_pretraining=True) == 5
