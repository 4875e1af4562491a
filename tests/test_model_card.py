"""lineage.json and the model card: the numbers come from metrics.json, the commit from git,
the data's md5 from dvc.lock, and the front matter is YAML the Hub can read."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from whisper_moe import lineage, model_card

REPO = Path(__file__).resolve().parents[1]
DEMO_EVALUATION = REPO / "dvc_runs" / "pretrained" / "evaluate"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def evaluation_metrics() -> dict:
    return {"moe": {"wer": 0.2345, "cer": 0.1, "wer_ci95": [0.2, 0.27],
                    "per_group": {"scot": {"wer": 0.31, "cer": 0.12, "n": 5},
                                  "us": {"wer": 0.1, "cer": 0.05, "n": 7}}},
            "base": {"wer": 0.4, "cer": 0.2, "per_group": {"scot": {"wer": 0.5, "cer": 0.3, "n": 5},
                                                           "us": {"wer": 0.3, "cer": 0.1, "n": 7}}},
            "test_set": {"manifest": "test.jsonl", "manifest_sha256": "f" * 64, "ids_sha256": "e" * 64,
                         "utterances": 12},
            "base_model": "openai/whisper-large-v2"}


def test_the_card_states_what_the_metrics_and_lineage_hold(tmp_path, tiny_params):
    data = {"kind": "dvc", "repo": "https://example.com/data.git", "rev": "v1", "commit": "c0ffee" * 6 + "abcd",
            "path": "sap", "md5": "0123abcd.dir"}
    made = lineage.build(tiny_params, data, run_id="run-7", pipeline="regular",
                         base_model="openai/whisper-large-v2")
    lineage.write(tmp_path, made)
    path = model_card.write(tmp_path, evaluation_metrics(), made)
    card = path.read_text()

    results = front_matter(card)["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"wer": 23.45, "cer": 10.0}
    assert front_matter(card)["base_model"] == "openai/whisper-large-v2"
    assert "| scot | 5 | 0.3100 | 0.1200 | 0.5000 |" in card  # per group, beside the base model
    assert "| base model, same test set | 0.4000 | 0.2000 |" in card
    assert data["commit"] in card and "0123abcd.dir" in card and "`run-7`" in card
    for section in ("## Training data", "## Intended use", "## Limitations"):
        assert section in card
    recorded = json.loads((tmp_path / lineage.LINEAGE_FILE).read_text())
    assert recorded["data"] == data and recorded["params"] == json.loads(json.dumps(tiny_params))


def test_the_pretrained_cards_epochs_count_expert_pretraining(tiny_params):
    params = {**tiny_params, "mode": "full", "train": {**tiny_params["train"], "epochs": 3},
              "pretrain_experts": {**tiny_params["pretrain_experts"], "epochs": 1,
                                   "count_toward_train_epochs": True}}
    assert model_card.epochs_text(params, "pretrained") == "3 epochs (1 of expert pretraining, 2 joint)"
    assert model_card.epochs_text(params, "regular") == "3 epochs"
    params["pretrain_experts"]["count_toward_train_epochs"] = False
    assert model_card.epochs_text(params, "pretrained") == "4 epochs (1 of expert pretraining, 3 joint)"


def test_lineage_names_the_checked_out_commit_unless_the_image_says_otherwise(monkeypatch, tiny_params):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.delenv(lineage.COMMIT_ENV, raising=False)
    monkeypatch.delenv(lineage.IMAGE_ENV, raising=False)
    assert lineage.code_commit(REPO / "src" / "whisper_moe")["commit"] == head
    assert lineage.image() == {"image": None, "image_digest": None}
    pinned = "registry.example:5000/whisper-moe@sha256:" + "9" * 64
    monkeypatch.setenv(lineage.COMMIT_ENV, "1234abc")
    monkeypatch.setenv(lineage.IMAGE_ENV, pinned)
    made = lineage.build(tiny_params, {"kind": "params"}, run_id="run-1", pipeline="regular")
    assert made["code"]["commit"] == "1234abc"
    assert (made["image"], made["image_digest"]) == (pinned, "sha256:" + "9" * 64)
    assert f"`{pinned}`" in model_card.render(evaluation_metrics(), made)
    monkeypatch.setenv(lineage.COMMIT_ENV, "1234abc-dirty")  # built from a tree with changes
    assert lineage.code_commit() == {"commit": "1234abc", "dirty": True, "from": lineage.COMMIT_ENV}
    tagged = "registry.example:5000/whisper-moe:0.1.0-cpu"  # a port is not a tag, a tag is not a digest
    monkeypatch.setenv(lineage.IMAGE_ENV, tagged)
    assert lineage.image() == {"image": tagged, "image_digest": None}
    assert "not pinned by digest" in model_card.render(evaluation_metrics(), lineage.build(tiny_params, {}))


def test_folder_hash_follows_content_not_location(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "audio").mkdir(parents=True)
        (tmp_path / root / "audio" / "x.wav").write_bytes(b"RIFF1")
        (tmp_path / root / "train.jsonl").write_text("{}\n")
    assert lineage.folder_sha256(tmp_path / "a") == lineage.folder_sha256(tmp_path / "b")
    (tmp_path / "b" / "audio" / "x.wav").write_bytes(b"RIFF2")
    assert lineage.folder_sha256(tmp_path / "a") != lineage.folder_sha256(tmp_path / "b")


@pytest.mark.skipif(not (DEMO_EVALUATION / "metrics.json").exists(), reason="no committed demo metrics")
def test_the_demo_card_from_the_committed_demo_run(tmp_path, monkeypatch, capsys):
    from whisper_moe.cli import build_parser

    monkeypatch.chdir(REPO)
    args = build_parser().parse_args(["model-card", "--evaluation", str(DEMO_EVALUATION), "--out",
                                      str(tmp_path), "--pipeline", "pretrained", "--dvc-lock", "dvc.lock"])
    assert args.handler(args) == 0
    metrics = json.loads((DEMO_EVALUATION / "metrics.json").read_text())
    card = (tmp_path / "README.md").read_text()
    values = {m["type"]: m["value"] for m in front_matter(card)["model-index"][0]["results"][0]["metrics"]}
    assert values["wer"] == round(100 * metrics["moe"]["wer"], 2)
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    data_md5 = next(out["md5"] for out in lock["stages"]["data"]["outs"] if out["path"] == "dvc_runs/data")
    assert json.loads((tmp_path / "lineage.json").read_text())["data"]["md5"] == data_md5
    assert "synthetic" in card
    assert f"mixture of {len(metrics['routing']['expert_share'])} LoRA experts" in card  # not "clustering-chosen"


@pytest.mark.parametrize("pipeline", ["pretrained", "regular"])
def test_the_committed_demo_cards_match_the_committed_evaluations(pipeline):
    """dvc_runs/<pipeline>/model_card is a dvc stage's output committed to git: its numbers and
    data md5 must be those of the committed metrics and dvc.lock, else `dvc repro` was not run."""
    folder = REPO / "dvc_runs" / pipeline
    metrics = json.loads((folder / "evaluate" / "metrics.json").read_text())
    card = (folder / "model_card" / "README.md").read_text()
    values = {m["type"]: m["value"] for m in front_matter(card)["model-index"][0]["results"][0]["metrics"]}
    assert values == {"wer": round(100 * metrics["moe"]["wer"], 2), "cer": round(100 * metrics["moe"]["cer"], 2)}
    assert f"# whisper-moe-{pipeline}" in card
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    data_md5 = next(out["md5"] for out in lock["data"]["outs"] if out["path"] == "dvc_runs/data")
    made = json.loads((folder / "model_card" / "lineage.json").read_text())
    assert (made["data"]["md5"], made["pipeline"]) == (data_md5, pipeline)
    assert {out["path"] for out in lock[f"{pipeline}_model_card"]["outs"]} == {
        f"dvc_runs/{pipeline}/model_card/README.md", f"dvc_runs/{pipeline}/model_card/lineage.json"}
