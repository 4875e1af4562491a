"""The comparison report: one row per run plus the base model, per-group WER columns."""

from __future__ import annotations

import json

import pytest

from whisper_moe.stages import compare


def fake_run(folder, num_experts, rank, wer, pretrained=False, oracle=None):
    """A pipeline output folder as far as compare reads it."""
    (folder / "train").mkdir(parents=True)
    (folder / "evaluate").mkdir()
    (folder / "params.json").write_text(json.dumps({"model": {"lora": {"rank": rank}}}))
    (folder / "train" / "train_metrics.json").write_text(json.dumps(
        {"num_experts": num_experts, "train_time_s": 125.0, "trainable_parameters": 2_500_000}))
    per_group = {"en-us": {"wer": wer - 0.05, "cer": 0.1, "n": 4},
                 "en-029": {"wer": wer + 0.05, "cer": 0.2, "n": 4}}
    metrics = {"utterances": 8, "base_model": "demo",
               "moe": {"wer": wer, "cer": 0.15, "per_group": per_group},
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
    assert "| pretrained MoE (4 experts, rank 16) | pretrained | 30.00 | 15.00 | 28.00 | 35.00 | 25.00 |" in text
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
