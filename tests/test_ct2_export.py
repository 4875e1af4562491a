"""export-ct2: merged experts on CTranslate2 transcribe like our model under top-1 routing."""

from __future__ import annotations

import json

import pytest
import torch

from whisper_moe.data.audio import load_audio

pytest.importorskip("ctranslate2")


def sample_audio(tiny_corpus) -> list[str]:
    rows = [json.loads(line) for line in (tiny_corpus / "test.jsonl").read_text().splitlines()]
    return [str(tiny_corpus / row["audio_filepath"]) for row in rows[:6]]


def split_gate(model, audio: list[str]) -> None:
    """Set the gate so that the utterances above the median along their first principal
    direction go to expert 0 and the rest to expert 1 (a random gate sends all to one)."""
    from whisper_moe.data.features import whisper_features

    samples = [torch.from_numpy(load_audio(path)) for path in audio]
    padded = torch.nn.utils.rnn.pad_sequence(samples, batch_first=True)
    features, frames = whisper_features(padded, torch.tensor([len(s) for s in samples]),
                                        model.base.config, "cpu", torch.float32)
    with torch.no_grad():
        pooled = model.pooled_embeddings(features, frames)
    centred = pooled - pooled.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    projection = pooled @ direction
    threshold = projection.median()
    first, second = model.gate.net[0], model.gate.net[2]
    with torch.no_grad():
        for parameter in model.gate.parameters():
            parameter.zero_()
        first.weight[0], first.bias[0] = 100 * direction, -100 * threshold
        first.weight[1], first.bias[1] = -100 * direction, 100 * threshold
        second.weight[0, 0] = second.weight[1, 1] = 1.0
        second.bias[1] = 1e-3  # the median utterance itself: expert 1


@pytest.fixture
def checkpoint(tmp_path, tiny_moe, tiny_corpus):
    from whisper_moe.model.io import save_moe

    model = tiny_moe(2)
    for _, layer in model.expert_layers():
        layer.lora_B.data.normal_(0, 0.2)  # experts that change the output
    model.eval()
    split_gate(model, sample_audio(tiny_corpus))
    return save_moe(model, tmp_path / "ckpt")


def test_merged_expert_equals_the_routed_layer(tiny_base_dir, checkpoint):
    from whisper_moe.model.base import load_base_model
    from whisper_moe.model.ct2_export import expert_deltas, merge_into
    from whisper_moe.model.io import load_moe

    model, _ = load_moe(checkpoint)
    plain, _ = load_base_model(str(tiny_base_dir))
    merge_into(plain, expert_deltas(model, 1))
    name, layer = model.expert_layers()[0]
    x = torch.randn(2, 5, layer.base.in_features)
    model.routing.weights = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(layer(x), plain.get_submodule(name)(x), rtol=1e-5, atol=1e-5)
    model.routing.weights = None


def test_ct2_transcripts_equal_torch_top1(tmp_path, checkpoint, tiny_params, tiny_corpus):
    from whisper_moe.cli import main
    from whisper_moe.stages.transcribe import transcribe_files

    out = tmp_path / "ct2"
    assert main(["export-ct2", str(checkpoint), "--out", str(out)]) == 0
    info = json.loads((out / "ct2_export.json").read_text())
    assert info["num_experts"] == 2
    assert all((out / name / "model.bin").exists() for name in ("base", "expert_0", "expert_1"))

    audio = sample_audio(tiny_corpus)
    ours = list(transcribe_files(tiny_params, checkpoint, audio, routing="top1"))
    theirs = list(transcribe_files(tiny_params, out, audio, backend="ct2"))
    assert [t.experts for t in theirs] == [o.experts for o in ours]
    assert len({e for t in theirs for e in t.experts}) == 2  # both experts were exercised
    assert [t.text for t in theirs] == [o.text for o in ours]
