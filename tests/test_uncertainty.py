"""Speaker-bootstrap intervals and the routing-group permutation test, on cases whose
answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_moe.uncertainty import (
    nmi_permutation_test,
    normalised_mutual_information,
    permuted_nmi,
    speaker_bootstrap_difference,
    speaker_bootstrap_wer,
    utterance_word_errors,
)


def test_two_speaker_bootstrap_spans_both_speakers_rates():
    """Speaker A: 1 error in 10 words, B: 3 in 10. Resampling two speakers gives AA (0.1),
    AB (0.2) or BB (0.3), each end with probability 1/4: the 95 % interval is [0.1, 0.3]."""
    edits = np.array([1.0, 0.0, 2.0, 1.0])
    words = np.array([5.0, 5.0, 5.0, 5.0])
    speakers = ["A", "A", "B", "B"]
    assert speaker_bootstrap_wer(edits, words, speakers) == [pytest.approx(0.1), pytest.approx(0.3)]


def test_resampling_speakers_is_wider_than_resampling_utterances():
    """Errors concentrated in one speaker: the speaker bootstrap must show it."""
    edits = np.array([5.0] * 5 + [0.0] * 15)
    words = np.full(20, 5.0)
    by_speaker = speaker_bootstrap_wer(edits, words, ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5)
    by_utterance = speaker_bootstrap_wer(edits, words, [str(i) for i in range(20)])
    assert by_speaker[1] - by_speaker[0] > by_utterance[1] - by_utterance[0]


def test_paired_difference_of_a_constant_gap_has_no_spread():
    edits_a = np.array([2.0, 1.0, 3.0, 0.0])
    edits_b = edits_a + 1
    words = np.full(4, 10.0)
    low, high = speaker_bootstrap_difference(edits_a, edits_b, words, ["a", "b", "c", "d"])
    assert low == pytest.approx(-0.1) and high == pytest.approx(-0.1)


def test_utterance_word_errors_sum_to_the_corpus_counts():
    edits, words = utterance_word_errors(["a b c", "d e"], ["a x c", "d e f"])
    assert edits.tolist() == [1.0, 1.0] and words.tolist() == [3.0, 2.0]


def test_nmi_permutation_test_separates_aligned_from_unrelated_routing():
    groups = [g for g in "abc" for _ in range(10)]
    aligned = nmi_permutation_test([{"a": 0, "b": 1, "c": 2}[g] for g in groups], groups)
    assert aligned["nmi"] == pytest.approx(1.0)
    assert aligned["nmi_p_value"] <= 0.01 and aligned["nmi"] > aligned["nmi_permutation_95"]
    collapsed = nmi_permutation_test([0] * 30, groups)
    assert collapsed["nmi"] == pytest.approx(0.0) and collapsed["nmi_p_value"] == 1.0


@pytest.mark.parametrize("num_routes,num_groups", [(4, 4), (2, 3), (1, 4), (3, 1), (1, 1)])
def test_permuted_nmi_equals_sklearn_on_the_same_shufflings(num_routes, num_groups):
    rng = np.random.default_rng(num_routes * 10 + num_groups)
    routes = rng.integers(0, num_routes, 37).tolist()
    groups = rng.choice(list("abcd")[:num_groups], 37).tolist()
    shuffler = np.random.default_rng(5)
    expected = [normalised_mutual_information(routes, shuffler.permutation(np.asarray(groups)))
                for _ in range(40)]
    assert permuted_nmi(routes, groups, 40, seed=5) == pytest.approx(expected, abs=1e-12)


def test_evaluation_metrics_carry_wer_intervals_and_routing_group_agreement():
    from whisper_moe.stages.evaluate import summarise

    predictions = []
    for i in range(24):
        group = "ab"[i % 2]
        expert = 0 if group == "a" else 1
        weights = [0.0, 0.0]
        weights[expert] = 1.0
        predictions.append({"id": f"u{i}", "group": group, "speaker": f"s{i % 6}",
                            "reference": "one two", "moe": "one two" if i % 3 else "one",
                            "expert_weights": weights, "gate_probs": [0.5, 0.5]})
    metrics = summarise(predictions, num_experts=2)
    low, high = metrics["moe"]["wer_ci95"]
    assert low <= metrics["moe"]["wer"] <= high
    routing = metrics["routing"]
    assert routing["top1_group_nmi"] == pytest.approx(1.0)
    assert routing["top1_group_nmi_p_value"] < 0.01
