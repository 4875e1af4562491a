"""The stacked MoE-LoRA model: equivalences and gradients (where the seed failed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from whisper_moe.model.gate import load_balance_loss, routing_weights
from whisper_moe.model.lora import MoELoRALinear, RoutingState
from whisper_moe.model.moe import (
    BALANCE_BIAS,
    GATE_INPUT_STATISTICS,
    MoEConfig,
    WhisperMoE,
    masked_mean,
    valid_encoder_positions,
)


def make_moe(num_experts=3, rank=4, dropout=0.0, seed=0):
    from whisper_moe.model.base import tiny_random_whisper

    base, tokenizer = tiny_random_whisper(seed=0)
    torch.manual_seed(seed)
    config = MoEConfig(base_model="tiny", num_experts=num_experts, rank=rank, alpha=8,
                       dropout=dropout, gate_hidden=16)
    return WhisperMoE(base, config), tokenizer


def randomise_B(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _, layer in model.expert_layers():
        layer.lora_B.data = torch.randn(layer.lora_B.shape, generator=generator) * 0.05


def batch(model, size=2, tokens=6, seed=3):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(size, model.base.config.num_mel_bins, model.total_frames, generator=generator)
    ids = torch.randint(0, 1000, (size, tokens), generator=generator)
    return features, ids


def test_layer_soft_mixture_equals_weighted_per_expert_sum():
    torch.manual_seed(0)
    routing = RoutingState()
    layer = MoELoRALinear(nn.Linear(8, 5), routing, num_experts=3, rank=2, alpha=4, dropout=0.0)
    layer.lora_B.data.normal_()
    x = torch.randn(4, 7, 8)
    weights = torch.softmax(torch.randn(4, 3), -1)
    routing.weights = weights
    stacked = layer(x)
    reference = layer.base(x)
    for e in range(3):
        delta = x @ layer.expert_A(e).T @ layer.expert_B(e).T * layer.scaling
        reference = reference + weights[:, e, None, None] * delta
    torch.testing.assert_close(stacked, reference, rtol=1e-5, atol=1e-6)


def test_model_soft_mixture_equals_gate_weighted_reference():
    """Whole model: one stacked pass == a reference that adds each expert's delta per layer."""
    model, _ = make_moe()
    randomise_B(model)
    model.eval()
    features, ids = batch(model)
    weights = torch.softmax(torch.randn(2, 3), -1)
    stacked = model.decode_logits(features, ids, weights)
    # Reference: every wrapped layer computed naively, expert by expert.
    originals = {}
    for name, layer in model.expert_layers():
        def naive(x, layer=layer):
            out = layer.base(x)
            for e in range(layer.num_experts):
                delta = (x @ layer.expert_A(e).T) @ layer.expert_B(e).T * layer.scaling
                out = out + weights[:, e, None, None] * delta
            return out
        originals[name] = layer.forward
        layer.forward = naive
    reference = model.decode_logits(features, ids, weights)
    for name, layer in model.expert_layers():
        layer.forward = originals[name]
    torch.testing.assert_close(stacked, reference, rtol=1e-4, atol=1e-5)


