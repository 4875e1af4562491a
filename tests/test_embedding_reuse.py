"""Expert pretraining and joint training reuse the embed stage's vectors as their gate inputs.

The reused cache must equal the computed one exactly (the CPU in float32), only the
utterances the embed output lacks are encoded (plus one, the proof that both pooled
alike), and an embed output that pooled otherwise is refused with a warning.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from whisper_moe import artifacts
from whisper_moe.model.moe import WhisperMoE
from whisper_moe.stages import common, embed
from whisper_moe.training.trainer import compute_pooled_cache

CPU = torch.device("cpu")


@pytest.fixture
def encoded(monkeypatch):
    """Utterances the MoE's encoder pooled (the gate-input cache's only cost), counted."""
    calls: list[int] = []
    real = WhisperMoE.pooled_embeddings

    def counting(self, features, frames):
        calls.append(len(features))
        return real(self, features, frames)

    monkeypatch.setattr(WhisperMoE, "pooled_embeddings", counting)
    return calls


def embedded(params, manifest, folder, percent=100.0, **runtime):
    params = json.loads(json.dumps(params))
    params["embed"].update(embedding_percent=percent, batch_size=2)
    params["runtime"].update(runtime)
    embed.run(params, manifest, folder)
    return folder


def training_data(params, manifest):
    model, tokenizer = common.build_training_model(params, 3, CPU)
    return model, common.training_set(params, manifest, tokenizer, model)


def test_reused_cache_equals_the_computed_one_and_encodes_one_utterance(tiny_params, tiny_corpus,
                                                                        tmp_path, encoded):
    manifest = tiny_corpus / "train.jsonl"
    embed_dir = embedded(tiny_params, manifest, tmp_path / "embed")
    model, dataset = training_data(tiny_params, manifest)
    computed = compute_pooled_cache(model, dataset, CPU, 4, None)
    assert sum(encoded) == len(dataset)
    encoded.clear()
    reused = compute_pooled_cache(model, dataset, CPU, 4, None, embeddings_dir=embed_dir)
    assert torch.equal(reused, computed)
    assert sum(encoded) == 1  # the probe: one reused utterance encoded again and compared


def test_only_the_utterances_the_embed_sample_lacks_are_encoded(tiny_params, tiny_corpus, tmp_path,
                                                               encoded):
    manifest = tiny_corpus / "train.jsonl"
    embed_dir = embedded(tiny_params, manifest, tmp_path / "embed", percent=50.0)
    held = len(artifacts.load_embeddings(embed_dir)[1])
    model, dataset = training_data(tiny_params, manifest)
    assert 0 < held < len(dataset)
    computed = compute_pooled_cache(model, dataset, CPU, 3, None)
    encoded.clear()
    reused = compute_pooled_cache(model, dataset, CPU, 3, None, embeddings_dir=embed_dir)
    assert torch.equal(reused, computed)
    assert sum(encoded) == len(dataset) - held + 1


def test_an_embed_output_pooled_in_another_precision_is_not_reused(tiny_params, tiny_corpus,
                                                                   tmp_path, encoded, caplog):
    manifest = tiny_corpus / "train.jsonl"
    embed_dir = embedded(tiny_params, manifest, tmp_path / "embed", precision="mixed")  # bf16 weights
    pooling = artifacts.read_json(embed_dir / artifacts.EMBED_REPORT)["plan"]["pooling"]
    assert pooling == {"base_model": tiny_params["model"]["base_model"], "weights_dtype": "bfloat16",
                       "autocast_dtype": None, "device_type": "cpu"}
    model, dataset = training_data(tiny_params, manifest)
    computed = compute_pooled_cache(model, dataset, CPU, 4, None)
    encoded.clear()
    reused = compute_pooled_cache(model, dataset, CPU, 4, None, embeddings_dir=embed_dir)
    assert torch.equal(reused, computed) and sum(encoded) == len(dataset)
    assert "not reused" in caplog.text


def test_changed_vectors_or_audio_files_are_encoded_again(tiny_params, tiny_corpus, tmp_path,
                                                          encoded, caplog):
    manifest = tiny_corpus / "train.jsonl"
    embed_dir = embedded(tiny_params, manifest, tmp_path / "embed")
    model, dataset = training_data(tiny_params, manifest)
    computed = compute_pooled_cache(model, dataset, CPU, 4, None)

    index = artifacts.read_jsonl(embed_dir / artifacts.EMBEDDING_INDEX)
    index[1]["audio_filepath"] = "/elsewhere/other.wav"  # same id, another recording
    (embed_dir / artifacts.EMBEDDING_INDEX).write_text("".join(json.dumps(r) + "\n" for r in index))
    encoded.clear()
    reused = compute_pooled_cache(model, dataset, CPU, 4, None, embeddings_dir=embed_dir)
    assert torch.equal(reused, computed) and sum(encoded) == 2  # that utterance and the probe
    assert "another audio file" in caplog.text

    vectors = np.load(embed_dir / artifacts.EMBEDDINGS)
    np.save(embed_dir / artifacts.EMBEDDINGS, vectors + 0.5)  # e.g. another base under the same name
    encoded.clear()
    reused = compute_pooled_cache(model, dataset, CPU, 4, None, embeddings_dir=embed_dir)
    assert torch.equal(reused, computed) and sum(encoded) == len(dataset)
    assert "pools differently" in caplog.text


@pytest.mark.slow
def test_expert_pretraining_and_joint_training_with_the_embed_output(tiny_params, tiny_corpus,
                                                                     tmp_path, encoded):
    """Same routing and weights as without it; the pretrained gate keeps its standardisation."""
    from safetensors.torch import load_file
    from test_pretrain import expert_params, fake_cluster_and_gate

    from whisper_moe.stages import pretrain_experts, train

    params = expert_params(tiny_params)
    params["train"]["epochs"] = 1
    manifest = tiny_corpus / "train.jsonl"
    embed_dir = embedded(params, manifest, tmp_path / "embed")
    cluster_dir, gate_dir, _ = fake_cluster_and_gate(tmp_path, 3, chosen_expert=1)
    runs = {}
    for name, reuse in (("computed", None), ("reused", embed_dir)):
        encoded.clear()
        experts = pretrain_experts.run(params, manifest, cluster_dir, gate_dir, tmp_path / name / "experts",
                                       embeddings_dir=reuse)
        pretraining_encoded = sum(encoded)
        trained = train.run(params, manifest, tiny_corpus / "dev.jsonl", tmp_path / name / "train",
                            init_dir=experts["checkpoint"], embeddings_dir=reuse)
        runs[name] = (experts, trained, pretraining_encoded)
    (experts, trained, computed_encoded), (_, reused_trained, reused_encoded) = runs["computed"], runs["reused"]
    assert reused_encoded == 1 and computed_encoded == experts["train_utterances"]
    assert (artifacts.load_assignments(tmp_path / "reused" / "experts")
            == artifacts.load_assignments(tmp_path / "computed" / "experts"))
    a = load_file(f"{trained['checkpoint']}/model.safetensors")
    b = load_file(f"{reused_trained['checkpoint']}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    gate = load_file(gate_dir / artifacts.GATE_WEIGHTS)
    for key in ("gate.input_mean", "gate.input_std"):
        assert torch.equal(b[key], gate[key.removeprefix("gate.")])


def test_the_embeddings_flag_reaches_both_stages(tmp_path, monkeypatch):
    from whisper_moe.cli import main
    from whisper_moe.stages import pretrain_experts, train

    seen = {}
    monkeypatch.setattr(train, "run", lambda *a, **k: seen.setdefault("train", k) and {"checkpoint": "c"})
    monkeypatch.setattr(pretrain_experts, "run", lambda *a, **k: seen.setdefault("experts", k) and {
        "utterances_per_expert": [1], "checkpoint": "c"})
    params = tmp_path / "empty.yaml"
    params.write_text("{}\n")
    assert main(["train", "--params", str(params), "--train-manifest", "t", "--dev-manifest", "d",
                 "--out", str(tmp_path / "o"), "--embeddings", "E"]) == 0
    assert main(["pretrain-experts", "--params", str(params), "--train-manifest", "t", "--clusters", "c",
                 "--gate", "g", "--out", str(tmp_path / "o"), "--embeddings", "E"]) == 0
    assert seen["train"]["embeddings_dir"] == "E" and seen["experts"]["embeddings_dir"] == "E"
