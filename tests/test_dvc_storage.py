"""DVC with an S3 remote on a real S3-compatible server (SeaweedFS, see s3_server.py).

A throwaway git + DVC repository with a small tracked folder: push, lose the cache and
the workspace copy, pull, and get the same bytes back; wrong credentials or an
unreachable endpoint fail loudly and leave the local files alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from s3_server import S3Server, free_ports, s3_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dvc_s3") is None,
    reason="dvc with S3 support is not installed (pip install 'dvc[s3]')",
)

DVC_TIMEOUT_S = 120


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for dvc: no AWS settings from the caller's shell, no analytics,
    DVC's per-user state inside the test folder."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update({
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], check: bool = True
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=DVC_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def dvc(*args: str, cwd: Path, env: dict[str, str], check: bool = True
        ) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, env, check)


def remove_cache_and_workspace_copy(root: Path) -> None:
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(root / "dataset")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, except DVC's and git's scratch state."""
    skip = (root / ".dvc" / "tmp", root / ".git")
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory, s3_server: S3Server):  # noqa: F811
    """A git + DVC repository with `dataset/` tracked by `dvc add` and an S3 remote
    (url and endpoint in .dvc/config, credentials only in the environment); built once,
    each test works on its own copy."""
    base = tmp_path_factory.mktemp("dvc-template")
    root = base / "repo"
    root.mkdir()
    env = clean_env(base)
    run(["git", "init", "-q"], root, env)
    dvc("init", "-q", cwd=root, env=env)
    dataset = root / "dataset"
    (dataset / "audio").mkdir(parents=True)
    (dataset / "train.jsonl").write_text('{"id": "a", "audio_filepath": "audio/a.wav"}\n')
    (dataset / "audio" / "a.wav").write_bytes(os.urandom(50_000))
    (dataset / "audio" / "b.wav").write_bytes(os.urandom(3_000))
    dvc("add", "-q", "dataset", cwd=root, env=env)
    dvc("remote", "add", "-d", "storage", f"s3://{s3_server.bucket}/dvc", cwd=root, env=env)
    dvc("remote", "modify", "storage", "endpointurl", s3_server.endpoint_url, cwd=root, env=env)
    run(["git", "add", "."], root, env)
    run(["git", "commit", "-q", "-m", "dataset"], root, env)
    return root


@pytest.fixture
def repo(template_repo, tmp_path, s3_server: S3Server, request):  # noqa: F811
    """This test's copy of the template, pushing to its own prefix in the bucket."""
    root = tmp_path / "repo"
    shutil.copytree(template_repo, root, symlinks=True)
    env = clean_env(tmp_path)
    prefix = f"dvc/{request.node.name}"
    dvc("remote", "modify", "storage", "url", f"s3://{s3_server.bucket}/{prefix}", cwd=root,
        env=env)
    return root, env, prefix


def test_push_then_pull_restores_identical_bytes(repo, s3_server: S3Server):  # noqa: F811
    root, env, prefix = repo
    before = snapshot(root / "dataset")
    dvc("push", cwd=root, env=env | s3_server.env())
    assert len(s3_server.keys(prefix)) >= 3  # two audio files, the manifest, the .dir listing

    remove_cache_and_workspace_copy(root)

    dvc("pull", cwd=root, env=env | s3_server.env())
    assert snapshot(root / "dataset") == before


def test_credentials_from_config_local_stay_out_of_git(repo, s3_server: S3Server):  # noqa: F811
    root, env, _ = repo
    dvc("remote", "modify", "--local", "storage", "access_key_id", s3_server.access_key_id,
        cwd=root, env=env)
    dvc("remote", "modify", "--local", "storage", "secret_access_key",
        s3_server.secret_access_key, cwd=root, env=env)
    dvc("push", cwd=root, env=env)  # no AWS_* variables: the keys come from config.local

    assert s3_server.secret_access_key not in (root / ".dvc" / "config").read_text()
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], root, env,
               check=False).returncode == 0
    run(["git", "add", "-A"], root, env)
    tracked = run(["git", "ls-files"], root, env).stdout.split()
    assert ".dvc/config.local" not in tracked


def test_wrong_secret_fails_clearly_and_changes_nothing(repo, s3_server: S3Server):  # noqa: F811
    root, env, prefix = repo
    bad_env = env | s3_server.env() | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    before = snapshot(root)

    push = dvc("push", cwd=root, env=bad_env, check=False)
    assert push.returncode != 0
    # S3 answers a request signed with the wrong secret with 403 Forbidden.
    assert "Forbidden" in push.stderr and "403" in push.stderr, push.stderr
    assert s3_server.keys(prefix) == []
    assert snapshot(root) == before

    remove_cache_and_workspace_copy(root)
    before = snapshot(root)
    pull = dvc("pull", cwd=root, env=bad_env, check=False)
    assert pull.returncode != 0
    assert "Forbidden" in pull.stderr and "failed to pull data" in pull.stderr, pull.stderr
    assert snapshot(root) == before
    assert not (root / "dataset").exists()


def test_missing_credentials_are_named(repo, s3_server: S3Server):  # noqa: F811
    root, env, _ = repo
    push = dvc("push", cwd=root, env=env, check=False)
    assert push.returncode != 0
    assert "Unable to locate credentials" in push.stderr, push.stderr


def test_unreachable_endpoint_fails_clearly_and_changes_nothing(
        repo, s3_server: S3Server):  # noqa: F811
    root, env, _ = repo
    dead_endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    dvc("remote", "modify", "--local", "storage", "endpointurl", dead_endpoint, cwd=root, env=env)
    remove_cache_and_workspace_copy(root)
    before = snapshot(root)

    # One attempt instead of botocore's retries with back-off (about 25 s).
    pull = dvc("pull", cwd=root, env=env | s3_server.env() | {"AWS_MAX_ATTEMPTS": "1"},
               check=False)
    assert pull.returncode != 0
    assert "Could not connect to the endpoint URL" in pull.stderr, pull.stderr
    assert dead_endpoint in pull.stderr
    assert snapshot(root) == before
