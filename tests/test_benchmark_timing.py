"""The training-step benchmark's timing: interleaved rounds, median and spread per method."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from script_loading import load_script


@pytest.fixture(scope="module")
def train_step():
    return load_script("benchmarks/train_step.py", "train_step_benchmark")


def test_rounds_interleave_the_methods_and_rotate_who_goes_first(train_step):
    calls = []
    methods = [{"method": name, "step": (lambda name=name: calls.append(name)), "step_s": []}
               for name in ("a", "b", "c")]
    methods.append({"method": "d", "error": "out of memory"})  # left out of every round
    train_step.time_interleaved(methods, SimpleNamespace(rounds=4, steps_per_round=2),
                                torch.device("cpu"))
    assert calls == (["a", "a", "b", "b", "c", "c"] + ["b", "b", "c", "c", "a", "a"]
                     + ["c", "c", "a", "a", "b", "b"] + ["a", "a", "b", "b", "c", "c"])
    assert [len(m["step_s"]) for m in methods[:3]] == [8, 8, 8]


def test_a_method_is_summarised_by_its_median_step_and_spread(train_step):
    method = {"method": "ours", "trainable_parameters": 10, "step_s": [0.4, 0.1, 0.2, 10.0, 0.3]}
    result = train_step.summary(method, batch_size=2)
    assert result["step_s_median"] == 0.3  # one slow step (another process) does not move it
    assert result["utterances_per_s"] == pytest.approx(2 / 0.3)
    assert result["step_s_min_max"] == [0.1, 10.0] and result["timed_steps"] == 5
    low, high = result["step_s_p25_p75"]
    assert 0.1 <= low <= 0.3 <= high <= 10.0
    assert train_step.summary({"method": "seed", "error": "out of memory"}, 2) == {
        "method": "seed", "error": "out of memory"}