def test_one_expert_equals_plain_peft_lora():
    from peft import LoraConfig, get_peft_model

    from whisper_moe.model.base import tiny_random_whisper

    model, _ = make_moe(num_experts=1)
    randomise_B(model)
    model.eval()
    features, ids = batch(model)
    ours = model.decode_logits(features, ids, torch.ones(2, 1))
    plain, _ = tiny_random_whisper(seed=0)
    peft_model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"]))
    for name, layer in model.expert_layers():
        peft_layer = peft_model.base_model.model.get_submodule(name)
        peft_layer.lora_A["default"].weight.data.copy_(layer.lora_A.data)
        peft_layer.lora_B["default"].weight.data.copy_(layer.lora_B.data)
    peft_model.eval()
    theirs = peft_model(input_features=features, decoder_input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_experts_off_is_the_frozen_base():
    from whisper_moe.model.base import tiny_random_whisper

    model, _ = make_moe()
    randomise_B(model)
    model.eval()
    features, ids = batch(model)
    plain, _ = tiny_random_whisper(seed=0)
    expected = plain(input_features=features, decoder_input_ids=ids).logits
    with torch.no_grad():
        zero = model.decode_logits(features, ids, torch.zeros(2, 3))
    torch.testing.assert_close(zero, expected, rtol=1e-5, atol=1e-5)


def test_every_expert_and_the_gate_receive_gradients_and_change():
    model, _ = make_moe(num_experts=4, dropout=0.05)
    model.train()
    features, ids = batch(model, size=4)
    labels = ids.clone()
    pooled = torch.randn(4, model.base.config.d_model)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    params = [p for group in model.trainable_parameters().values() for p in group]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        out = model(features, ids, labels, pooled, mode="soft", load_balance_weight=0.2)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.trainable_state_dict()
    for key, value in after.items():
        if key not in (*GATE_INPUT_STATISTICS, BALANCE_BIAS):  # not moved by gradients
            assert not torch.equal(value, before[key]), f"{key} did not change"
    for name, layer in model.expert_layers():
        blocks = [layer.expert_B(e) for e in range(4)]
        for i in range(4):
            assert blocks[i].abs().sum() > 0, f"{name} expert {i} B is still zero"
            for j in range(i + 1, 4):
                assert not torch.allclose(blocks[i], blocks[j]), f"{name}: experts {i},{j} equal"
    assert all(not p.requires_grad for p in model.base.parameters() if p.ndim and p not in set(params))


def test_topk_routing_zeroes_other_experts_and_renormalises():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    weights, probs = routing_weights(logits, "topk", 2)
    assert weights[0, 1] == 0 and weights[0, 3] == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(1))
    assert torch.allclose(probs.sum(-1), torch.ones(1))


def test_load_balance_loss_is_one_when_balanced_and_e_when_collapsed():
    balanced = torch.full((4, 4), 0.25)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 4)
    assert float(load_balance_loss(balanced, top_k=1)) == pytest.approx(1.0)
    assert float(load_balance_loss(collapsed, top_k=1)) == pytest.approx(4 * 0.97)


def test_pooled_embedding_ignores_padding_frames():
    hidden = torch.zeros(1, 10, 2)
    hidden[0, :4] = 1.0
    hidden[0, 4:] = 100.0
    valid = valid_encoder_positions(torch.tensor([8]), 10, 20)
    assert int(valid) == 4
    torch.testing.assert_close(masked_mean(hidden, valid), torch.ones(1, 2))


def test_trainable_state_round_trip():
    model, _ = make_moe()
    randomise_B(model)
    state = copy.deepcopy(model.trainable_state_dict())
    other, _ = make_moe(seed=5)
    other.load_trainable_state_dict(state)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_sparse_routing_gathers_the_same_result_as_zeroed_blocks():
    """Top-k / one-hot routing computes only the used experts, with identical outputs and grads."""
    torch.manual_seed(0)
    routing = RoutingState()
    layer = MoELoRALinear(nn.Linear(8, 5), routing, num_experts=6, rank=2, alpha=4, dropout=0.0)
    layer.lora_B.data.normal_()
    x = torch.randn(3, 4, 8)
    weights = torch.zeros(3, 6)
    weights[0, [1, 4]] = torch.tensor([0.7, 0.3])
    weights[1, [0, 5]] = torch.tensor([0.5, 0.5])
    weights[2, 2] = 1.0
    routing.weights = weights
    assert routing.index is not None and routing.index.shape == (3, 2)
    gathered = layer(x)
    gathered.square().sum().backward()
    grads = (layer.lora_A.grad.clone(), layer.lora_B.grad.clone())
    layer.zero_grad()
    reference = layer.base(x)
    for e in range(6):
        delta = x @ layer.lora_A[e * 2:(e + 1) * 2].T @ layer.lora_B[:, e * 2:(e + 1) * 2].T
        reference = reference + weights[:, e, None, None] * delta * layer.scaling
    torch.testing.assert_close(gathered, reference, rtol=1e-5, atol=1e-6)
    reference.square().sum().backward()
    torch.testing.assert_close(grads[0], layer.lora_A.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], layer.lora_B.grad, rtol=1e-5, atol=1e-6)
    routing.weights = torch.softmax(torch.randn(3, 6), -1)
    assert routing.index is None  # dense routing keeps the stacked path
