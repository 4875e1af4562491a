"""Shared fixtures: a tiny random Whisper (d_model 64) and a few seconds of demo speech."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A random Whisper (d_model 64, 2+2 layers) saved as a transformers directory."""
    from whisper_moe.model.base import save_tiny_random_whisper

    return save_tiny_random_whisper(tmp_path_factory.mktemp("tiny-whisper") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small synthetic corpus: 3 groups x 3 speakers x 2 utterances, split by speaker."""
    from whisper_moe.data.demo import make_demo_corpus

    folder = tmp_path_factory.mktemp("corpus")
    make_demo_corpus(folder, groups=["en-us", "en-gb-scotland", "en-029"],
                     speakers_per_group=3, utterances_per_speaker=2, seed=7,
                     fractions=(0.7, 0.15, 0.15))
    return folder


@pytest.fixture
def tiny_params(tiny_base_dir, tiny_corpus):
    """Full params pointing at the tiny model and corpus, sized for a CPU test."""
    from whisper_moe.config import DEFAULT_PARAMS

    params = copy.deepcopy(DEFAULT_PARAMS)
    params["mode"] = "full"
    params["data"]["source"] = "manifest"
    params["data"]["manifest_dir"] = str(tiny_corpus)
    params["model"]["base_model"] = str(tiny_base_dir)
    params["model"]["num_experts"] = 3
    params["model"]["lora"]["rank"] = 4
    params["model"]["gate_hidden"] = 16
    params["train"].update(epochs=2, batch_size=2, gradient_accumulation_steps=2, lr=5e-3,
                           gate_lr=5e-3)
    params["runtime"]["device"] = "cpu"
    params["routing"].update(mode="soft", noise_std=0.0)
    params["evaluate"].update(batch_size=4, max_new_tokens=8)
    return params


@pytest.fixture
def tiny_moe(tiny_base_dir):
    """make(num_experts, rank=4, gate_hidden=16, seed=0): a fresh WhisperMoE on the tiny base."""
    import torch

    from whisper_moe.model.base import load_base_model
    from whisper_moe.model.moe import MoEConfig, WhisperMoE

    def make(num_experts: int, rank: int = 4, gate_hidden: int = 16, seed: int = 0) -> WhisperMoE:
        base, _ = load_base_model(str(tiny_base_dir))
        torch.manual_seed(seed)
        return WhisperMoE(base, MoEConfig(base_model=str(tiny_base_dir), num_experts=num_experts,
                                          rank=rank, alpha=2 * rank, dropout=0.0,
                                          gate_hidden=gate_hidden))

    return make
