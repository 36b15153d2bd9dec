"""A store in S3-compatible object storage (AWS S3, R2, Ceph RGW, MinIO, B2), through boto3's botocore.

`s3://bucket/prefix` names the store; credentials and region come from the standard AWS
chain (environment, shared config and profiles, instance roles), the endpoint from
`endpoint_url` or `AWS_ENDPOINT_URL(_S3)`. botocore is imported when an S3Backend is made,
never by importing this module, so commands on a local store do not pay for it.

Each call is one attempt: botocore's own retries are off and `RetryingBackend` retries
`TransientStoreError`, so the retry policy lives in one place and a lost response of a
conditional write is resolved there (see retry.py). Errors are classified into the
contract's classes with messages written here, from the error code and HTTP status alone:
a server's message text, the request and credentials are never echoed.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .backend import ObjectInfo, StorageBackend, check_name, check_range, too_big
from .errors import (
    ObjectExists,
    ObjectNotFound,
    PermanentStoreError,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
    UsageError,
)

MiB = 1 << 20
DEFAULT_CONNECTIONS = 8  # a laptop uplink is saturated well before 8 parallel uploads
DEFAULT_MULTIPART_THRESHOLD = 32 * MiB  # above a 16 MiB pack: packs go up in one PUT
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Error codes by what a caller can do about them. Anything 5xx not named is transient too.
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",  # 400: the server gave up waiting for our bytes
    "RequestTimeTooSkewed",
    "ConditionalRequestConflict",  # 409: a concurrent conditional write is in flight
    "OperationAborted",
}
_ACCESS_CODES = {
    "AccessDenied": "access denied",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is invalid",
    "TokenRefreshRequired": "the session token must be refreshed",
    "AccountProblem": "the account has a problem",
    "InvalidSecurity": "the credentials were rejected",
}
_REGION_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "InvalidRegion",
}


class _NoBucket(PermanentStoreError):
    """The bucket itself is missing (exists() answers False; create() makes it)."""


class _PastTheEnd(StoreError):
    """HTTP 416: the range starts at or past the end of the object."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; refuses anything that could carry a secret."""
    if not url.startswith("s3://"):
        raise UsageError("an S3 store is given as s3://bucket/prefix")
    rest = url[len("s3://") :]
    if "@" in rest.split("/", 1)[0] or "?" in rest or "#" in rest:
        # never repeat the URL: it may hold a key someone pasted into it
        raise UsageError(
            "an S3 store URL holds no credentials, query or fragment: "
            "give s3://bucket/prefix and put credentials in the AWS environment or profile"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(f"{bucket[:80]!r} is not a valid S3 bucket name")
    prefix = prefix.strip("/")
    if prefix:
        check_name(prefix)
    return bucket, prefix


_sessions: dict[tuple[str | None, str], Any] = {}
_sessions_lock = threading.Lock()


def _session(profile: str | None) -> Any:
    """A botocore Session shared by the backends of one process (a new one loads the S3 model
    again, ~0.6 s), keyed by the profile and a hash of the AWS environment, so that changed
    credentials get a session of their own. boto3's own Session only wraps this one, and
    importing it (with s3transfer) cost `list` about 0.2 s of start-up for nothing used."""
    import hashlib

    import botocore.exceptions
    import botocore.session

    env = "\0".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("AWS_"))
    key = (profile, hashlib.sha256(env.encode()).hexdigest())
    with _sessions_lock:
        if key not in _sessions:
            try:
                session = botocore.session.Session(profile=profile)
                session.get_scoped_config()  # a missing profile is refused here
                _sessions[key] = session
            except botocore.exceptions.ProfileNotFound:
                raise UsageError(f"AWS profile {profile!r} is not in the shared config") from None
        return _sessions[key]


