"""S3-compatible object storage: upload a folder, download a prefix, say clearly what failed.

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
in Kubernetes from the whisper-moe-s3 Secret) or boto3's usual config files; the
endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph) from AWS_ENDPOINT_URL.
Every failure becomes a StorageError that names the URI, the endpoint and the fix,
because a raw botocore traceback from inside a pipeline pod tells users neither.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from whisper_moe.errors import WhisperMoeError

log = logging.getLogger("whisper_moe.storage")

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
CREDENTIAL_FIX = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in Kubeflow: the whisper-moe-s3 "
                  "Secret, see k8s/templates/s3-credentials.secret.yaml)")
# S3 error codes that mean "these credentials are wrong", as AWS and S3-compatible stores send them
REJECTED_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                             "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}


class StorageError(WhisperMoeError, RuntimeError):
    """An object-storage operation failed; the message names the URI and the fix."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix') (prefix without slashes at the ends)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an S3 URI: expected s3://BUCKET/PREFIX")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket: expected s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def join_uri(uri: str, *parts: str) -> str:
    """s3://bucket/a + (b, c) -> s3://bucket/a/b/c."""
    bucket, prefix = parse_s3_uri(uri)
    segments = [segment.strip("/") for segment in (prefix, *parts) if segment.strip("/")]
    return "/".join([f"s3://{bucket}", *segments])


def endpoint_url() -> str | None:
    """The S3-compatible endpoint from AWS_ENDPOINT_URL; None (AWS itself) when unset or empty."""
    return os.environ.get(ENDPOINT_ENV) or None


def s3_client():
    """A boto3 S3 client for the configured endpoint (path-style addressing works everywhere)."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
    # A new session each time: boto3's default session keeps the first credentials it found.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=config)


def upload_file(local_path: str | os.PathLike, uri: str, client=None) -> str:
    """Upload one file to exactly `uri` (s3://bucket/key); returns the URI."""
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise StorageError(f"{uri!r}: a file upload needs a key, e.g. s3://{bucket}/name.json")
    client = client or s3_client()
    with storage_errors(uri):
        client.upload_file(str(local_path), bucket, key)
    return uri


def upload_bytes(data: bytes, uri: str, content_type: str = "application/octet-stream",
                 client=None) -> str:
    """Write `data` as the object at `uri`."""
    bucket, key = parse_s3_uri(uri)
    client = client or s3_client()
    with storage_errors(uri):
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return uri


def upload_json(payload, uri: str, client=None) -> str:
    return upload_bytes((json.dumps(payload, indent=2) + "\n").encode(), uri,
                        content_type="application/json", client=client)


def upload_folder(local_dir: str | os.PathLike, uri: str, client=None) -> list[str]:
    """Upload every file under local_dir to uri/<relative path>; returns the object URIs."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"{local_dir}: not a folder, nothing to upload to {uri}")
    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    uploaded = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        key = str(PurePosixPath(prefix, path.relative_to(local_dir).as_posix())).lstrip("/")
        with storage_errors(f"s3://{bucket}/{key}"):
            client.upload_file(str(path), bucket, key)
        uploaded.append(f"s3://{bucket}/{key}")
    log.info("uploaded %d files from %s to %s", len(uploaded), local_dir, uri)
    return uploaded


def download_prefix(uri: str, local_dir: str | os.PathLike, client=None) -> list[Path]:
    """Download every object under uri/ into local_dir, keeping the relative layout.

    Raises StorageError when the prefix holds no object, since an empty download
    would otherwise surface much later as a confusing 'no training data'.
    """
    bucket, prefix = parse_s3_uri(uri)
    local_dir = Path(local_dir)
    client = client or s3_client()
    listing_prefix = f"{prefix}/" if prefix else ""
    written = []
    with storage_errors(uri):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listing_prefix)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    for key in keys:
        if key.endswith("/"):
            continue  # folder marker objects some tools create
        relative = PurePosixPath(key[len(listing_prefix):])
        if relative.is_absolute() or ".." in relative.parts:
            raise StorageError(f"s3://{bucket}/{key}: key escapes the prefix {uri}; refusing to write it")
        target = local_dir.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with storage_errors(f"s3://{bucket}/{key}"):
            client.download_file(bucket, key, str(target))
        written.append(target)
    if not written:
        raise StorageError(f"{uri}: no objects under this prefix at {describe_endpoint()}; "
                           "check the bucket and prefix (s3://BUCKET/PREFIX)")
    log.info("downloaded %d files from %s to %s", len(written), uri, local_dir)
    return written


def read_json(uri: str, client=None):
    """The JSON object stored at uri."""
    bucket, key = parse_s3_uri(uri)
    client = client or s3_client()
    with storage_errors(uri):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise StorageError(f"{uri}: not valid JSON ({error})") from error


def describe_endpoint() -> str:
    return f"endpoint {endpoint_url()}" if endpoint_url() else "AWS S3 (AWS_ENDPOINT_URL is not set)"


@contextmanager
def storage_errors(uri: str):
    """Turn botocore failures inside the block into a StorageError naming uri and the fix."""
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        message = explain_s3_error(error, uri)
        if message is None:
            raise
        raise StorageError(message) from error


def explain_s3_error(error: BaseException, uri: str) -> str | None:
    """One clear sentence for a botocore failure; None for errors that are not storage errors."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = describe_endpoint()
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return f"{uri}: no S3 credentials found for {where}: {CREDENTIAL_FIX}"
    if isinstance(error, EndpointConnectionError):
        return (f"{uri}: cannot reach {where}: check {ENDPOINT_ENV} (scheme, host, port) and that "
                "the store is running")
    if isinstance(error, S3UploadFailedError):
        text = str(error)
        code = next((c for c in REJECTED_CREDENTIAL_CODES if c in text), None)
        if code or "AccessDenied" in text or "403" in text:
            return credential_message(uri, where, code or "AccessDenied")
        if "NoSuchBucket" in text:
            return no_bucket_message(uri, where)
        return f"{uri}: upload failed at {where}: {text}"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in REJECTED_CREDENTIAL_CODES or code in {"AccessDenied", "Forbidden", "403"} or status == 403:
            return credential_message(uri, where, code or "403")
        if code in {"NoSuchBucket"}:
            return no_bucket_message(uri, where)
        if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
            return f"{uri}: no such object at {where}; check the path"
        return f"{uri}: S3 request failed at {where}: {code or status}: {error}"
    if isinstance(error, BotoCoreError):
        return f"{uri}: S3 request failed at {where}: {error}"
    return None


def credential_message(uri: str, where: str, code: str) -> str:
    return (f"{uri}: {where} rejected the credentials ({code}): check that AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY belong to this store and may access the bucket; "
            f"{CREDENTIAL_FIX}")


def no_bucket_message(uri: str, where: str) -> str:
    bucket, _ = parse_s3_uri(uri)
    return f"{uri}: bucket {bucket!r} does not exist at {where}: create it or fix the URI"
