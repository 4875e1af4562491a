"""The regression gate (scripts/check_regression.py over whisper_moe.regression): one
baseline per pipeline, the same test set or a refusal, overall, per-group and base checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from whisper_moe.stages.evaluate import evaluated_set_identity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("check_regression", REPO / "scripts" / "check_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def metrics(wer: float, groups: dict[str, float], manifest: str = "a" * 64, base_wer: float = 0.5,
            cer: float = 0.1) -> dict:
    """An evaluation's metrics in the evaluate stage's layout."""
    return {"moe": {"wer": wer, "cer": cer,
                    "per_group": {g: {"wer": w, "cer": cer, "n": 4} for g, w in groups.items()}},
            "base": {"wer": base_wer, "cer": 0.3, "per_group": {}},
            "test_set": {"manifest": "test.jsonl", "manifest_sha256": manifest,
                         "ids_sha256": "b" * 64, "utterances": 8}}


def write(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def judge(gate, tmp_path, new: dict, pipeline: str = "pretrained", *extra: str) -> int:
    return gate(["--new", str(write(tmp_path / "new.json", new)), "--pipeline", pipeline,
                 "--accepted-dir", str(tmp_path / "accepted"), *extra])


def test_a_better_model_is_accepted_and_becomes_the_baseline(gate, tmp_path, capsys):
    write(tmp_path / "accepted" / "pretrained.json", metrics(0.30, {"us": 0.25, "scot": 0.35}))
    new = metrics(0.28, {"us": 0.24, "scot": 0.33})
    assert judge(gate, tmp_path, new, "pretrained", "--accept") == 0
    output = capsys.readouterr().out
    assert "ACCEPTED" in output and "moe.per_group.scot.wer" in output
    written = json.loads((tmp_path / "accepted" / "pretrained.json").read_text())
    assert written["moe"]["wer"] == 0.28 and written["pipeline"] == "pretrained"


def test_one_group_regressing_fails_the_gate_though_overall_wer_improves(gate, tmp_path, capsys):
    accepted = write(tmp_path / "accepted" / "pretrained.json", metrics(0.30, {"us": 0.20, "scot": 0.40}))
    before = accepted.read_text()
    # overall better, but the Scottish group 5 points worse (margin 3)
    new = metrics(0.27, {"us": 0.10, "scot": 0.45})
    assert judge(gate, tmp_path, new, "pretrained", "--accept") == 1
    output = capsys.readouterr().out
    assert "REGRESSION" in output and "moe.per_group.scot.wer" in output.split("REGRESSION")[1]
    assert accepted.read_text() == before  # a regression never replaces the baseline
    assert judge(gate, tmp_path, new, "pretrained", "--max-group-wer-increase", "0.06") == 0


def test_a_rise_of_overall_cer_fails_the_gate(gate, tmp_path, capsys):
    write(tmp_path / "accepted" / "regular.json", metrics(0.30, {"us": 0.30}, cer=0.10))
    assert judge(gate, tmp_path, metrics(0.30, {"us": 0.30}, cer=0.13), "regular") == 1
    assert "over the limit: moe.cer" in capsys.readouterr().out


def test_different_test_sets_are_refused(gate, tmp_path, capsys):
    write(tmp_path / "accepted" / "pretrained.json", metrics(0.30, {"us": 0.30}, manifest="a" * 64))
    code = judge(gate, tmp_path, metrics(0.10, {"us": 0.10}, manifest="c" * 64))
    assert code == 2
    assert "REFUSED: different test sets: test_set.manifest_sha256" in capsys.readouterr().out


def test_metrics_without_a_test_set_hash_are_refused(gate, tmp_path, capsys):
    old_style = metrics(0.30, {"us": 0.30})
    del old_style["test_set"]
    write(tmp_path / "accepted" / "pretrained.json", old_style)
    assert judge(gate, tmp_path, metrics(0.20, {"us": 0.20})) == 2
    assert "test set it was measured on is unknown" in capsys.readouterr().out


def test_each_pipeline_is_compared_with_its_own_baseline(gate, tmp_path, capsys):
    write(tmp_path / "accepted" / "pretrained.json", metrics(0.20, {"us": 0.20}))
    write(tmp_path / "accepted" / "regular.json", metrics(0.35, {"us": 0.35}))
    new = metrics(0.30, {"us": 0.30})
    assert judge(gate, tmp_path, new, "regular") == 0  # better than the regular baseline
    assert "accepted/regular.json" in capsys.readouterr().out
    assert judge(gate, tmp_path, new, "pretrained") == 1  # worse than the pretrained one
    # metrics that say which pipeline made them are refused against another's baseline
    assert judge(gate, tmp_path, {**new, "pipeline": "regular"}, "pretrained") == 2
    assert "each pipeline has its own baseline" in capsys.readouterr().out


def test_a_first_model_is_judged_against_its_base_model(gate, tmp_path, capsys):
    assert judge(gate, tmp_path, metrics(0.30, {"us": 0.30}, base_wer=0.40), "regular", "--accept") == 0
    assert (tmp_path / "accepted" / "regular.json").exists()
    (tmp_path / "accepted" / "regular.json").unlink()
    assert judge(gate, tmp_path, metrics(0.45, {"us": 0.45}, base_wer=0.40), "regular") == 1
    assert "moe.wer vs base.wer" in capsys.readouterr().out
    no_base = metrics(0.30, {"us": 0.30})
    del no_base["base"]
    assert judge(gate, tmp_path, no_base, "regular") == 2
    assert "evaluate.compare_base: true" in capsys.readouterr().out


def test_unreadable_metrics_are_refused(gate, tmp_path, capsys):
    (tmp_path / "new.json").write_text("{not json")
    assert gate(["--new", str(tmp_path / "new.json"), "--pipeline", "regular",
                 "--accepted-dir", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_the_test_set_identity_follows_the_manifest_bytes_and_the_decoded_utterances(tmp_path):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text('{"id": "a", "text": "hi"}\n{"id": "b", "text": "yo"}\n')
    both = evaluated_set_identity(manifest, [{"id": "b"}, {"id": "a"}])
    assert both == evaluated_set_identity(manifest, [{"id": "a"}, {"id": "b"}])  # order does not matter
    assert both["utterances"] == 2
    assert evaluated_set_identity(manifest, [{"id": "a"}])["ids_sha256"] != both["ids_sha256"]
    manifest.write_text('{"id": "a", "text": "hi"}\n{"id": "b", "text": "yo!"}\n')
    assert evaluated_set_identity(manifest, [{"id": "a"}, {"id": "b"}])["manifest_sha256"] != both["manifest_sha256"]
