"""S3Backend beyond the contract: URLs, multipart, and what users meet when things go wrong
(a missing bucket, a server that never answers, a connection or server dying mid-upload, wrong
or missing credentials). Real servers on loopback: moto, rclone, and plain sockets."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from backend_suite import one_line
from s3_servers import (
    ACCESS_KEY,
    BUCKET,
    RCLONE_BUCKET,
    SECRET_KEY,
    CuttingProxy,
    RcloneServer,
    SilentServer,
    aws_env,
    fresh_url,
    moto_endpoint,
    moto_iam_checks,
    raw_client,
    rclone_endpoint,
)

from chromasnap.snapshots.errors import (
    ObjectExists,
    ObjectNotFound,
    PermanentStoreError,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
    UsageError,
)
from chromasnap.snapshots.retry import RetryingBackend
from chromasnap.snapshots.s3_backend import MiB, S3Backend, parse_s3_url

FIXTURES = (aws_env, moto_endpoint, rclone_endpoint)  # pytest fixtures from s3_servers


def secrets() -> tuple[str, ...]:
    return (SECRET_KEY, ACCESS_KEY, "X-Amz-Signature", "X-Amz-Credential", "Signature=")


# --- URLs and imports ------------------------------------------------------------------------


def test_importing_the_module_does_not_import_boto3() -> None:
    code = (
        "import sys, chromasnap.snapshots.s3_backend, chromasnap.cli.app\n"
        "print(sorted(m for m in ('boto3', 'botocore', 'moto') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_store_urls() -> None:
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/team/chroma/") == ("my-bucket", "team/chroma")
    for bad in ("s3://Bad_Bucket/x", "s3://ab/x", "http://bucket/x", "s3://bucket/../x", "s3://bucket/a//b"):
        with pytest.raises((UsageError, StoreError)):
            parse_s3_url(bad)
    for leaky in (f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x", f"s3://bucket/x?secret={SECRET_KEY}"):
        with pytest.raises(UsageError) as info:
            S3Backend(leaky)
        one_line(info.value, *secrets())


def test_location_is_printable_and_secret_free(moto_endpoint: str) -> None:
    backend = S3Backend(f"s3://{BUCKET}/a/b/", endpoint_url=moto_endpoint)
    assert backend.location == f"s3://{BUCKET}/a/b"
    assert S3Backend(f"s3://{BUCKET}", endpoint_url=moto_endpoint).location == f"s3://{BUCKET}"


# --- multipart ---------------------------------------------------------------------------------


def test_multipart_upload_is_conditional_and_leaves_no_upload_behind(
    moto_endpoint: str, tmp_path: Path
) -> None:
    url = fresh_url()
    backend = S3Backend(url, endpoint_url=moto_endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(11 * MiB + 7)  # three parts, the last short
    local = tmp_path / "pack"
    local.write_bytes(data)
    backend.save_file("packs/mp/big", local, create_only=True)
    assert not local.exists()
    assert backend.stat("packs/mp/big") == len(data)
    edge = 5 * MiB
    assert backend.load("packs/mp/big", edge - 10, 20) == data[edge - 10 : edge + 10]
    assert backend.load("packs/mp/big") == data

    # If-None-Match on CompleteMultipartUpload: a second create of the name is refused
    other = tmp_path / "other"
    other.write_bytes(os.urandom(len(data)))
    with pytest.raises(ObjectExists):
        backend.save_file("packs/mp/big", other, create_only=True)
    assert other.exists() and backend.load("packs/mp/big", 0, 1000) == data[:1000]
    with pytest.raises(ObjectExists):
        backend.save("packs/mp/big", data, create_only=True)

    # a compare-and-swap of a large object goes up in one PUT (moto ignores If-Match on Complete)
    _, tag = backend.load_versioned("packs/mp/big")
    backend.save("packs/mp/big", data[::-1], if_match=tag)
    with pytest.raises(PreconditionFailed):
        backend.save("packs/mp/big", data, if_match=tag)
    assert backend.load("packs/mp/big", 0, 100) == data[::-1][:100]

    prefix = parse_s3_url(url)[1] + "/"
    uploads = raw_client(moto_endpoint).list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    assert uploads.get("Uploads", []) == []  # the refused uploads were aborted
    backend.close()


# --- the bucket --------------------------------------------------------------------------------


def test_missing_bucket_is_permanent_and_create_makes_it(moto_endpoint: str) -> None:
    bucket = f"chromasnap-missing-{os.urandom(4).hex()}"
    backend = RetryingBackend(S3Backend(f"s3://{bucket}/store", endpoint_url=moto_endpoint))
    assert not backend.exists()
    for call in (
        lambda: backend.load("config.json"),
        lambda: backend.stat("config.json"),
        lambda: backend.list("packs"),
        lambda: backend.save("config.json", b"{}"),
    ):
        with pytest.raises(PermanentStoreError) as info:
            call()
        assert f"bucket {bucket} does not exist" in one_line(info.value, *secrets())
    assert backend.retries == 0
    backend.create()
    backend.create()
    assert not backend.exists()
    backend.save("config.json", b"{}", create_only=True)
    assert backend.exists()


# --- servers that fail -------------------------------------------------------------------------


def test_a_server_that_never_answers_times_out_with_one_line() -> None:
    silent = SilentServer()
    try:
        inner = S3Backend(
            fresh_url(), endpoint_url=silent.endpoint, connect_timeout=0.5, read_timeout=0.5, connections=2
        )
        for call in (
            lambda: inner.stat("config.json"),
            lambda: inner.load("packs/aa/x", 0, 10),
            lambda: inner.save("index/i", b"{}", create_only=True),
            lambda: inner.save("index/big", os.urandom(8 * MiB), create_only=True),
            lambda: inner.list("snapshots"),
        ):
            with pytest.raises(TransientStoreError) as info:
                call()
            msg = one_line(info.value, *secrets())
            assert silent.endpoint in msg and ("did not answer within 0.5s" in msg or "broke" in msg)
        retrying = RetryingBackend(inner, attempts=2, base_delay=0.001)
        with pytest.raises(TransientStoreError) as info:
            retrying.stat("config.json")
        assert "did not answer within 0.5s" in one_line(info.value) and "gave up after 2 attempts" in str(
            info.value
        )
    finally:
        silent.close()


def test_connection_refused_is_transient_and_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = S3Backend(fresh_url(), endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=1)
    with pytest.raises(TransientStoreError) as info:
        backend.stat("config.json")
    assert f"cannot connect to http://127.0.0.1:{port}" in one_line(info.value, *secrets())


def test_connection_cut_mid_upload_leaves_nothing_visible(moto_endpoint: str, tmp_path: Path) -> None:
    """The connection to the server dies in the middle of a multipart upload (a loopback proxy
    in front of moto resets every connection, as a killed server would, while moto keeps its
    state so we can look): one line, no object, and the orphaned upload can be aborted."""
    url = fresh_url()
    proxy = CuttingProxy(moto_endpoint, cut_after=8 * MiB)
    through = S3Backend(
        url, endpoint_url=proxy.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB, connections=2
    )
    local = tmp_path / "pack"
    data = os.urandom(16 * MiB)
    local.write_bytes(data)
    with pytest.raises(TransientStoreError) as info:
        RetryingBackend(through, attempts=2, base_delay=0.001).save_file(
            "packs/cut/big", local, create_only=True
        )
    one_line(info.value, *secrets())
    assert proxy.cut_done.is_set() and local.exists()

    direct = S3Backend(url, endpoint_url=moto_endpoint)
    with pytest.raises(ObjectNotFound):
        direct.stat("packs/cut/big")
    assert direct.list("packs") == []
    assert direct.abort_stale_uploads() >= 1  # the abort could not reach the dead server
    prefix = parse_s3_url(url)[1] + "/"
    assert (
        raw_client(moto_endpoint).list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        == []
    )
    direct.save_file("packs/cut/big", local, create_only=True)  # the store is fine afterwards
    assert direct.load("packs/cut/big") == data


def test_server_killed_mid_upload(tmp_path: Path, aws_env: None) -> None:
    """rclone's S3 server (state on disk) is SIGKILLed while a pack is being uploaded, then
    restarted on the same data: the upload failed with one line, and no partial object exists."""
    server = RcloneServer(tmp_path / "rclone", extra=("--bwlimit", "2M"))
    endpoint = server.start()
    try:
        url = f"s3://{RCLONE_BUCKET}/killed"
        backend = S3Backend(url, endpoint_url=endpoint)
        local = tmp_path / "pack"
        local.write_bytes(os.urandom(12 * MiB))  # about 6 s at 2 MiB/s: killed long before the end
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                backend.save_file("packs/kk/pack", local, create_only=True)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=upload)
        t.start()
        bucket_dir = tmp_path / "rclone" / RCLONE_BUCKET
        deadline = time.monotonic() + 30
        while not any(bucket_dir.rglob(".rclone_temp_*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.is_alive(), "the upload ended before the server could be killed"
        server.kill()
        t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], TransientStoreError)
        one_line(errors[0], *secrets())

        server.extra = ()  # no bandwidth limit from here on
        again = S3Backend(url, endpoint_url=server.start())
        with pytest.raises(ObjectNotFound):
            again.stat("packs/kk/pack")
        assert again.list("packs") == []
        again.save_file("packs/kk/pack", local)
        assert again.stat("packs/kk/pack") == 12 * MiB
    finally:
        server.stop()


# --- credentials -------------------------------------------------------------------------------


def test_wrong_secret_key_is_permanent_one_line_and_echoes_nothing(
    rclone_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-Zq9")
    backend = RetryingBackend(S3Backend(f"s3://{RCLONE_BUCKET}/creds", endpoint_url=rclone_endpoint))
    with pytest.raises(PermanentStoreError) as info:
        backend.load("config.json")
    msg = one_line(info.value, "wrong-secret-Zq9", *secrets())
    assert "secret key does not match" in msg and "HTTP 403" in msg and RCLONE_BUCKET in msg
    with pytest.raises(PermanentStoreError) as info:
        backend.stat("config.json")  # a HEAD answer has no body to say why
    assert "access denied (HTTP 403)" in one_line(info.value, "wrong-secret-Zq9", *secrets())
    assert backend.retries == 0


def test_rejected_credentials_and_policy_on_moto(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks signatures and IAM policies once switched on: an unknown key, a wrong
    secret and a user without S3 permissions are each one line, never retried, nothing echoed."""
    import boto3

    iam = boto3.client("iam", endpoint_url=moto_endpoint)
    user = f"nobody-{os.urandom(3).hex()}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    url = fresh_url()
    cases = [
        ("AKIAUNKNOWNKEY000000", "whatever-secret-1", "access key is not known"),
        (key["AccessKeyId"], "wrong-secret-2", "secret key does not match"),
        (key["AccessKeyId"], key["SecretAccessKey"], "access denied"),
    ]
    with moto_iam_checks(moto_endpoint):
        for access, secret, why in cases:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            backend = RetryingBackend(S3Backend(url, endpoint_url=moto_endpoint))
            with pytest.raises(PermanentStoreError) as info:
                backend.load("config.json")
            msg = one_line(info.value, secret, access, key["SecretAccessKey"])
            assert why in msg and "HTTP 403" in msg
            assert backend.retries == 0


