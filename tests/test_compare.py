"""The comparison report: one row per run plus the base model, per-group WER columns."""

from __future__ import annotations

import json

import pytest

from whisper_moe.stages import compare


def fake_run(folder, num_experts, rank, wer, pretrained=False, oracle=None, steps=12):
    """A pipeline output folder as far as compare reads it."""
    (folder / "train").mkdir(parents=True)
    (folder / "evaluate").mkdir()
    (folder / "params.json").write_text(json.dumps({"model": {"lora": {"rank": rank}}}))
    (folder / "train" / "train_metrics.json").write_text(json.dumps(
        {"num_experts": num_experts, "train_time_s": 125.0, "trainable_parameters": 2_500_000,
         "optimizer_steps": steps}))
    per_group = {"en-us": {"wer": wer - 0.05, "cer": 0.1, "n": 4},
                 "en-029": {"wer": wer + 0.05, "cer": 0.2, "n": 4}}
    metrics = {"utterances": 8, "base_model": "demo", "whisper_normalizer": "whisper_basic",
               "moe": {"wer": wer, "wer_whisper_norm": wer - 0.01, "cer": 0.15, "per_group": per_group},
               "base": {"wer": 0.5, "cer": 0.3, "per_group": {
                   "en-us": {"wer": 0.4, "cer": 0.2, "n": 4}, "en-029": {"wer": 0.6, "cer": 0.4, "n": 4}}}}
    if oracle is not None:
        metrics["oracle"] = {"wer": oracle, "cer": 0.1, "per_group": per_group}
    (folder / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    if pretrained:
        for stage, seconds in (("embed", 10.0), ("cluster", 2.0), ("pretrain_gate", 1.0),
                               ("pretrain_experts", 50.0)):
            (folder / stage).mkdir()
            (folder / stage / "stage_done.json").write_text(json.dumps({"seconds": seconds}))
    return folder


def test_comparison_table_has_every_system_and_group(tmp_path):
    runs = [fake_run(tmp_path / "pretrained", 4, 16, 0.30, pretrained=True, oracle=0.28),
            fake_run(tmp_path / "regular", 4, 16, 0.35)]
    outputs = compare.run({}, runs, tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    systems = [row["system"] for row in result["systems"]]
    assert systems == ["base (demo)", "pretrained MoE (4 experts, rank 16)",
                       "regular MoE (4 experts, rank 16)"]
    assert outputs["systems"] == 3 and result["groups"] == ["en-029", "en-us"]
    pretrained = result["systems"][1]
    assert pretrained["pretraining_time_s"] == 63.0 and pretrained["oracle_wer"] == 0.28
    assert result["systems"][2]["pretraining_time_s"] is None
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert ("| pretrained MoE (4 experts, rank 16) | pretrained | 30.00 | - | 29.00 | 15.00 | 28.00 "
            "| 35.00 | 25.00 |") in text
    assert "| base (demo) | pretrained | 50.00 | - | - |" in text  # no Whisper-norm WER recorded
    assert "whisper_basic" in text
    assert "WER % en-029" in text and "2.50M" in text and "2.1 min" in text
    assert "--num-experts 1 -S model.lora.rank=64" in text  # how to add the single-LoRA baseline


def test_single_lora_run_is_named_and_needs_no_hint(tmp_path):
    runs = [fake_run(tmp_path / "moe", 4, 16, 0.30), fake_run(tmp_path / "single_lora", 1, 64, 0.32)]
    compare.run({}, runs, tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert result["systems"][-1]["system"] == "single LoRA (rank 64)"
    assert not any("single-LoRA" in note for note in result["notes"])


def test_unfinished_run_is_named_in_the_error(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="half"):
        compare.run({}, [tmp_path / "half"], tmp_path / "cmp")


def test_compare_cli(tmp_path, capsys):
    from whisper_moe.cli import main

    run = fake_run(tmp_path / "r", 2, 8, 0.25)
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp"),
                 "--params", str(defaults_only_params(tmp_path))]) == 0
    assert "regular MoE (2 experts, rank 8)" in capsys.readouterr().out


def defaults_only_params(folder):
    """A parameter file that sets nothing, so the built-in defaults apply."""
    path = folder / "defaults.yaml"
    path.write_text("{}\n")
    return path


def write_predictions(folder, hypotheses, base_hypotheses):
    """Eight test utterances of four speakers (two each), five reference words each."""
    with open(folder / "evaluate" / "predictions.jsonl", "w") as handle:
        for i, (moe, base) in enumerate(zip(hypotheses, base_hypotheses)):
            handle.write(json.dumps({"id": f"u{i}", "group": "en-us", "speaker": f"s{i // 2}",
                                     "reference": "one two three four five", "moe": moe,
                                     "base": base}) + "\n")


def test_every_wer_and_difference_has_a_speaker_bootstrap_interval(tmp_path):
    right, wrong = "one two three four five", "one two three four six"
    good = fake_run(tmp_path / "good", 4, 16, 0.0)
    bad = fake_run(tmp_path / "bad", 1, 64, 0.2)
    write_predictions(good, [right] * 8, [wrong] * 8)
    write_predictions(bad, [wrong, right] * 4, [wrong] * 8)
    compare.run({}, [good, bad], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    base, good_row, bad_row = result["systems"]
    assert good_row["wer_ci95"] == [0.0, 0.0]
    assert base["wer_ci95"] == [pytest.approx(0.2), pytest.approx(0.2)]
    assert bad_row["wer_ci95"] == [pytest.approx(0.1), pytest.approx(0.1)]  # 1 error per speaker
    pairs = {(d["a_run"], d["b_run"], d["a"][:4], d["b"][:4]): d for d in result["differences"]}
    assert len(result["differences"]) == 3  # base-good, base-bad, good-bad
    good_minus_bad = pairs[("good", "bad", "regu", "sing")]
    assert good_minus_bad["wer_difference"] == pytest.approx(-0.1)
    assert good_minus_bad["ci95"] == [pytest.approx(-0.1), pytest.approx(-0.1)]
    assert good_minus_bad["speakers"] == 4
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| [0.00, 0.00] |" in text and "95 % speaker-bootstrap intervals" in text


def test_runs_on_different_test_sets_are_not_differenced(tmp_path):
    first = fake_run(tmp_path / "first", 4, 16, 0.0)
    second = fake_run(tmp_path / "second", 1, 64, 0.0)
    write_predictions(first, ["one"] * 8, ["one"] * 8)
    with open(second / "evaluate" / "predictions.jsonl", "w") as handle:
        handle.write(json.dumps({"id": "other", "group": "g", "speaker": "s", "reference": "a",
                                 "moe": "a", "base": "a"}) + "\n")
    compare.run({}, [first, second], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert all(d["a_run"] == d["b_run"] == "first" for d in result["differences"])


def test_sap_cer_gets_a_column_when_the_runs_were_scored_the_sap_way(tmp_path):
    run = fake_run(tmp_path / "sap", 4, 16, 0.30)
    path = run / "evaluate" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["moe"]["sap_cer"] = 0.125
    path.write_text(json.dumps(metrics))
    compare.run({}, [run], tmp_path / "cmp")
    lines = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| system"))
    row = next(line for line in lines if line.startswith("| regular MoE"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[[c.strip() for c in header.split("|")].index("SAP CER %")] == "12.50"
    plain = fake_run(tmp_path / "plain", 4, 16, 0.30)
    compare.run({}, [plain], tmp_path / "cmp-plain")
    assert "SAP CER" not in (tmp_path / "cmp-plain" / "comparison.md").read_text()


def test_routing_quality_and_extra_test_sets_sit_beside_the_wer(tmp_path):
    run = fake_run(tmp_path / "regular", 2, 16, 0.2)
    path = run / "evaluate" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["routing"] = {"gate_entropy_mean": 0.25, "gate_entropy_max": 0.6931, "top1_group_nmi": 0.8,
                          "top1_group_nmi_permutation_95": 0.1, "top1_group_nmi_p_value": 0.001,
                          "expert_share": [4, 4], "dispatch": [6, 5],
                          "top1_counts_per_group": {"en-us": [4, 0], "en-029": [0, 4]}}
    metrics["oracle_routing"] = {"source": "test-set majority of the learned gate",
                                 "group_to_expert": {"en-us": 0, "en-029": 1}}
    metrics["extra_test_sets"] = {"general": {"utterances": 3, "moe": {"wer": 0.125},
                                              "base": {"wer": 0.1}}}
    path.write_text(json.dumps(metrics))
    right, wrong = "one two three four five", "one two three four six"
    with open(run / "evaluate" / "predictions.jsonl", "w") as handle:
        for i in range(8):  # learned: one error in every other utterance; oracle: none
            handle.write(json.dumps({"id": f"u{i}", "group": "en-us", "speaker": f"s{i // 2}",
                                     "reference": right, "moe": wrong if i % 2 else right,
                                     "oracle": right, "base": wrong}) + "\n")
    compare.run({}, [run], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    base, moe = result["systems"]
    assert base["routing"] is None and base["extra_test_sets"] == {"general": 0.1}
    routing = moe["routing"]
    assert routing["dispatch_per_group"] == {"en-us": [4, 0], "en-029": [0, 4]}
    assert routing["learned_minus_oracle"] == pytest.approx(0.1)  # 4 edits on 40 words
    assert routing["learned_minus_oracle_ci95"] == [pytest.approx(0.1), pytest.approx(0.1)]
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert ("| regular MoE (2 experts, rank 16) | regular | 20.00 | 0.250 (0.693) | 0.800 | 0.100 | "
            "0.001 | [4, 4] | [6, 5] | +10.00 | [10.00, 10.00] | test-set majority of the learned gate |") in text
    assert "| regular MoE (2 experts, rank 16) | regular | [0, 4] | [4, 0] |" in text  # en-029, en-us
    assert "## Extra test sets (WER %)" in text and "| base (demo) | regular | 10.00 |" in text


def test_a_single_lora_has_no_routing_section(tmp_path):
    run = fake_run(tmp_path / "single", 1, 64, 0.2)
    path = run / "evaluate" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["routing"] = {"gate_entropy_mean": 0.0, "gate_entropy_max": 0.0, "expert_share": [8],
                          "top1_counts_per_group": {"en-us": [8]}}
    path.write_text(json.dumps(metrics))
    compare.run({}, [run], tmp_path / "cmp")
    assert "## Routing" not in (tmp_path / "cmp" / "comparison.md").read_text()


PROBE = {"accuracy": 0.875, "chance": 0.5, "per_group": {"en-029": 0.75, "en-us": 1.0},
         "held_out_speaker_folds": 4, "utterances": 48}


def stage_reports(folder, expert_steps=6, probe=None):
    """The pretraining stages' own reports as `dvc repro` leaves them: no stage markers;
    embed records `seconds`, expert pretraining `train_time_s`, cluster and gate no time."""
    reports = {"embed/embed_report.json": {"embeddings": 48, "seconds": 30.0},
               "cluster/cluster_report.json": {"num_clusters": 2, "group_probe": probe},
               "pretrain_gate/gate_metrics.json": {"accuracy": 1.0, "epochs_run": 23},
               "pretrain_experts/pretrain_experts_metrics.json": {"optimizer_steps": expert_steps,
                                                                   "train_time_s": 20.0}}
    for name, report in reports.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(json.dumps(report))
    return folder


def test_pretraining_time_under_dvc_repro_comes_from_the_stage_reports(tmp_path):
    run = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3))
    compare.run({}, [run], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    row = result["systems"][-1]
    assert row["system"] == "pretrained MoE (2 experts, rank 16)"
    assert row["pretraining_time_s"] == 50.0  # embed 30 s + expert pretraining 20 s
    assert row["pretraining_time_from"] == "stage reports (embed, pretrain_experts)"
    assert any("(run pretrained: embed, pretrain_experts)" in note for note in result["notes"])
    assert "| 2.1 min | 50.0 s |" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_stage_markers_win_over_the_stage_reports(tmp_path):
    run = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3, pretrained=True))
    assert compare.pretraining_seconds(run) == 63.0  # the markers: 10 + 2 + 1 + 50
    assert compare.pretraining_time_source(run) == "stage markers"


def test_a_gate_report_that_records_its_time_is_counted(tmp_path):
    run = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3))
    (run / "pretrain_gate" / "gate_metrics.json").write_text(json.dumps({"train_time_s": 1.5}))
    assert compare.report_seconds(run) == {"embed": 30.0, "pretrain_gate": 1.5, "pretrain_experts": 20.0}
    assert compare.pretraining_seconds(run) == 51.5


def test_optimizer_steps_count_expert_pretraining_but_not_the_gate(tmp_path):
    pretrained = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3, steps=12), expert_steps=6)
    regular = fake_run(tmp_path / "regular", 2, 16, 0.35, steps=12)
    compare.run({}, [pretrained, regular], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    base, moe, plain = result["systems"]
    assert (moe["optimizer_steps"], moe["pretraining_steps"]) == (18, 6)
    assert (plain["optimizer_steps"], plain["pretraining_steps"]) == (12, None)
    assert base["optimizer_steps"] is None
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| optimizer steps |" in text
    assert "| 2.1 min | 50.0 s | 18 | 2.50M |" in text and "| 2.1 min | - | 12 | 2.50M |" in text
    assert "gate pretraining (pretrain_gate) trains only the small gate MLP" in text
    assert ("different numbers of optimizer steps: pretrained MoE (2 experts, rank 16) (pretrained) 18 "
            "(12 training + 6 expert pretraining); regular MoE (2 experts, rank 16) (regular) 12.") in text


def test_equal_step_budgets_get_no_difference_note(tmp_path):
    pretrained = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3, steps=6), expert_steps=6)
    regular = fake_run(tmp_path / "regular", 2, 16, 0.35, steps=12)
    compare.run({}, [pretrained, regular], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["optimizer_steps"] for row in result["systems"]] == [None, 12, 12]
    assert not any("different numbers of optimizer steps" in note for note in result["notes"])
    assert any("not counted" in note for note in result["notes"])


def test_the_group_probe_of_the_cluster_report_joins_the_routing_section(tmp_path):
    run = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3), probe=PROBE)
    compare.run({}, [run], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert result["systems"][-1]["group_probe"] == PROBE and result["systems"][0]["group_probe"] is None
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Routing" in text
    assert ("Gate input: a linear probe tells the groups apart on held-out speakers with accuracy "
            "0.875 (chance 0.500; per group: en-029 0.750, en-us 1.000)") in text
    assert "48 training utterances in 4 speaker folds" in text


def test_a_null_group_probe_adds_no_line(tmp_path):
    run = stage_reports(fake_run(tmp_path / "pretrained", 2, 16, 0.3), probe=None)
    compare.run({}, [run], tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert result["systems"][-1]["group_probe"] is None
    assert "Gate input" not in (tmp_path / "cmp" / "comparison.md").read_text()
