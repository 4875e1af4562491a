"""End to end on the tiny model: the CLI pipeline, evaluation outputs, transcription."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from whisper_moe import lineage
from whisper_moe.cli import main
from whisper_moe.fsio import sha256_of


def test_regular_pipeline_cli_end_to_end(tmp_path, tiny_params, capsys, monkeypatch):
    monkeypatch.delenv(lineage.COMMIT_ENV, raising=False)  # the commit comes from this checkout
    monkeypatch.delenv(lineage.IMAGE_ENV, raising=False)
    params = dict(tiny_params)
    params["train"] = {**tiny_params["train"], "epochs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    log_file = tmp_path / "logs" / "training.log"
    code = main(["pipeline", "--params", str(tmp_path / "params.yaml"), "--mode", "full",
                 "--skip-pretraining", "--num-experts", "2", "--asr-batch-size", "3",
                 "--output-dir", str(out), "--log-file", str(log_file), "--save-every-n-epochs", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_wer"] is not None and summary["base_test_wer"] is not None
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["moe"]["per_group"]) == {"en-us", "en-gb-scotland", "en-029"}
    assert len(metrics["routing"]["expert_share"]) == 2
    config = json.loads((out / "train" / "checkpoint" / "moe_config.json").read_text())
    assert config["num_experts"] == 2
    html = (out / "evaluate" / "report.html").read_text()
    assert "data:image/png;base64," in html and "WER per group" in html
    predictions = (out / "evaluate" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == metrics["utterances"] > 0
    assert "stage train: starting" in log_file.read_text()
    train_metrics = json.loads((out / "train" / "train_metrics.json").read_text())
    assert train_metrics["optimizer_steps"] > 0
    check_lineage_and_card(out, metrics, tiny_params)

    # --resume skips finished stages.
    assert main(["pipeline", "--params", str(tmp_path / "params.yaml"), "--mode", "full",
                 "--skip-pretraining", "--num-experts", "2", "--output-dir", str(out),
                 "--resume", "--log-file", str(log_file)]) == 0
    assert "finished earlier, skipped" in log_file.read_text()

    # transcribe uses the checkpoint and names the expert.
    capsys.readouterr()
    first = json.loads(predictions[0])
    rows = [json.loads(line) for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    audio = next(r["audio_filepath"] for r in rows if r["id"] == first["id"])
    if not audio.startswith("/"):
        audio = str(out / "data" / audio)
    assert main(["transcribe", "--params", str(tmp_path / "params.yaml"), "--checkpoint",
                 str(out / "train" / "checkpoint"), audio]) == 0
    printed = capsys.readouterr().out
    assert "[expert " in printed and first["moe"] in printed


def check_lineage_and_card(out, metrics: dict, tiny_params: dict) -> None:
    """The checkpoint folder names the code, data, base model, pipeline and run that made it,
    and its model card states the evaluation's numbers."""
    checkpoint = out / "train" / "checkpoint"
    made = json.loads((checkpoint / lineage.LINEAGE_FILE).read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert made["code"]["commit"] == head and made["code"]["from"] == "git"
    assert (made["image"], made["image_digest"]) == (None, None)
    assert (made["pipeline"], made["run_id"]) == ("regular", "run")
    assert made["base_model"] == tiny_params["model"]["base_model"] == metrics["base_model"]
    assert made["data"]["kind"] == "params" and made["data"]["source"] == tiny_params["data"]["source"]
    assert made["data"]["manifests_sha256"] == {split: sha256_of(out / "data" / f"{split}.jsonl")
                                                for split in ("train", "dev", "test")}
    assert made["params"]["model"]["num_experts"] == 2 and made["params"]["train"]["epochs"] == 1

    card = (checkpoint / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    values = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert values == {"wer": round(100 * metrics["moe"]["wer"], 2), "cer": round(100 * metrics["moe"]["cer"], 2)}
    assert "# whisper-moe-regular" in card and "mixture of 2 LoRA experts" in card and head in card
    for group, values in metrics["moe"]["per_group"].items():
        assert f"| {group} | {values['n']} | {values['wer']:.4f} | {values['cer']:.4f} | " in card
    assert f"| base model, same test set | {metrics['base']['wer']:.4f} |" in card


def test_evaluate_a_plain_base_model(tmp_path, tiny_params, tiny_base_dir, tiny_corpus, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    out = tmp_path / "base-eval"
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml"), "--base-model",
                 str(tiny_base_dir), "--manifest", str(tiny_corpus / "test.jsonl"),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "moe" not in metrics and "routing" not in metrics
    assert set(metrics["base"]["per_group"]) == {"en-us", "en-gb-scotland", "en-029"}
    # The tiny model's tokenizer has no normalizer.json, so Whisper's basic normaliser scores.
    assert metrics["whisper_normalizer"] == "whisper_basic"
    assert 0 <= metrics["base"]["wer_whisper_norm"]
    assert all("wer_whisper_norm" in group for group in metrics["base"]["per_group"].values())
    assert "base: WER" in capsys.readouterr().out.replace("  ", " ")
    assert (out / "report.html").read_text().count("<tr>") > 3


def test_a_corpus_folder_built_for_other_settings_is_rebuilt(tmp_path, monkeypatch):
    """A demo corpus (or SAP import) is reused only for the source and settings it was built from."""
    import copy

    from whisper_moe.config import DEFAULT_PARAMS
    from whisper_moe.stages import data as data_stage

    calls = []

    def fake_demo(folder, **settings):
        calls.append(settings)
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            (folder / f"{split}.jsonl").write_text("")

    monkeypatch.setattr("whisper_moe.data.demo.make_demo_corpus", fake_demo)
    params = copy.deepcopy(DEFAULT_PARAMS)
    params["data"]["dir"] = str(tmp_path / "corpus")
    data_stage.source_manifests(params)
    data_stage.source_manifests(params)
    assert len(calls) == 1  # reused
    params["data"]["demo"]["utterances_per_speaker"] = 2
    data_stage.source_manifests(params)
    assert len(calls) == 2  # other settings: rebuilt
