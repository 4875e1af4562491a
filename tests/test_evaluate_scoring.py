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