def _printable_endpoint(endpoint: str | None) -> str | None:
    """scheme://host[:port] of an endpoint URL: no user info, path or query."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _safe_code(code: object) -> str:
    """An error code from a server, cut down to what a code can be (it is hostile input)."""
    return re.sub(r"[^A-Za-z0-9._-]", "", str(code))[:64] or "unknown"


class S3Backend(StorageBackend):
    """A store under `prefix` in an S3 bucket. Thread-safe: one botocore client, shared."""

    is_local = False

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if connections < 1:
            raise UsageError("connections must be at least 1")
        if part_size < MIN_PART_SIZE or multipart_threshold < part_size:
            raise UsageError("part size must be at least 5 MiB and the multipart threshold at least that")
        self.connections = connections
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.read_timeout = read_timeout
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.endpoint = _printable_endpoint(endpoint)

        import botocore.config
        import botocore.exceptions

        self._exc = botocore.exceptions
        session = _session(profile)
        if region is None and session.get_config_variable("region") is None and endpoint:
            region = "us-east-1"  # S3-compatible servers mostly ignore it, but signing needs one
        config = botocore.config.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # one attempt per call: RetryingBackend is the one retry layer (module docstring)
            retries={"total_max_attempts": 1, "mode": "standard"},
            # parts of one object and objects in parallel, plus headroom for a lease refresh
            max_pool_connections=connections + 2,
            tcp_keepalive=True,
            # rclone's server (and others) break botocore's response checksum check on ranges;
            # every byte read is checked against its content hash above this layer anyway
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint else {},
        )
        try:
            with _sessions_lock:  # a botocore Session is not thread-safe; its clients are
                self._client: Any = session.create_client(
                    "s3", endpoint_url=endpoint, region_name=region, config=config
                )
        except ValueError:  # botocore's "Invalid endpoint: <url>" would repeat the URL whole
            raise UsageError("invalid S3 endpoint URL: give http(s)://host[:port]") from None
        self._parts: ThreadPoolExecutor | None = None
        self._parts_lock = threading.Lock()
        self._bucket_ok = False
        self._seen_config = False

    # --- names and errors -----------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self, name: str | None) -> str:
        return f"{self.location}/{name}" if name else self.location

    def _error(
        self,
        exc: BaseException,
        op: str,
        name: str | None,
        *,
        create_only: bool = False,
        if_match: str | None = None,
    ) -> StoreError:
        """The contract's error for a botocore exception: one line, no secrets."""
        where = self._where(name)
        E = self._exc
        if isinstance(exc, E.ClientError):
            err = exc.response.get("Error", {}) or {}
            meta = exc.response.get("ResponseMetadata", {}) or {}
            status = int(meta.get("HTTPStatusCode") or 0)
            code = _safe_code(err.get("Code") or status)
            answer = f"HTTP {status}" if code.isdigit() else f"{code} (HTTP {status})"  # HEAD: no body
            if status == 412 or code == "PreconditionFailed":
                if create_only:
                    return ObjectExists(f"{where} already exists")
                return PreconditionFailed(f"{where} changed since it was read (compare-and-swap lost)")
            if code == "NoSuchBucket":
                return _NoBucket(f"bucket {self.bucket} does not exist ({op} {where})")
            if code in ("NoSuchKey", "NotFound") or status == 404:
                if if_match is not None:
                    return PreconditionFailed(
                        f"{where} was deleted since it was read (compare-and-swap lost)"
                    )
                return ObjectNotFound(f"{where} is missing")
            if code == "InvalidRange" or status == 416:
                return _PastTheEnd(f"{where} is truncated (the range starts past its end)")
            if code in _ACCESS_CODES or status == 403:
                why = _ACCESS_CODES.get(
                    code, "access denied" if code.isdigit() else f"access denied ({code})"
                )
                return PermanentStoreError(
                    f"cannot {op} {where}: {why} (HTTP {status}); check the credentials and the bucket policy"
                )
            if code in _REGION_CODES or status == 301:
                return PermanentStoreError(
                    f"cannot {op} {where}: the bucket {self.bucket} is in another region ({code}); "
                    "set AWS_REGION or the profile's region"
                )
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStoreError(f"cannot {op} {where}: the server answered {answer}")
            return PermanentStoreError(f"cannot {op} {where}: the server answered {answer}")
        if isinstance(exc, E.NoCredentialsError | E.PartialCredentialsError):
            return PermanentStoreError(
                f"no usable AWS credentials for {self.location}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role"
            )
        if isinstance(exc, E.NoRegionError):
            return PermanentStoreError(f"no AWS region for {self.location}: set AWS_REGION")
        if isinstance(exc, E.SSLError):
            return PermanentStoreError(f"cannot {op} {where}: TLS failed talking to {self._server()}")
        if isinstance(exc, E.ConnectTimeoutError):
            return TransientStoreError(f"cannot {op} {where}: timed out connecting to {self._server()}")
        if isinstance(exc, E.ReadTimeoutError):
            return TransientStoreError(
                f"cannot {op} {where}: {self._server()} did not answer within {self.read_timeout:g}s"
            )
        if isinstance(exc, E.EndpointConnectionError):
            return TransientStoreError(f"cannot {op} {where}: cannot connect to {self._server()}")
        if isinstance(
            exc,
            E.ConnectionError
            | E.HTTPClientError
            | E.ResponseStreamingError
            | E.IncompleteReadError
            | ConnectionError
            | TimeoutError,
        ):
            return TransientStoreError(f"cannot {op} {where}: the connection to {self._server()} broke")
        if isinstance(exc, E.BotoCoreError):
            return StoreError(f"cannot {op} {where}: {type(exc).__name__}")
        return StoreError(f"cannot {op} {where}: {type(exc).__name__}")

    def _server(self) -> str:
        return self.endpoint or "S3"

    def _call(self, op: str, name: str | None, fn: Any, /, **kwargs: Any) -> Any:
        """One request; botocore exceptions become the contract's errors (chain cut: a
        traceback shown with --debug holds no request)."""
        try:
            return fn(**kwargs)
        except (self._exc.BotoCoreError, self._exc.ClientError, OSError) as exc:
            err = self._error(
                exc,
                op,
                name,
                create_only=kwargs.get("IfNoneMatch") == "*",
                if_match=kwargs.get("IfMatch"),
            )
        if isinstance(err, ObjectNotFound) and not self._bucket_ok:
            self._check_bucket(op)  # HEAD has no body: a 404 may mean the bucket is gone
        raise err

    def _check_bucket(self, op: str) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (self._exc.BotoCoreError, self._exc.ClientError, OSError) as exc:
            err = self._error(exc, op, None)
            if isinstance(err, ObjectNotFound):
                err = _NoBucket(f"bucket {self.bucket} does not exist ({op} {self.location})")
            raise err from None
        self._bucket_ok = True

    # --- the contract ---------------------------------------------------------------

    def exists(self) -> bool:
        """One HEAD of config.json; once seen, not asked again by this backend (a command
        asks several times, and a store is not uncreated under a running command)."""
        if self._seen_config:
            return True
        try:
            self._call(
                "read",
                "config.json",
                self._client.head_object,
                Bucket=self.bucket,
                Key=self._key("config.json"),
            )
        except (ObjectNotFound, _NoBucket):
            return False
        self._seen_config = True
        return True

    def create(self) -> None:
        """Create the bucket if it is missing (restic does the same); prefixes need nothing."""
        try:
            self._check_bucket("create")
            return
        except _NoBucket:
            pass
        region = self._client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except self._exc.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error(exc, "create", None) from None
        except (self._exc.BotoCoreError, OSError) as exc:
            raise self._error(exc, "create", None) from None
        self._bucket_ok = True

    def save(self, name: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        key = self._key(name)
        cond = self._conditions(create_only, if_match)
        # A compare-and-swap is always one PUT: mutable objects are small, and moto (at least)
        # ignores If-Match on CompleteMultipartUpload.
        if len(data) > self.multipart_threshold and if_match is None:
            return self._multipart(name, key, len(data), lambda off, n: data[off : off + n], cond)
        resp = self._call(
            "write", name, self._client.put_object, Bucket=self.bucket, Key=key, Body=data, **cond
        )
        return str(resp["ETag"])

    def save_file(self, name: str, local: Path, *, create_only: bool = False) -> str:
        key = self._key(name)
        cond = self._conditions(create_only, None)
        with open(local, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > self.multipart_threshold:
                fd = fh.fileno()
                tag = self._multipart(name, key, size, lambda off, n: os.pread(fd, n, off), cond)
            else:
                body = fh.read()
                resp = self._call(
                    "write", name, self._client.put_object, Bucket=self.bucket, Key=key, Body=body, **cond
                )
                tag = str(resp["ETag"])
        local.unlink()
        return tag

    @staticmethod
    def _conditions(create_only: bool, if_match: str | None) -> dict[str, str]:
        if create_only and if_match is not None:
            raise ValueError("save takes create_only or if_match, not both")
        if create_only:
            return {"IfNoneMatch": "*"}
        if if_match is not None:
            return {"IfMatch": if_match}
        return {}

    def _part_pool(self) -> ThreadPoolExecutor:
        with self._parts_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(self.connections, thread_name_prefix="chromasnap-s3-part")
            return self._parts

    def _multipart(self, name: str, key: str, size: int, read: Any, cond: dict[str, str]) -> str:
        """Upload in parts, in parallel; the object appears only when the upload completes
        (with the conditional header), and a failed upload is aborted."""
        part = max(self.part_size, -(-size // MAX_PARTS))
        # as boto3's own upload_file does: the upload declares CRC32, each part carries its
        # checksum (botocore computes it), and the completion lists them
        up = self._call(
            "write",
            name,
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="CRC32",
        )
        upload_id = up["UploadId"]
        try:

            def send(number: int) -> dict[str, Any]:
                off = (number - 1) * part
                body = read(off, min(part, size - off))
                resp = self._call(
                    "write",
                    name,
                    self._client.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="CRC32",
                )
                done = {"ETag": resp["ETag"], "PartNumber": number}
                if "ChecksumCRC32" in resp:
                    done["ChecksumCRC32"] = resp["ChecksumCRC32"]
                return done

            count = -(-size // part)
            futures = [self._part_pool().submit(send, n) for n in range(1, count + 1)]
            try:
                parts = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                wait(futures)  # no part may land after the abort below
                raise
            resp = self._call(
                "write",
                name,
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **cond,
            )
            return str(resp["ETag"])
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the server may be the problem
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(name, offset, length)
        key = self._key(name)
        if length == 0:
            if offset > self.stat(name):
                raise StoreError(f"{self._where(name)} is truncated (wanted 0 bytes at {offset})")
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            data, _tag = self._get(name, kwargs)
        except _PastTheEnd:
            if length is None and offset == self.stat(name):
                return b""  # S3 answers 416 to a range that starts at the end
            raise StoreError(
                f"{self._where(name)} is truncated (wanted {length} bytes at {offset})"
            ) from None
        if length is not None and len(data) != length:
            raise StoreError(f"{self._where(name)} is truncated (wanted {length} bytes at {offset})")
        return data

    def load_bounded(self, name: str, limit: int) -> bytes:
        """One GET of at most `limit` + 1 bytes (the contract's default stats first: two
        requests per document, which a `list` of a remote store pays per snapshot)."""
        return self.load_tagged(name, limit)[0]

    def load_tagged(self, name: str, limit: int) -> tuple[bytes, str | None]:
        kwargs = {"Bucket": self.bucket, "Key": self._key(name), "Range": f"bytes=0-{limit}"}
        try:
            data, tag = self._get(name, kwargs)
        except _PastTheEnd:
            return b"", None  # an empty object: S3 answers 416 to any range of it
        if len(data) > limit:
            raise too_big(name, self.location, self.stat(name), limit)
        return data, tag or None

    def load_versioned(self, name: str) -> tuple[bytes, str]:
        return self._get(name, {"Bucket": self.bucket, "Key": self._key(name)})

    def _get(self, name: str, kwargs: dict[str, Any]) -> tuple[bytes, str]:
        resp = self._call("read", name, self._client.get_object, **kwargs)
        try:
            data: bytes = resp["Body"].read()
        except (self._exc.BotoCoreError, OSError) as exc:
            raise self._error(exc, "read", name) from None
        finally:
            resp["Body"].close()
        if len(data) != int(resp.get("ContentLength", len(data))):
            raise TransientStoreError(f"cannot read {self._where(name)}: the response was cut short")
        return data, str(resp.get("ETag", ""))

    def stat(self, name: str) -> int:
        resp = self._call("stat", name, self._client.head_object, Bucket=self.bucket, Key=self._key(name))
        return int(resp["ContentLength"])

    def list(self, prefix: str) -> list[ObjectInfo]:
        folder = self._key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": folder}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix, self._client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                name = str(item.get("Key", ""))[strip:]
                try:
                    check_name(name)  # a hostile bucket may hold "packs/../x" or "packs//x"
                except StoreError:
                    continue
                if name.rsplit("/", 1)[-1].startswith("."):
                    continue  # like the local store: dot-names are never the store's objects
                tag = item.get("ETag")
                out.append(ObjectInfo(name, int(item.get("Size", 0)), str(tag) if tag else None))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                break
        out.sort(key=lambda o: o.name)
        return out

    def remove(self, name: str) -> None:
        if name == "config.json":
            self._seen_config = False
        self._call("remove", name, self._client.delete_object, Bucket=self.bucket, Key=self._key(name))

    def abort_stale_uploads(self) -> int:
        """Abort unfinished multipart uploads under the prefix (left by a killed upload: they
        are invisible but hold space); returns how many. Only while holding the store lock."""
        folder = f"{self.prefix}/" if self.prefix else ""
        resp = self._call(
            "list", None, self._client.list_multipart_uploads, Bucket=self.bucket, Prefix=folder
        )
        n = 0
        for up in resp.get("Uploads", []):
            with contextlib.suppress(ObjectNotFound):
                self._call(
                    "remove",
                    None,
                    self._client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=up["Key"],
                    UploadId=up["UploadId"],
                )
                n += 1
        return n

    def close(self) -> None:
        with self._parts_lock:
            if self._parts is not None:
                self._parts.shutdown(wait=True)
                self._parts = None
        with contextlib.suppress(Exception):
            self._client.close()
