"""Embed stage: the gate's own embedding, a stratified sample, skipped audio, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from whisper_moe import artifacts, embedding
from whisper_moe.data.audio import load_audio
from whisper_moe.data.features import log_mel_batch, num_valid_frames
from whisper_moe.data.manifest import read_manifest, write_manifest
from whisper_moe.stages import embed


@pytest.fixture
def embed_params(tiny_params):
    tiny_params["embed"].update(embedding_percent=100.0, batch_size=2)
    return tiny_params


def test_embeddings_are_the_gates_pooled_embedding(embed_params, tiny_corpus, tmp_path):
    from whisper_moe.model.io import build_moe, moe_config_from_params

    outputs = embed.run(embed_params, tiny_corpus / "train.jsonl", tmp_path / "embed")
    embeddings, index = artifacts.load_embeddings(tmp_path / "embed")
    rows = read_manifest(tiny_corpus / "train.jsonl")
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(rows), 64)
    assert outputs["count"] == len(rows) and outputs["dim"] == 64
    assert [r["id"] for r in index] == [r["id"] for r in rows]
    assert set(index[0]) == {"id", "group", "speaker", "audio_filepath"}
    assert not (tmp_path / "embed" / "partial").exists()

    model, _ = build_moe(moe_config_from_params(embed_params, 3))
    model.eval()
    for row, stage_embedding in zip(rows, embeddings):
        audio = torch.from_numpy(load_audio(row["audio_filepath"]))[None]
        features = log_mel_batch(audio, 80, model.total_frames)
        frames = num_valid_frames(torch.tensor([audio.shape[1]]), model.total_frames)
        expected = model.pooled_embeddings(features, frames)[0].numpy()
        np.testing.assert_allclose(stage_embedding, expected, rtol=1e-4, atol=1e-5)


def test_sample_is_stratified_by_group(embed_params, tiny_corpus, tmp_path):
    embed_params["embed"]["embedding_percent"] = 50.0
    embed.run(embed_params, tiny_corpus / "train.jsonl", tmp_path / "embed")
    _, index = artifacts.load_embeddings(tmp_path / "embed")
    groups = sorted(r["group"] for r in index)
    assert groups == sorted({r["group"] for r in read_manifest(tiny_corpus / "train.jsonl")})


def test_unreadable_audio_is_skipped_and_counted(embed_params, tiny_corpus, tmp_path):
    """A file that disappears after validation is skipped and counted, not a crash."""
    import shutil

    from whisper_moe.data.validate import validate_manifest

    rows = read_manifest(tiny_corpus / "train.jsonl")
    shutil.copy(rows[1]["audio_filepath"], tmp_path / "gone.wav")
    rows[1]["audio_filepath"] = str(tmp_path / "gone.wav")
    write_manifest(tmp_path / "raw.jsonl", rows)
    validate_manifest(tmp_path / "raw.jsonl", tmp_path / "train.jsonl", tmp_path / "train_report.json",
                      max_skip_fraction=0.0, progress=False)
    (tmp_path / "gone.wav").unlink()
    embed.run(embed_params, tmp_path / "train.jsonl", tmp_path / "embed")
    embeddings, index = artifacts.load_embeddings(tmp_path / "embed")
    report = json.loads((tmp_path / "embed" / "embed_report.json").read_text())
    assert len(embeddings) == len(rows) - 1 and rows[1]["id"] not in [r["id"] for r in index]
    assert report["skipped"] == {"missing_file": 1} and report["skipped_ids"] == [rows[1]["id"]]


def test_interrupted_embedding_resumes_to_identical_output(embed_params, tiny_corpus, tmp_path,
                                                           monkeypatch):
    manifest = tiny_corpus / "train.jsonl"
    embed.run(embed_params, manifest, tmp_path / "clean", chunk_utterances=2)
    clean, clean_index = artifacts.load_embeddings(tmp_path / "clean")

    real_write_chunk = embed.write_chunk
    written = []

    def crash_after_first_chunk(*args, **kwargs):
        if written:
            raise RuntimeError("simulated crash")
        written.append(real_write_chunk(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(embed, "write_chunk", crash_after_first_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed.run(embed_params, manifest, tmp_path / "out", chunk_utterances=2)
    monkeypatch.setattr(embed, "write_chunk", real_write_chunk)
    assert [p.name for p in (tmp_path / "out" / "partial").glob("chunk_*.npz")] == [
        "chunk_000000000_000000002.npz"]

    embedded = []
    real_pooled = embedding.encoder_pooled
    monkeypatch.setattr(embedding, "encoder_pooled",
                        lambda w, f, n: embedded.append(len(f)) or real_pooled(w, f, n))
    embed.run(embed_params, manifest, tmp_path / "out", resume=True, chunk_utterances=2)
    resumed, resumed_index = artifacts.load_embeddings(tmp_path / "out")
    assert sum(embedded) == len(clean) - 2  # only the utterances after the first chunk
    assert np.array_equal(resumed, clean) and resumed_index == clean_index

    embedded.clear()  # a finished stage resumed again does no work
    embed.run(embed_params, manifest, tmp_path / "out", resume=True, chunk_utterances=2)
    assert embedded == []


def test_resume_refuses_partial_work_of_another_sample(embed_params, tiny_corpus, tmp_path):
    partial = embed.prepare_partial(tmp_path, {"base_model": "x", "utterances": 1,
                                               "ids_sha256": "0"}, resume=False)
    assert (partial / "plan.json").exists()
    with pytest.raises(ValueError, match="without --resume"):
        embed.run(embed_params, tiny_corpus / "train.jsonl", tmp_path, resume=True)
    embed.run(embed_params, tiny_corpus / "train.jsonl", tmp_path, resume=False)  # starts over
    assert (tmp_path / "embeddings.npy").exists()


def test_sigterm_saves_the_batches_done_and_resume_finishes(embed_params, tiny_corpus, tmp_path,
                                                           monkeypatch):
    from whisper_moe.training.runtime import StopRequest, TrainingInterrupted

    class StopAfterOneBatch(StopRequest):
        def __bool__(self):  # as if SIGTERM arrived during the first batch
            self.signal_name = "SIGTERM"
            return True

    manifest = tiny_corpus / "train.jsonl"
    monkeypatch.setattr(embed, "StopRequest", StopAfterOneBatch)
    with pytest.raises(TrainingInterrupted):
        embed.run(embed_params, manifest, tmp_path / "out", chunk_utterances=100)
    assert [p.name for p in (tmp_path / "out" / "partial").glob("chunk_*.npz")] == [
        "chunk_000000000_000000002.npz"]
    monkeypatch.setattr(embed, "StopRequest", StopRequest)
    embed.run(embed_params, manifest, tmp_path / "out", resume=True)
    embed.run(embed_params, manifest, tmp_path / "clean")
    assert np.array_equal(artifacts.load_embeddings(tmp_path / "out")[0],
                          artifacts.load_embeddings(tmp_path / "clean")[0])
