"""The Python API: from_pretrained / save_pretrained, transcribe, routing."""

from __future__ import annotations

import json

import torch

from whisper_moe import api
from whisper_moe.model.moe import WhisperMoE


def test_save_and_load_pretrained_round_trip(tmp_path, tiny_moe, tiny_corpus):
    model = tiny_moe(2)
    for _, layer in model.expert_layers():
        layer.lora_B.data.normal_(0, 0.05)
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert (folder / "moe_config.json").exists() and (folder / "model.safetensors").exists()

    loaded = api.load(folder)
    assert isinstance(loaded, WhisperMoE) and loaded.tokenizer is not None
    for (name, ours), (_, theirs) in zip(model.expert_layers(), loaded.expert_layers()):
        assert torch.equal(ours.lora_B, theirs.lora_B), name

    rows = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    audio = [str(tiny_corpus / row["audio_filepath"]) for row in rows[:3]]
    weights = api.routing(loaded, audio)
    assert weights.shape == (3, 2)
    assert bool((weights >= 0).all()) and bool((weights.sum(-1) <= 1 + 1e-6).all())
    results = list(api.transcribe(folder, audio, device="cpu", max_new_tokens=4))
    assert [r.path for r in results] == audio and all(r.error is None for r in results)
    assert [r.experts[0] for r in results] == weights.argmax(-1).tolist()
