"""whisper_moe.storage against moto's S3 server: round trips and the errors users see.

The `moto_s3` fixture (an S3 endpoint on 127.0.0.1 with the AWS_* variables pointing at
it) is also used by the Kubeflow client and pipeline tests.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("moto.server")

from whisper_moe import storage

BUCKETS = ("results", "data")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_s3(moto_server, monkeypatch, tmp_path):
    """An empty S3 store with buckets 'results' and 'data'; AWS_* point at it."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    isolated = {
        "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_ENDPOINT_URL": moto_server, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    for name, value in isolated.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = storage.s3_client()
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    return moto_server


def make_folder(root, files: dict[str, bytes]):
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {"train.jsonl": b'{"id": "a"}\n', "wavs/en-us/a.wav": b"RIFF0000", "deep/er/b.bin": bytes(range(256))}


def test_upload_then_download_gives_the_same_tree(moto_s3, tmp_path):
    source = make_folder(tmp_path / "source", FILES)
    uploaded = storage.upload_folder(source, "s3://data/corpus/v1/")
    assert sorted(uploaded) == sorted(f"s3://data/corpus/v1/{name}" for name in FILES)

    written = storage.download_prefix("s3://data/corpus/v1", tmp_path / "copy")
    assert len(written) == len(FILES)
    for relative, data in FILES.items():
        assert (tmp_path / "copy" / relative).read_bytes() == data


def test_download_takes_only_the_prefix_folder(moto_s3, tmp_path):
    storage.upload_folder(make_folder(tmp_path / "a", {"x.txt": b"a"}), "s3://data/run")
    storage.upload_folder(make_folder(tmp_path / "b", {"y.txt": b"b"}), "s3://data/run-2")
    written = storage.download_prefix("s3://data/run", tmp_path / "copy")
    assert [p.name for p in written] == ["x.txt"]


def test_json_round_trip_and_uri_helpers(moto_s3):
    storage.upload_json({"wer": 0.1}, storage.join_uri("s3://results/runs/", "r1", "pointer.json"))
    assert storage.read_json("s3://results/runs/r1/pointer.json") == {"wer": 0.1}
    assert storage.parse_s3_uri("s3://bucket") == ("bucket", "")
    assert storage.join_uri("s3://bucket", "a/", "/b") == "s3://bucket/a/b"


def test_wrong_credentials_give_a_storage_error_naming_the_fix(moto_s3, tmp_path):
    from moto.core import enable_iam_authentication  # the server checks keys from here on

    source = make_folder(tmp_path / "source", {"a.txt": b"a"})
    with enable_iam_authentication():
        with pytest.raises(storage.StorageError) as upload_error:
            storage.upload_folder(source, "s3://results/model")
        with pytest.raises(storage.StorageError) as download_error:
            storage.download_prefix("s3://results/model", tmp_path / "copy")
    for error in (upload_error.value, download_error.value):
        message = str(error)
        assert "rejected the credentials (InvalidAccessKeyId)" in message
        assert "AWS_ACCESS_KEY_ID" in message and "whisper-moe-s3" in message
        assert moto_s3 in message  # the endpoint it talked to


def test_missing_credentials_say_which_variables_to_set(moto_s3, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(storage.StorageError, match="no S3 credentials found .*set AWS_ACCESS_KEY_ID"):
        storage.download_prefix("s3://data/corpus", tmp_path / "copy")


def test_missing_bucket_and_empty_prefix_are_named(moto_s3, tmp_path):
    with pytest.raises(storage.StorageError, match="bucket 'nowhere' does not exist"):
        storage.download_prefix("s3://nowhere/corpus", tmp_path / "copy")
    with pytest.raises(storage.StorageError, match="bucket 'nowhere' does not exist"):
        storage.upload_folder(make_folder(tmp_path / "s", {"a": b"a"}), "s3://nowhere/x")
    with pytest.raises(storage.StorageError, match="no objects under this prefix"):
        storage.download_prefix("s3://data/empty", tmp_path / "copy")


def test_not_an_s3_uri():
    with pytest.raises(storage.StorageError, match="not an S3 URI"):
        storage.parse_s3_uri("/local/path")
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.parse_s3_uri("s3:///key")


def test_pointer_json_is_plain_json(moto_s3):
    storage.upload_json({"uri": "s3://results/x/model"}, "s3://results/x/pointer.json")
    body = storage.s3_client().get_object(Bucket="results", Key="x/pointer.json")["Body"].read()
    assert json.loads(body) == {"uri": "s3://results/x/model"}
