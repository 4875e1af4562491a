"""What the evaluate stage scores beside WER: SAP challenge scoring, extra test sets, routing."""

from __future__ import annotations

import pytest

from whisper_moe.stages.evaluate import scoring_mode, summarise


def sap_prediction(i, reference, with_disfluencies, hypothesis, speaker="s0", group="ALS"):
    return {"id": f"u{i}", "group": group, "speaker": speaker, "reference": reference,
            "reference_with_disfluencies": with_disfluencies, "moe": hypothesis}


def test_sap_scoring_is_the_clipped_cer_against_the_better_reference():
    predictions = [
        # 0 of 12 characters against the disfluent reference ("i um want water" would be 15).
        sap_prediction(0, "I want water.", "I um want water.", "i want water"),
        # a hallucination: 20 edits on 4 characters, clipped to 4.
        sap_prediction(1, "stop", "stop", "stop stop stop stop stop", speaker="s1", group="PD"),
    ]
    metrics = summarise(predictions, num_experts=0, scoring="sap")
    assert metrics["scoring"] == "sap" and metrics["primary_metric"] == "sap_cer"
    assert metrics["moe"]["sap_cer"] == pytest.approx(4 / 16)
    assert metrics["moe"]["sap_wer"] == pytest.approx(1 / 4)  # 4 insertions on "stop", clipped to 1
    assert metrics["moe"]["per_group"]["PD"]["sap_cer"] == pytest.approx(1.0)
    assert metrics["moe"]["per_group"]["ALS"]["sap_cer"] == 0.0
    low, high = metrics["moe"]["sap_cer_ci95"]
    assert low == 0.0 and high == pytest.approx(1.0)  # two speakers: all-s0 to all-s1 resamples
    assert metrics["moe"]["cer"] > 1.0  # the standard CER is neither clipped nor two-reference


def test_standard_scoring_adds_nothing_sap():
    metrics = summarise([sap_prediction(0, "a b", "a um b", "a b")], num_experts=0)
    assert metrics["scoring"] == "standard" and "sap_cer" not in metrics["moe"]


@pytest.mark.parametrize("setting, rows, expected", [
    ("auto", [{"text": "a", "text_with_disfluencies": "a um"}], "sap"),
    ("auto", [{"text": "a", "text_with_disfluencies": "a"}, {"text": "b"}], "standard"),
    ("auto", [], "standard"),
    ("standard", [{"text": "a", "text_with_disfluencies": "a um"}], "standard"),
    ("sap", [{"text": "a"}], "sap"),
])
def test_scoring_mode(setting, rows, expected):
    assert scoring_mode(setting, rows) == expected


@pytest.fixture
def untrained_checkpoint(tmp_path, tiny_base_dir):
    """A 2-expert MoE on the tiny base, saved untrained (no oracle table of its own)."""
    from whisper_moe.model.io import build_moe, save_moe
    from whisper_moe.model.moe import MoEConfig

    config = MoEConfig(base_model=str(tiny_base_dir), num_experts=2, rank=4, alpha=8.0, dropout=0.0,
                       gate_hidden=16)
    model, _ = build_moe(config, seed=0)
    return save_moe(model, tmp_path / "checkpoint")


def test_evaluate_scores_sap_data_and_every_extra_test_set(tmp_path, tiny_params, tiny_corpus,
                                                           untrained_checkpoint):
    import json

    from whisper_moe import artifacts
    from whisper_moe.data.manifest import read_manifest
    from whisper_moe.stages import evaluate

    sap_like = tmp_path / "sap_test.jsonl"  # the test set as import-sap would write it
    sap_like.write_text("".join(json.dumps({**row, "text_with_disfluencies": "um " + row["text"]}) + "\n"
                                for row in read_manifest(tiny_corpus / "test.jsonl")))
    params = {**tiny_params, "evaluate": {**tiny_params["evaluate"],
                                          "extra_test_sets": {"general": str(tiny_corpus / "dev.jsonl")}}}
    out = tmp_path / "evaluate"
    metrics = evaluate.run(params, checkpoint_dir=untrained_checkpoint, test_manifest=sap_like,
                           out_dir=out)

    assert metrics["scoring"] == "sap" and {"sap_cer", "sap_cer_ci95"} <= set(metrics["moe"])
    # No table in the checkpoint: each group goes to its most frequent learned top-1 expert.
    oracle = metrics["oracle_routing"]
    assert oracle["source"].startswith("test-set majority") and "oracle" in metrics
    dispatch = metrics["routing"]["top1_counts_per_group"]
    assert oracle["group_to_expert"] == {g: counts.index(max(counts)) for g, counts in dispatch.items()}
    general = json.loads((out / artifacts.EVALUATION_METRICS).read_text())["extra_test_sets"]["general"]
    dev_rows = read_manifest(tiny_corpus / "dev.jsonl")
    assert general["utterances"] == len(dev_rows) > 0
    assert general["scoring"] == "standard" and general["manifest"] == str(tiny_corpus / "dev.jsonl")
    assert {"base", "moe", "routing"} <= set(general) and "oracle" not in general
    assert set(general["moe"]["per_group"]) == {row["group"] for row in dev_rows}
    assert 0 <= general["moe"]["wer_ci95"][0] <= general["moe"]["wer"] <= general["moe"]["wer_ci95"][1]
    written = artifacts.read_jsonl(artifacts.extra_test_set_predictions(out, "general"))
    assert sorted(p["id"] for p in written) == sorted(row["id"] for row in dev_rows)
    assert "general" in (out / artifacts.EVALUATION_REPORT).read_text()


