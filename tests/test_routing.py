"""Routing that can learn: step-level load balance, a trainable top-1, relative noise,
a standardised gate input, an annealed temperature, and a truthful training log."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from whisper_moe.config import DEFAULT_PARAMS
from whisper_moe.model.gate import (
    curriculum_routing,
    load_balance_loss,
    relative_router_noise,
    router_z_loss,
    routing_weights,
)
from whisper_moe.model.moe import MoEConfig, WhisperMoE
from whisper_moe.training.trainer import Trainer, TrainSettings, linear_warmup_decay


def tiny_moe(num_experts=2, gate_hidden=4, seed=0):
    from whisper_moe.model.base import tiny_random_whisper

    base, _ = tiny_random_whisper(seed=0)
    torch.manual_seed(seed)
    config = MoEConfig(base_model="tiny", num_experts=num_experts, rank=2, alpha=4, dropout=0.0,
                       gate_hidden=gate_hidden)
    return WhisperMoE(base, config)


def logits_as_input_gate(model: WhisperMoE) -> None:
    """Make the gate's logits equal the first E input dimensions (kept positive)."""
    experts = model.config.num_experts
    first, last = model.gate.net[0], model.gate.net[2]
    with torch.no_grad():
        first.weight.zero_(), first.bias.zero_(), last.weight.zero_(), last.bias.zero_()
        for e in range(experts):
            first.weight[e, e] = 1.0
            last.weight[e, e] = 1.0


def pooled_for_probs(model: WhisperMoE, probs: list[list[float]]) -> torch.Tensor:
    """Gate inputs whose routing probabilities (temperature 1) are `probs`."""
    pooled = torch.zeros(len(probs), model.base.config.d_model)
    pooled[:, : len(probs[0])] = torch.tensor(probs).log() + 10.0
    return pooled


def bare_trainer(model, tmp_path, top_k=1, load_balance_weight=1.0, utterances=3, batch_size=2,
                 accumulation=2, balance_bias_rate=0.0):
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["routing"].update(top_k=top_k, load_balance_weight=load_balance_weight,
                             balance_bias_rate=balance_bias_rate)
    params["train"].update(batch_size=batch_size, gradient_accumulation_steps=accumulation)
    settings = TrainSettings.from_params(params)
    return Trainer(model, list(range(utterances)), settings, tmp_path, torch.device("cpu"),
                   pad_token_id=0, prefix_length=1)


# -- load balance -------------------------------------------------------------------------
MICRO_1 = [[0.8, 0.2], [0.6, 0.4]]
MICRO_2 = [[0.3, 0.7]]
# top-1 dispatch: experts 0, 0, 1 -> f = (2/3, 1/3); P = (1.7/3, 1.3/3)
# E * sum f_i P_i = 2 * (2/3 * 1.7/3 + 1/3 * 1.3/3) = 9.4 / 9
HAND_COMPUTED = 9.4 / 9


def test_switch_load_balance_is_the_formula_on_a_hand_computed_batch():
    probs = torch.tensor(MICRO_1 + MICRO_2)
    assert float(load_balance_loss(probs, top_k=1)) == pytest.approx(HAND_COMPUTED)
    # top-2 of 2 experts dispatches everything evenly: f = 1/2 whatever P is
    assert float(load_balance_loss(probs, top_k=2)) == pytest.approx(1.0)


def test_step_load_balance_accumulates_two_micro_batches(tmp_path):
    """Two micro-batches of one step are balanced together, not each on its own (the
    per-micro-batch mean would be 1.4 here), and the gate gets the step loss's gradient."""
    model = tiny_moe()
    logits_as_input_gate(model)
    trainer = bare_trainer(model, tmp_path, top_k=1, load_balance_weight=0.5)
    for probs in (MICRO_1, MICRO_2):
        pooled = pooled_for_probs(model, probs)
        trainer.step_router_inputs.append((pooled, torch.zeros(len(probs), 2)))
    value, dispatch = trainer.balance_step("topk", 1.0)
    assert value == pytest.approx(HAND_COMPUTED, rel=1e-5)
    assert dispatch == [2, 1]
    assert trainer.step_router_inputs == []
    accumulated = [p.grad.clone() for p in model.gate.parameters()]

    model.gate.zero_grad(set_to_none=True)
    whole = pooled_for_probs(model, MICRO_1 + MICRO_2)
    probs = model.route(whole, "topk", 1)["probs"]
    (0.5 * load_balance_loss(probs, top_k=1)).backward()
    for got, expected in zip(accumulated, (p.grad for p in model.gate.parameters())):
        torch.testing.assert_close(got, expected)
    assert any(float(g.abs().sum()) > 0 for g in accumulated)


