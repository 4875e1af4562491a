"""The routing-symmetry benchmark's pure parts: metrics to table rows, criteria, formatting
(no training: hand-made metrics dicts)."""

from __future__ import annotations

import json
import math

import pytest
from script_loading import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/routing_symmetry.py", "routing_symmetry_benchmark")


def metrics(entropy=1.0, nmi=0.5, level=0.1, p=0.001, share=(20, 0, 12, 8), wer=0.125):
    return {
        "utterances": sum(share),
        "moe": {"wer": wer, "wer_ci95": [0.1, 0.15]},
        "routing": {
            "gate_entropy_mean": entropy, "gate_entropy_max": math.log(4),
            "top1_group_nmi": nmi, "top1_group_nmi_permutation_95": level,
            "top1_group_nmi_p_value": p, "permutations": 1000, "expert_share": list(share),
            "top1_counts_per_group": {"en-us": [10, 0, 0, 0], "atypical": [10, 0, 12, 8]},
        },
    }


def test_a_row_counts_idle_experts_and_reads_every_metric(bench):
    row = bench.row_from_metrics("topk2-from-start", 42, ["routing.mode=topk"], metrics(),
                                 {"train_time_s": 150.0}, reference="curriculum-top2",
                                 difference={"wer_minus_reference": 0.01, "ci95": [-0.02, 0.04]},
                                 top1_probability=0.6)
    assert row["idle_experts"] == 1 and row["expert_share"] == [20, 0, 12, 8]
    assert row["wer"] == 0.125 and row["wer_ci95"] == [0.1, 0.15]  # the evaluation's, when none given
    assert row["gate_entropy_ratio"] == pytest.approx(1.0 / math.log(4))
    assert row["train_time_s"] == 150.0 and row["utterances"] == 40
    assert row["checks"] == {"not_near_uniform": True, "nmi_above_chance": True,
                             "no_idle_expert": False, "wer_not_worse": True}
    json.dumps(row)  # the results file holds the rows as they are


def test_idle_experts_are_the_zero_counts(bench):
    assert bench.idle_experts([53, 0, 22, 5]) == 1
    assert bench.idle_experts([80, 0, 0, 0]) == 3
    assert bench.idle_experts([10, 10, 10, 10]) == 0


@pytest.mark.parametrize("changes, failed", [
    (dict(entropy=0.95 * math.log(4)), "not_near_uniform"),
    (dict(nmi=0.05, level=0.08, p=0.3), "nmi_above_chance"),
    (dict(share=(10, 10, 10, 10)), None),
])
def test_each_criterion_fails_on_its_own(bench, changes, failed):
    settings = {"share": (10, 10, 10, 10), **changes}
    row = bench.row_from_metrics("v", 42, [], metrics(**settings), {})
    assert [name for name, ok in row["checks"].items() if not ok] == ([failed] if failed else [])


def test_wer_worse_beyond_noise_fails_and_within_noise_passes(bench):
    def row(ci):
        return bench.row_from_metrics("b", 42, [], metrics(share=(10, 10, 10, 10)), {}, reference="a",
                                      difference={"wer_minus_reference": 0.03, "ci95": ci})
    assert row([0.01, 0.05])["checks"]["wer_not_worse"] is False
    assert row([-0.01, 0.05])["checks"]["wer_not_worse"] is True
    unknown = bench.row_from_metrics("b", 42, [], metrics(), {}, reference="a")
    assert unknown["checks"]["wer_not_worse"] is None  # no paired predictions: not judged
    assert bench.criteria_cell(unknown["checks"]) == "idle expert, WER worse?"


def test_table_cells_format_percent_intervals_and_verdict(bench):
    row = bench.row_from_metrics("topk1-from-start", 43, ["routing.mode=topk", "routing.top_k=1"],
                                 metrics(entropy=0.7, share=(10, 10, 10, 10)), {"train_time_s": 300.0},
                                 wer_ci95=[0.08, 0.2], reference="curriculum-top2",
                                 difference={"wer_minus_reference": -0.0125, "ci95": [-0.05, 0.02]},
                                 top1_probability=0.71)
    cells = bench.table_cells(row)
    assert len(cells) == len(bench.HEADER)
    assert cells[:3] == ["topk1-from-start", "43", "`routing.mode=topk routing.top_k=1`"]
    assert cells[3] == "12.50 [8.00, 20.00]"
    assert cells[4] == "-1.25 [-5.00, 2.00]"
    assert cells[5] == "0.700 / 1.386 (50 %), top-1 p 0.71"
    assert cells[6] == "0.500 / 0.100 / 0.001"
    assert cells[7:] == ["[10, 10, 10, 10]", "0", "5.0 min", "all met"]


def test_the_reference_row_and_missing_values(bench):
    row = bench.row_from_metrics("curriculum-top2", 42, [], {"moe": {"wer": 0.2}}, {},
                                 reference="curriculum-top2")
    cells = bench.table_cells(row)
    assert cells[2] == "`params.yaml`" and cells[4] == "reference"
    assert cells[3] == "20.00 -" and cells[5:10] == ["-", "-", "[]", "0", "-"]


def test_the_markdown_report_has_one_line_per_run_and_the_dispatch_per_group(bench):
    rows = [bench.row_from_metrics(name, 42, bench.VARIANTS[name], metrics(), {"train_time_s": 60.0},
                                   reference="curriculum-top2")
            for name in ("curriculum-top2", "topk2-lb0.05")]
    meta = {"date": "2026-01-01T00:00:00+00:00", "machine": {"platform": "Linux", "cpu_count": 2},
            "mode": "full", "command": "python benchmarks/routing_symmetry.py",
            "variants": ["curriculum-top2", "topk2-lb0.05"]}
    text = bench.report(rows, meta)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 * (1 + len(rows))  # two tables, a header and a line per run each
    assert "| topk2-lb0.05 | 42 | [10, 0, 12, 8] | [10, 0, 0, 0] |" in text  # groups sorted: atypical first
    assert "2 CPUs" in text and "40 test utterances" in text


def test_arguments(bench):
    args = bench.parse_args(["--variants", "topk2-from-start,topk1-from-start", "--seeds", "42,43", "--quick"])
    assert args.variants == ["topk2-from-start", "topk1-from-start"] and args.seeds == [42, 43] and args.quick
    assert bench.parse_args([]).variants == list(bench.VARIANTS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "nope"])


def test_a_resumed_training_is_marked(bench, tmp_path):
    (tmp_path / "train.log").write_text("... INFO whisper_moe.train: resumed from .../step-00000013\n")
    assert bench.resumed(tmp_path) and not bench.resumed(tmp_path / "missing")
    row = bench.row_from_metrics("v", 43, [], metrics(), {"train_time_s": 120.0}, was_resumed=True)
    assert bench.table_cells(row)[9] == "2.0 min (resumed)"


def test_runs_not_made_are_left_out_of_the_table(bench, tmp_path):
    trained_only = bench.run_dir(tmp_path, "topk2-from-start", 42) / "train"
    trained_only.mkdir(parents=True)
    (trained_only / "train_metrics.json").write_text("{}")
    assert not bench.finished(trained_only.parent)
    assert bench.collect(tmp_path, ["topk2-from-start", "topk2-gate-lr0.01"], [42, 43]) == []


def test_every_variant_names_its_routing_mode_and_gate_learning_rate(bench):
    for settings in bench.VARIANTS.values():
        keys = {setting.split("=")[0] for setting in settings}
        assert {"routing.mode", "train.gate_lr"} <= keys