class FakeMoE:
    """As much of a WhisperMoE as oracle_plan reads."""

    def __init__(self, num_experts, group_to_expert=None):
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_experts=num_experts, group_to_expert=group_to_expert)


def test_oracle_routing_prefers_the_checkpoints_table_then_the_gates_majority():
    from whisper_moe.stages.evaluate import oracle_plan

    rows = [{"group": "a"}, {"group": "b"}]
    assert oracle_plan("auto", FakeMoE(3, {"a": 2}), rows) == "checkpoint"
    assert oracle_plan("auto", FakeMoE(3), rows) == "learned"
    assert oracle_plan("checkpoint", FakeMoE(3), rows) is None
    assert oracle_plan("off", FakeMoE(3, {"a": 2}), rows) is None
    assert oracle_plan("auto", FakeMoE(1), rows) is None  # one expert: nothing to route
    assert oracle_plan("auto", FakeMoE(3), [{"group": "a"}]) is None  # one group
    assert oracle_plan("auto", None, rows) is None  # the plain base model


def test_the_learned_majority_table_counts_first_choices_ties_to_the_lower_expert():
    from whisper_moe.stages.evaluate import learned_majority_table

    first_choices = {"a1": 1, "a2": 1, "a3": 0, "b1": 2, "b2": 0}  # b ties: the lower expert
    predictions = [{"id": i, "group": i[0]} for i in first_choices]
    assert learned_majority_table(predictions, first_choices, 3) == {"a": 1, "b": 0}


def randomise_experts(model, seed: int) -> None:
    """Every expert's B drawn at random, so the experts (and routings) decode differently."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0.0, 0.5)


def test_oracle_decoded_after_the_learned_pass_equals_a_checkpoint_tables_inline(
        tmp_path, tiny_moe, tiny_params, tiny_corpus):
    """Without a table in the checkpoint, the evaluation learns one from its own MoE pass and
    decodes the oracle afterwards; the same table stored in the checkpoint is decoded inline.
    Both must give the same oracle transcripts (experts made to differ: B random)."""
    from whisper_moe import artifacts
    from whisper_moe.model.io import save_moe
    from whisper_moe.stages import evaluate

    model = tiny_moe(3)
    randomise_experts(model, seed=1)
    test = tiny_corpus / "test.jsonl"
    learned = evaluate.run(tiny_params, save_moe(model, tmp_path / "learned"), test, tmp_path / "a")
    assert learned["oracle_routing"]["source"] == "test-set majority of the learned gate"
    table = learned["oracle_routing"]["group_to_expert"]
    first = artifacts.read_jsonl(tmp_path / "a" / artifacts.PREDICTIONS)
    first_choices = {p["id"]: max(range(3), key=lambda e: p["expert_weights"][e]) for p in first}
    assert table == evaluate.learned_majority_table(first, first_choices, 3)

    model.config.group_to_expert = table
    inline = evaluate.run(tiny_params, save_moe(model, tmp_path / "table"), test, tmp_path / "b")
    assert inline["oracle_routing"]["source"] == "checkpoint"
    second = {p["id"]: p for p in artifacts.read_jsonl(tmp_path / "b" / artifacts.PREDICTIONS)}
    assert len(first) == len(second) and all("oracle" in p for p in first)
    assert all(p["oracle"] == second[p["id"]]["oracle"] for p in first)
    assert inline["oracle"]["wer"] == learned["oracle"]["wer"]


def test_a_single_lora_without_the_base_decode_skips_the_frozen_encoder_and_decodes_the_same(
        tmp_path, tiny_moe, tiny_params, tiny_corpus, monkeypatch):
    """One expert gets weight 1 whatever the gate sees, so the frozen encoder's pass that
    feeds the gate is skipped; the transcripts must not change."""
    from whisper_moe import artifacts
    from whisper_moe.model.io import save_moe
    from whisper_moe.stages import evaluate

    model = tiny_moe(1)
    randomise_experts(model, seed=2)
    checkpoint = save_moe(model, tmp_path / "single")
    test = tiny_corpus / "test.jsonl"
    with_base = evaluate.run(tiny_params, checkpoint, test, tmp_path / "with_base")

    encoder_passes = []
    original_forward = type(model.base.model.encoder).forward

    def counted_forward(self, *args, **kwargs):
        encoder_passes.append(len(args[0]) if args else len(kwargs["input_features"]))
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.base.model.encoder), "forward", counted_forward)
    no_base = {**tiny_params, "evaluate": {**tiny_params["evaluate"], "compare_base": False}}
    without = evaluate.run(no_base, checkpoint, test, tmp_path / "without_base")

    rows = artifacts.read_jsonl(tmp_path / "without_base" / artifacts.PREDICTIONS)
    batches = -(-len(rows) // int(tiny_params["evaluate"]["batch_size"]))
    assert "oracle" not in without  # one expert: no routing to compare with
    assert sum(encoder_passes) == len(rows) and len(encoder_passes) == batches  # routed pass only
    assert "base" in with_base and "base" not in without
    assert without["moe"]["wer"] == with_base["moe"]["wer"]
    first = {p["id"]: p["moe"] for p in artifacts.read_jsonl(tmp_path / "with_base" / artifacts.PREDICTIONS)}
    assert {p["id"]: p["moe"] for p in rows} == first
