"""Failures a user can fix: exit code 2, one line that names the thing and the fix, no traceback."""

from __future__ import annotations

import pytest
import yaml

from whisper_moe.cli import main


@pytest.fixture
def params_file(tmp_path, tiny_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params))
    return path


def one_line_error(caplog, capsys) -> str:
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "Traceback" not in capsys.readouterr().err
    return errors[0]


def test_validate_data_given_a_folder(tmp_path, params_file, tiny_corpus, caplog, capsys):
    out = tmp_path / "out"
    code = main(["validate-data", str(tiny_corpus), "--out", str(out), "--params", str(params_file)])
    assert code == 2
    message = one_line_error(caplog, capsys)
    assert f"{tiny_corpus} is a folder, not a manifest" in message
    assert "pass a JSONL manifest file such as" in message and "dev.jsonl" in message


def test_a_missing_manifest(tmp_path, params_file, caplog, capsys):
    code = main(["validate-data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
                 "--params", str(params_file)])
    assert code == 2
    assert "nope.jsonl: no such manifest" in one_line_error(caplog, capsys)


def test_export_peft_into_a_file(tmp_path, caplog, capsys):
    target = tmp_path / "adapters"
    target.write_text("precious")
    code = main(["export-peft", str(tmp_path / "ckpt"), "--out", str(target)])
    assert code == 2
    message = one_line_error(caplog, capsys)
    assert f"--out {target} is a file" in message and "give a folder" in message
    assert target.read_text() == "precious"


def test_disk_full_while_checkpointing(tmp_path, params_file, tiny_corpus, monkeypatch, caplog,
                                       capsys):
    """ENOSPC in the checkpoint writer: one line with the fix, no temporary folder left behind."""
    import errno

    from whisper_moe.training import checkpointing

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    out = tmp_path / "train"
    code = main(["train", "--params", str(params_file), "--train-manifest",
                 str(tiny_corpus / "train.jsonl"), "--dev-manifest", str(tiny_corpus / "dev.jsonl"),
                 "--out", str(out), "--num-experts", "2", "--epochs", "1"])
    assert code == 2
    message = one_line_error(caplog, capsys)
    assert "disk full" in message and "--resume" in message
    leftovers = [p for p in out.rglob("*") if p.name.startswith((".tmp-", ".deleting-"))]
    assert leftovers == []