def test_no_credentials_at_all(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = S3Backend(fresh_url(), endpoint_url=moto_endpoint)
    with pytest.raises(PermanentStoreError) as info:
        backend.stat("config.json")
    assert "no usable AWS credentials" in one_line(info.value)


def test_unknown_profile_is_a_usage_error(moto_endpoint: str) -> None:
    with pytest.raises(UsageError, match="profile 'nope'"):
        S3Backend(fresh_url(), endpoint_url=moto_endpoint, profile="nope")


# --- classification of what moto and rclone here cannot produce --------------------------------


def test_error_classification_of_server_answers(moto_endpoint: str) -> None:
    """Throttling, 5xx, region and conflict answers cannot be had from moto on demand: their
    classification is checked on botocore's own exception objects (the one seam), each with a
    server message carrying a secret that must not come through."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    backend = S3Backend(fresh_url(), endpoint_url=moto_endpoint)

    def answer(status: int, code: str) -> ClientError:
        body = {
            "Error": {"Code": code, "Message": f"leaked {SECRET_KEY}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return ClientError(body, "PutObject")  # type: ignore[arg-type]

    table: list[tuple[BaseException, type[StoreError], str]] = [
        (answer(503, "SlowDown"), TransientStoreError, "SlowDown (HTTP 503)"),
        (answer(500, "InternalError"), TransientStoreError, "HTTP 500"),
        (answer(502, "BadGateway"), TransientStoreError, "HTTP 502"),
        (answer(429, "TooManyRequests"), TransientStoreError, "HTTP 429"),
        (answer(400, "RequestTimeout"), TransientStoreError, "RequestTimeout"),
        (answer(409, "ConditionalRequestConflict"), TransientStoreError, "HTTP 409"),
        (answer(403, "AccessDenied"), PermanentStoreError, "access denied"),
        (answer(403, "ExpiredToken"), PermanentStoreError, "session token has expired"),
        (answer(301, "PermanentRedirect"), PermanentStoreError, "another region"),
        (answer(400, "AuthorizationHeaderMalformed"), PermanentStoreError, "another region"),
        (answer(404, "NoSuchBucket"), PermanentStoreError, "does not exist"),
        (answer(400, "InvalidArgument"), PermanentStoreError, "InvalidArgument (HTTP 400)"),
        (answer(400, "Bad\nCode<script>"), PermanentStoreError, "BadCodescript"),
        (ReadTimeoutError(endpoint_url=f"http://u:{SECRET_KEY}@h/x"), TransientStoreError, "did not answer"),
        (
            ConnectionClosedError(endpoint_url=f"http://h/x?X-Amz-Signature={SECRET_KEY}"),
            TransientStoreError,
            "broke",
        ),
        (EndpointConnectionError(endpoint_url="http://h/x"), TransientStoreError, "cannot connect"),
    ]
    for exc, kind, text in table:
        err = backend._error(exc, "write", "packs/aa/x")
        assert type(err) is kind or isinstance(err, kind), (exc, err)
        assert text in one_line(err, *secrets()), err
    assert isinstance(
        backend._error(answer(412, "PreconditionFailed"), "write", "x", create_only=True), ObjectExists
    )
    assert isinstance(
        backend._error(answer(412, "PreconditionFailed"), "write", "x", if_match='"t"'), PreconditionFailed
    )
    assert isinstance(
        backend._error(answer(404, "NoSuchKey"), "write", "x", if_match='"t"'), PreconditionFailed
    )


# --- a server that ignores conditions still serves the rest ------------------------------------


def test_reads_and_ranges_on_rclone(rclone_endpoint: str) -> None:
    """rclone's server breaks botocore's response checksums on ranges unless they are off."""
    backend = S3Backend(f"s3://{RCLONE_BUCKET}/reads-{os.urandom(3).hex()}", endpoint_url=rclone_endpoint)
    data = os.urandom(70_000)
    backend.save("packs/aa/x", data)
    assert backend.load("packs/aa/x", 1000, 5000) == data[1000:6000]
    assert backend.load("packs/aa/x", len(data)) == b""
    assert [(o.name, o.size) for o in backend.list("packs")] == [("packs/aa/x", len(data))]
    with pytest.raises(ObjectNotFound):
        backend.load("packs/aa/missing")
    backend.remove("packs/aa/x")
    backend.remove("packs/aa/x")
    assert backend.list("packs") == []


def test_an_invalid_endpoint_is_a_usage_error_that_repeats_no_user_info() -> None:
    with pytest.raises(UsageError) as info:
        S3Backend(fresh_url(), endpoint_url=f"ftp//{ACCESS_KEY}:{SECRET_KEY}@host")
    one_line(info.value, *secrets())


def test_a_hostile_bucket_cannot_smuggle_names_into_a_listing(moto_endpoint: str) -> None:
    """Keys others wrote into the bucket that are not safe store names are left out of listings."""
    url = fresh_url()
    backend = S3Backend(url, endpoint_url=moto_endpoint)
    prefix = parse_s3_url(url)[1]
    raw = raw_client(moto_endpoint)
    for key in (
        "packs/../../etc/x",
        "packs//double",
        "packs/./dot",
        "packs/.hidden",
        "packs/aa/",
        "packs/aa/ok",
    ):
        raw.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=b"x")
    raw.put_object(Bucket=BUCKET, Key=f"{prefix}-sibling/packs/aa/other", Body=b"x")
    assert [o.name for o in backend.list("packs")] == ["packs/aa/ok"]