# -- the balance bias ----------------------------------------------------------------------
def test_the_balance_bias_rises_for_experts_chosen_first_less_than_the_mean():
    model = tiny_moe(num_experts=4)
    model.gate.nudge_balance_bias(torch.tensor([3.0, 0.0, 2.0, 1.0]), 0.25)  # mean 1.5
    assert model.gate.balance_bias.tolist() == [-0.25, 0.25, -0.25, 0.25]
    model.gate.nudge_balance_bias(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.25)  # balanced: no move
    assert model.gate.balance_bias.tolist() == [-0.25, 0.25, -0.25, 0.25]


def test_the_balance_bias_shifts_the_logits_and_so_the_choice():
    model = tiny_moe()
    logits_as_input_gate(model)
    pooled = pooled_for_probs(model, [[0.7, 0.3]])
    assert model.route(pooled, "topk", 1)["weights"][0].argmax() == 0
    model.gate.balance_bias.copy_(torch.tensor([0.0, 1.0]))  # log(0.7/0.3) = 0.85 < 1
    assert model.route(pooled, "topk", 1)["weights"][0].argmax() == 1


def test_step_balance_nudges_the_bias_by_the_rate_times_the_mean_logit_spread(tmp_path):
    model = tiny_moe()
    logits_as_input_gate(model)
    trainer = bare_trainer(model, tmp_path, top_k=1, load_balance_weight=0.5, balance_bias_rate=0.1)
    for probs in (MICRO_1, MICRO_2):
        trainer.step_router_inputs.append((pooled_for_probs(model, probs), torch.zeros(len(probs), 2)))
    logits = torch.tensor(MICRO_1 + MICRO_2).log()
    spread = float(logits.std(-1, unbiased=False).mean())
    trainer.balance_step("topk", 1.0)
    # first choices 0, 0, 1 (mean 1.5): expert 0 down, expert 1 up
    torch.testing.assert_close(model.gate.balance_bias, torch.tensor([-0.1 * spread, 0.1 * spread]))
    state = model.trainable_state_dict()
    assert torch.equal(state["gate.balance_bias"], model.gate.balance_bias)  # saved with the gate

    older = {k: v for k, v in state.items() if k != "gate.balance_bias"}  # a gate trained without it
    model.load_trainable_state_dict(copy.deepcopy(older))
    assert float(model.gate.balance_bias.abs().max()) == 0.0


def test_a_null_rate_balances_a_gate_trained_from_scratch_only(tmp_path):
    from whisper_moe.training.trainer import AUTO_BALANCE_BIAS_RATE

    trainer = bare_trainer(tiny_moe(), tmp_path, balance_bias_rate=None)
    assert trainer.balance_bias_rate() == AUTO_BALANCE_BIAS_RATE > 0
    trainer.fit_gate_input = False  # as with --init: the gate comes from pretraining
    assert trainer.balance_bias_rate() == 0.0


def test_without_a_rate_the_balance_bias_stays_zero(tmp_path):
    model = tiny_moe()
    logits_as_input_gate(model)
    trainer = bare_trainer(model, tmp_path, top_k=1)
    trainer.step_router_inputs.append((pooled_for_probs(model, MICRO_1), torch.zeros(2, 2)))
    trainer.balance_step("topk", 1.0)
    assert float(model.gate.balance_bias.abs().max()) == 0.0


# -- a top-1 gate that learns -------------------------------------------------------------
def test_top1_weight_is_the_probability_so_the_gate_gets_a_task_gradient():
    logits = torch.tensor([[2.0, 0.5, 0.0]])
    weights, probs = routing_weights(logits, "topk", 1)
    assert float(weights[0, 0]) == pytest.approx(float(probs[0, 0])) and float(weights[0, 0]) < 1.0
    assert float(weights[0, 1:].abs().sum()) == 0.0

    model = tiny_moe(num_experts=3)
    generator = torch.Generator().manual_seed(1)
    for _, layer in model.expert_layers():
        layer.lora_B.data = torch.randn(layer.lora_B.shape, generator=generator) * 0.05
    features = torch.randn(2, model.base.config.num_mel_bins, model.total_frames, generator=generator)
    ids = torch.randint(0, 1000, (2, 5), generator=generator)
    pooled = torch.randn(2, model.base.config.d_model, generator=generator)
    out = model(features, ids, ids, pooled, mode="topk", top_k=1)
    out["ce_loss"].backward()
    gate_gradient = sum(float(p.grad.abs().sum()) for p in model.gate.parameters())
    assert gate_gradient > 0


# -- noise, z-loss and entropy ------------------------------------------------------------
def test_router_noise_is_relative_to_the_logit_spread():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 20000) * 10
    noise = relative_router_noise(logits, 0.1)
    spread = float(logits[0].std(unbiased=False))
    assert float(noise.std()) == pytest.approx(0.1 * spread, rel=0.02)
    assert float(relative_router_noise(torch.zeros(3, 4), 0.1).abs().max()) == 0.0


