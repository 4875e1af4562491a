"""Data that is not downloaded again: resolve-data names the data by what it is, prepare-data is
cached on that name, and a second run on the same data fetches nothing.

Downloads are measured on the S3 server itself (SeaweedFS's Prometheus counters: GET requests
and bytes sent for the bucket), not inferred from logs, so a fetch that slipped past the cache
shows up as GETs.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

pytest.importorskip("kfp")

from s3_server import S3Server, seaweedfs_s3
from test_kfp_pipelines import check_run_outputs, common_arguments


@pytest.fixture(scope="module")
def s3_metered(tmp_path_factory):
    """SeaweedFS with its request counters served, for this module only."""
    with seaweedfs_s3(tmp_path_factory.mktemp("seaweedfs-metered"), bucket="corpora",
                      metrics=True) as server:
        yield server


@pytest.fixture
def s3_env(s3_metered: S3Server, monkeypatch):
    """The AWS_* variables every component (and its subprocess) reads, pointing at the server."""
    for name, value in {**s3_metered.env(), "AWS_ENDPOINT_URL": s3_metered.endpoint_url}.items():
        monkeypatch.setenv(name, value)
    return s3_metered


def downloaded(server: S3Server) -> tuple[int, int]:
    """(GET requests answered, bytes sent) for the server's bucket so far."""
    counters = server.counters()
    gets = sum(value for name, value in counters.items()
               if name.startswith("SeaweedFS_s3_request_total{") and f'bucket="{server.bucket}"' in name
               and 'type="GET"' in name)
    sent = counters.get(f'SeaweedFS_s3_bucket_traffic_sent_bytes_total{{bucket="{server.bucket}"}}', 0.0)
    return int(gets), int(sent)


def upload(server: S3Server, folder: Path, prefix: str) -> int:
    """Every file of folder under prefix/; returns the bytes uploaded."""
    client, total = server.client(), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.put_object(Bucket=server.bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                          Body=path.read_bytes())
        total += path.stat().st_size
    return total


def test_the_s3_identity_lists_without_downloading_and_follows_the_bytes(s3_env, tiny_corpus, tmp_path):
    from whisper_moe_kfp.runtime import (
        DataChangedError,
        fetch_training_data,
        identify_training_data,
    )

    uri = f"s3://{s3_env.bucket}/identity/v1"
    size = upload(s3_env, tiny_corpus, "identity/v1")
    before = downloaded(s3_env)
    identity = identify_training_data(data_s3_uri=uri)
    assert downloaded(s3_env) == before, "naming the data downloaded some of it"
    assert identity["kind"] == "s3" and identity["bytes"] == size
    assert identity["objects"] == sum(1 for p in tiny_corpus.rglob("*") if p.is_file())

    upload(s3_env, tiny_corpus, "identity/v1")  # the same bytes written again: the same data
    assert identify_training_data(data_s3_uri=uri) == identity
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="identity/v1/train.jsonl",
                               Body=(tiny_corpus / "train.jsonl").read_bytes() + b"\n")
    changed = identify_training_data(data_s3_uri=uri)
    assert changed["listing_sha256"] != identity["listing_sha256"]

    # prepare-data given the old identity refuses before downloading anything
    before = downloaded(s3_env)
    with pytest.raises(DataChangedError, match="start the run again"):
        fetch_training_data(tmp_path / "stale", data_s3_uri=uri, identity=identity)
    assert downloaded(s3_env) == before and not (tmp_path / "stale").exists()
    source = fetch_training_data(tmp_path / "fresh", data_s3_uri=uri, identity=changed)
    gets, sent = downloaded(s3_env)
    # boto3 sends a HEAD before each GET, which SeaweedFS counts as a GET too
    assert gets - before[0] >= changed["objects"] and sent - before[1] == changed["bytes"]
    assert source["listing_sha256"] == changed["listing_sha256"]


def run_folders(pipeline_root: Path) -> set[Path]:
    return {p for p in pipeline_root.iterdir() if p.is_dir() and not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_a_second_run_on_the_same_s3_data_downloads_nothing(s3_env, tiny_base_dir, tiny_corpus, tmp_path,
                                                           monkeypatch, caplog):
    """Three runs of the regular pipeline under kfp.local with its task cache on: the second, on
    the same prefix, gets prepare-data from the cache and sends no GET to S3; after a file of the
    prefix changes, the third fetches again."""
    from kfp import local

    from pipelines.regular_moe import regular_moe

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pipeline_root = tmp_path / "kfp"
    pipeline_root.mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=True)
    caplog.set_level(logging.INFO)
    corpus_bytes = upload(s3_env, tiny_corpus, "sap/latest")
    arguments = {**common_arguments(tiny_base_dir), "num_experts": 2,
                 "data_s3_uri": f"s3://{s3_env.bucket}/sap/latest"}

    def run() -> tuple[Path, tuple[int, int], set[str], dict]:
        folders, before = run_folders(pipeline_root), downloaded(s3_env)
        caplog.clear()
        outputs = regular_moe(**arguments).outputs
        after = downloaded(s3_env)
        (folder,) = run_folders(pipeline_root) - folders
        hits = {record.getMessage().split()[1] for record in caplog.records
                if record.getMessage().startswith("Task ") and " cache hit " in record.getMessage()}
        check_run_outputs(outputs)
        return folder, (after[0] - before[0], after[1] - before[1]), hits, outputs

    first, first_fetch, first_hits, _ = run()
    assert first_hits == set()
    files = sum(1 for p in tiny_corpus.rglob("*") if p.is_file())
    assert first_fetch[0] >= files and first_fetch[1] == corpus_bytes, first_fetch  # the meter sees a fetch
    assert (first / "prepare-data").is_dir()

    second, second_fetch, second_hits, outputs = run()
    assert second_fetch == (0, 0), f"the second run downloaded {second_fetch} (GETs, bytes)"
    assert "prepare-data" in second_hits and "train-moe" not in second_hits, second_hits
    assert (second / "resolve-data").is_dir(), "resolve-data must run every time"
    assert not (second / "prepare-data").exists()
    assert (second / "train-moe").is_dir()  # training is never cached: the run really trained
    # the cached dataset is the first run's artifact, recorded with the source it came from
    recorded = json.loads((first / "prepare-data" / "dataset" / "data_source.json").read_text())
    assert recorded["kind"] == "s3" and recorded["uri"] == arguments["data_s3_uri"]

    train = (tiny_corpus / "train.jsonl").read_text().splitlines()
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="sap/latest/train.jsonl",
                               Body=("\n".join(train[:-1]) + "\n").encode())
    third, third_fetch, third_hits, _ = run()
    print(f"downloaded (GET requests, bytes): first run {first_fetch}, second {second_fetch}, "
          f"third after a change {third_fetch}; corpus {files} files, {corpus_bytes} bytes")
    assert "prepare-data" not in third_hits and (third / "prepare-data").is_dir()
    assert third_fetch[0] >= files and third_fetch[1] > 0, third_fetch
    kept = (third / "prepare-data" / "dataset" / "train.jsonl").read_text().splitlines()
    assert len(kept) == len(train) - 1
    shutil.rmtree(pipeline_root, ignore_errors=True)
