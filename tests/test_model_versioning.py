"""A published model is versioned by content with DVC (scripts/record_model.py, as the
retrain workflow runs it) on a real S3 server (SeaweedFS): the regular pipeline runs under
kfp.local on the tiny model and publishes to the server, the repository records the published
folder, a fresh clone at the recording commit pulls byte-identical weights, and weights
overwritten in the bucket are caught, both in the published folder and in the DVC remote itself.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from s3_server import S3Server, s3_server  # noqa: F401  (fixture)
from test_dvc_storage import clean_env, dvc, run

pytest.importorskip("dvc_s3")
pytest.importorskip("kfp")
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

REPO = Path(__file__).resolve().parents[1]
RECORD = [sys.executable, str(REPO / "scripts" / "record_model.py")]


@pytest.fixture
def published_run(tmp_path, monkeypatch, s3_server: S3Server, tiny_base_dir, tiny_corpus):  # noqa: F811
    """The regular pipeline run under kfp.local, publishing its model to the S3 server:
    (its pointer, the checkpoint folder the run trained)."""
    from kfp import local
    from test_kfp_pipelines import check_run_outputs, common_arguments

    from pipelines.regular_moe import regular_moe

    for name, value in {**s3_server.env(), "AWS_ENDPOINT_URL": s3_server.endpoint_url,
                        "AWS_EC2_METADATA_DISABLED": "true", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = regular_moe(**common_arguments(tiny_base_dir), num_experts=2, data_dir=str(tiny_corpus),
                       output_s3_uri=f"s3://{s3_server.bucket}/runs")
    pointer = check_run_outputs(task.outputs)
    assert pointer["published"] is True
    return pointer, Path(task.outputs["checkpoint"].path)


def new_repository(root: Path, env: dict, server: S3Server) -> None:
    """git + DVC with the bucket as its remote; `verify` re-hashes what `dvc pull` downloads."""
    root.mkdir()
    run(["git", "init", "-q"], root, env)
    dvc("init", "-q", cwd=root, env=env)
    dvc("remote", "add", "-d", "storage", f"s3://{server.bucket}/dvc-models", cwd=root, env=env)
    dvc("remote", "modify", "storage", "endpointurl", server.endpoint_url, cwd=root, env=env)
    dvc("remote", "modify", "storage", "verify", "true", cwd=root, env=env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "DVC with an S3 remote"], root, env)


def fresh_clone(origin: Path, commit: str, dest: Path, env: dict):
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent, env)
    run(["git", "checkout", "-q", commit], dest, env)
    return dvc("pull", cwd=dest, env=env, check=False)


def remote_key_of(root: Path, recorded: str, relpath: str) -> str:
    """The DVC remote's object key holding one file of a recorded folder."""
    md5 = next(line.split(": ")[1] for line in (root / f"{recorded}.dvc").read_text().splitlines()
               if line.strip().startswith("- md5:"))
    listing = json.loads((root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).read_text())
    file_md5 = next(entry["md5"] for entry in listing if entry["relpath"] == relpath)
    return f"dvc-models/files/md5/{file_md5[:2]}/{file_md5[2:]}"


def test_a_published_model_is_restored_byte_for_byte_and_tampering_is_caught(
        published_run, tmp_path, s3_server: S3Server):  # noqa: F811
    pointer, checkpoint = published_run
    env = clean_env(tmp_path) | s3_server.env() | {"AWS_ENDPOINT_URL": s3_server.endpoint_url}
    origin = tmp_path / "origin"
    new_repository(origin, env, s3_server)

    recorded = run([*RECORD, "record", "--run-uri", pointer["run_uri"], "--dest", "models/regular"],
                   origin, env)
    assert recorded.stdout.split() == ["models/regular.dvc", "models/.gitignore"]
    assert "verify" not in recorded.stderr  # the remote re-hashes what it hands out
    run(["git", "add", "models/regular.dvc", "models/.gitignore"], origin, env)
    run(["git", "commit", "-qm", "Retrained regular model"], origin, env)
    commit = run(["git", "rev-parse", "HEAD"], origin, env).stdout.strip()
    card = (origin / "models" / "regular" / "model" / "README.md").read_text()
    assert "model-index" in card and pointer["lineage"]["code"]["commit"] in card

    clone = tmp_path / "clone"
    pull = fresh_clone(origin, commit, clone, env)
    assert pull.returncode == 0, pull.stderr
    weights = clone / "models" / "regular" / "model" / "model.safetensors"
    assert weights.read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    made = json.loads((clone / "models" / "regular" / "model" / "lineage.json").read_text())
    assert (made["run_id"], made["pipeline"]) == (pointer["run"], "regular")
    # the card the run published is the one versioned with the weights
    card_key = pointer["uri"].split(f"s3://{s3_server.bucket}/", 1)[1] + "/README.md"
    published_card = s3_server.client().get_object(Bucket=s3_server.bucket, Key=card_key)["Body"].read()
    assert (clone / "models" / "regular" / "model" / "README.md").read_bytes() == published_card

    # Weights overwritten in the published folder: `check` names the file.
    unchanged = run([*RECORD, "check", "--run-uri", pointer["run_uri"], "--dest", "models/regular"], clone, env)
    assert "unchanged" in unchanged.stdout
    bucket_key = pointer["uri"].split(f"s3://{s3_server.bucket}/", 1)[1] + "/model.safetensors"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=bucket_key, Body=b"other weights")
    changed = run([*RECORD, "check", "--run-uri", pointer["run_uri"], "--dest", "models/regular"], clone,
                  env, check=False)
    assert changed.returncode == 1 and "CHANGED" in changed.stdout
    assert "model/model.safetensors" in changed.stdout and "model/moe_config.json" not in changed.stdout

    # Weights overwritten in the DVC remote: `dvc pull` re-hashes them and refuses.
    key = remote_key_of(origin, "models/regular", "model/model.safetensors")
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=b"tampered weights")
    tampered = fresh_clone(origin, commit, tmp_path / "clone-after-tampering", env)
    assert tampered.returncode != 0
    assert "Checkout failed" in tampered.stderr, tampered.stderr
    restored = tmp_path / "clone-after-tampering" / "models" / "regular" / "model" / "model.safetensors"
    assert not restored.exists() or restored.read_bytes() != b"tampered weights"


def test_recording_warns_when_the_remote_does_not_verify(tmp_path):
    """Without `verify`, `dvc pull` would hand out an object overwritten in the remote."""
    env = clean_env(tmp_path)
    root = tmp_path / "repo"
    root.mkdir()
    run(["git", "init", "-q"], root, env)
    dvc("init", "-q", cwd=root, env=env)
    dvc("remote", "add", "-d", "storage", str(tmp_path / "remote"), cwd=root, env=env)
    missing = run([*RECORD, "record", "--run-uri", "s3://nowhere/run", "--dest", "models/m"], root,
                  env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, check=False)
    assert "lacks `verify = true`" in missing.stderr