def test_z_loss_uses_the_noise_free_logits():
    model = tiny_moe(num_experts=3)
    model.train()
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, model.base.config.num_mel_bins, model.total_frames, generator=generator)
    ids = torch.randint(0, 1000, (2, 5), generator=generator)
    pooled = torch.randn(2, model.base.config.d_model, generator=generator) * 5
    out = model(features, ids, ids, pooled, mode="soft", noise_std=1.0)
    assert float(out["noise"].abs().sum()) > 0
    torch.testing.assert_close(out["z_loss"], router_z_loss(model.gate(pooled)))
    torch.testing.assert_close(out["gate_logits"], model.gate(pooled))


# -- temperature --------------------------------------------------------------------------
def test_curriculum_temperature_anneals_per_step_and_hits_its_end():
    routing = {"mode": "curriculum", "soft_epochs": 1, "temperature_start": 2.0,
               "temperature_end": 1.0}
    schedule = [curriculum_routing(routing, step, total_epochs=3, steps_per_epoch=5)
                for step in range(15)]
    assert [mode for mode, _ in schedule] == ["soft"] * 5 + ["topk"] * 10
    temperatures = [t for _, t in schedule]
    assert temperatures[0] == 2.0
    assert temperatures[4] == pytest.approx(1.0)  # the last soft step
    assert all(a > b for a, b in zip(temperatures[:4], temperatures[1:5]))
    assert set(temperatures[5:]) == {1.0}


# -- accumulation -------------------------------------------------------------------------
def test_partial_last_accumulation_group_is_divided_by_its_true_size(tmp_path):
    trainer = bare_trainer(tiny_moe(), tmp_path, utterances=10, batch_size=2, accumulation=2)
    sizes = []
    for batch in range(1, 6):  # 5 micro-batches per epoch: groups of 2, 2 and 1
        trainer.batch_in_epoch = batch
        sizes.append(trainer.accumulation_size())
    assert sizes == [2, 2, 2, 2, 1]


# -- gate input statistics ----------------------------------------------------------------
def test_gate_input_statistics_round_trip_through_save_and_load(tmp_path, tiny_base_dir):
    from whisper_moe.model.io import build_moe, load_moe, save_moe

    config = MoEConfig(base_model=str(tiny_base_dir), num_experts=3, rank=2, gate_hidden=8)
    model, _ = build_moe(config, seed=0)
    generator = torch.Generator().manual_seed(3)
    embeddings = 50.0 + 0.1 * torch.randn(40, model.base.config.d_model, generator=generator)
    model.gate.fit_input(embeddings)
    standardised = model.gate.standardise(embeddings)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(embeddings.shape[1]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False),
                               torch.ones(embeddings.shape[1]), atol=1e-3, rtol=0)

    save_moe(model, tmp_path / "checkpoint")
    stored = load_file(tmp_path / "checkpoint" / "model.safetensors")
    torch.testing.assert_close(stored["gate.input_mean"], model.gate.input_mean)
    loaded, _ = load_moe(tmp_path / "checkpoint")
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded.gate.input_std, model.gate.input_std)
    torch.testing.assert_close(loaded.route(embeddings, "topk", 2)["probs"],
                               model.route(embeddings, "topk", 2)["probs"])


def test_a_checkpoint_without_gate_statistics_loads_with_the_identity(tmp_path):
    model = tiny_moe()
    state = {k: v for k, v in model.trainable_state_dict().items() if not k.startswith("gate.input_")}
    other = tiny_moe(seed=4)
    other.gate.fit_input(torch.randn(10, other.base.config.d_model) + 3.0)
    other.load_trainable_state_dict(copy.deepcopy(state))
    assert float(other.gate.input_mean.abs().max()) == 0.0
    assert float((other.gate.input_std - 1).abs().max()) == 0.0


# -- the training run and its log ---------------------------------------------------------
@pytest.fixture(scope="module")
def routed_run(tmp_path_factory, tiny_params_module, tiny_corpus):
    """One tiny curriculum run with a partial last accumulation group, recording the lr
    every optimizer step actually used."""
    from whisper_moe.stages import train

    corpus = tiny_corpus
    params = copy.deepcopy(tiny_params_module)
    params["train"].update(epochs=3, batch_size=2, gradient_accumulation_steps=2, warmup_ratio=0.3)
    params["routing"].update(mode="curriculum", soft_epochs=2, top_k=2, noise_std=0.1,
                             temperature_start=3.0, temperature_end=1.0, load_balance_weight=0.01)
    used = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path_factory.mktemp("routed")
    try:
        train.run(params, corpus / "train.jsonl", corpus / "dev.jsonl", out)
    finally:
        patch.undo()
    history = [json.loads(line) for line in open(out / "train_log.jsonl")]
    return params, out, [h for h in history if "ce_loss" in h], used


@pytest.fixture(scope="module")
def tiny_params_module(tiny_base_dir, tiny_corpus):
    from whisper_moe.config import DEFAULT_PARAMS as defaults

    params = copy.deepcopy(defaults)
    params["data"].update(source="manifest", manifest_dir=str(tiny_corpus))
    params["model"].update(base_model=str(tiny_base_dir), num_experts=3, gate_hidden=16)
    params["model"]["lora"]["rank"] = 4
    params["train"].update(lr=5e-3, gate_lr=5e-3)
    params["runtime"]["device"] = "cpu"
    params["evaluate"].update(batch_size=4, max_new_tokens=8)
    return params


def test_logged_lr_is_the_lr_each_step_used(routed_run):
    params, _, steps, used = routed_run
    assert len(used) == len(steps)
    assert [s["lr"] for s in steps] == used
    factor = linear_warmup_decay(len(steps), params["train"]["warmup_ratio"])
    assert steps[0]["lr"] == pytest.approx(params["train"]["lr"] * factor(0))


def test_logged_dispatch_counts_every_routed_slot_of_the_step(routed_run):
    params, out, steps, _ = routed_run
    train_size = json.loads((out / "train_metrics.json").read_text())["train_utterances"]
    per_epoch = math.ceil(train_size / params["train"]["batch_size"])
    group = params["train"]["gradient_accumulation_steps"] * params["train"]["batch_size"]
    expected = [min(group, train_size - start) * 2 for start in range(0, train_size, group)]
    assert per_epoch % 2 == 1  # the tiny corpus gives a partial last group
    assert [sum(s["dispatch"]) for s in steps] == expected * params["train"]["epochs"]
    assert all(len(s["dispatch"]) == 3 for s in steps)
    assert all(0.0 < s["lb_loss"] <= 3.0 for s in steps)  # E when one expert takes all


def test_logged_temperature_anneals_to_its_end_within_the_soft_phase(routed_run):
    _, _, steps, _ = routed_run
    soft = [s for s in steps if s["routing"] == "soft"]
    assert soft[0]["temperature"] == 3.0
    assert soft[-1]["temperature"] == pytest.approx(1.0)
    assert len({s["temperature"] for s in soft}) == len(soft)
    assert {s["temperature"] for s in steps if s["routing"] == "topk"} == {1.0}


def test_training_stores_the_gate_input_statistics_of_the_training_embeddings(routed_run):
    _, out, _, _ = routed_run
    stored = load_file(out / "checkpoint" / "model.safetensors")
    assert float(stored["gate.input_mean"].abs().sum()) > 0
    assert float((stored["gate.input_std"] - 1).abs().sum()) > 0


def test_evaluation_counts_second_choices_as_dispatch_and_names_idle_experts():
    from whisper_moe.stages.evaluate import routing_summary

    rows = [{"group": g, "expert_weights": w, "gate_probs": w}
            for g, w in [("a", [0.6, 0.4, 0.0, 0.0]), ("a", [0.7, 0.3, 0.0, 0.0]),
                         ("b", [0.55, 0.0, 0.45, 0.0]), ("b", [0.0, 0.0, 0.8, 0.2])]]
    summary = routing_summary(rows, num_experts=4)
    assert summary["expert_share"] == [3, 0, 1, 0]  # expert 1 is nobody's first choice
    assert summary["dispatch"] == [3, 2, 2, 1]  # but receives two second slots
    assert summary["idle_experts"] == []
    rows[3]["expert_weights"] = [0.0, 0.0, 1.0, 0.0]
    assert routing_summary(rows, num_experts=4)["idle_experts"] == [3]


def test_a_single_lora_trains_without_an_encoder_pass_for_its_gate(tmp_path, tiny_params_module,
                                                                  tiny_corpus, monkeypatch):
    from whisper_moe.stages import train
    from whisper_moe.training import trainer

    def no_gate_pass(*args, **kwargs):
        raise AssertionError("a single expert needs no gate input")

    monkeypatch.setattr(trainer, "compute_pooled_cache", no_gate_pass)
    params = copy.deepcopy(tiny_params_module)
    params["model"]["num_experts"] = 1
    params["train"].update(epochs=1, batch_size=2, gradient_accumulation_steps=1)
    metrics = train.run(params, tiny_corpus / "train.jsonl", tiny_corpus / "dev.jsonl", tmp_path)
    assert metrics["num_experts"] == 1 and metrics["optimizer_steps"] > 0
    assert metrics["final_dev_loss"] is not None
