"""Key files: the store's master key wrapped under keys derived from passwords.

An encrypted store has one random master key (crypto.SealedCodec derives every working key
from it) and one or more key files `keys/<id>.json`, each holding the master key sealed with
an AEAD cipher under a key derived from one password by a memory-hard KDF (Argon2id; scrypt
is read and can be chosen). Any key file opens the store; adding, removing or changing a
password touches key files only, never a pack.

Key files are immutable: each is written once with `create_only`, through a `KeyStorage` (the
store's backend, or any object with the same four methods). Changing a password writes the new
key file before removing the old one, so a crash leaves the old or the new password usable,
never neither. Callers hold the store lock around add, remove and passwd (two concurrent
removals could otherwise leave no key). Layout: docs/encryption.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Protocol

from argon2.low_level import ARGON2_VERSION, Type, hash_secret_raw
from cryptography.exceptions import InvalidTag

from . import crypto
from .errors import StoreError, UsageError
from .fsutil import crash_point

KEY_FILE_VERSION: Final = 1
KEYS_FOLDER: Final = crypto.KEYS_FOLDER
MAX_KEY_FILE: Final = 64 * 1024
SALT_SIZE: Final = 16
KEY_ID_RE: Final = re.compile(r"[0-9a-f]{16}")
_HEX_RE: Final = re.compile(r"(?:[0-9a-f]{2})*")
_NAME_RE: Final = re.compile(r"keys/([0-9a-f]{16})\.json")
# created_at is printed by `key list`: ASCII digits only, no control characters
_TIME_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# Bounds on KDF parameters read from a key file (hostile input): at most 2 GiB and 64 passes.
MAX_KDF_MEMORY: Final = 2 * 1024**3
KDF_ENV: Final = "CHROMASNAP_KDF"


class WrongPassword(UsageError):
    """No key file of the store opens with the password given (exit 2)."""


class NoUsableKey(StoreError):
    """The store has no key file left that can be read (exit 1)."""


# --- KDFs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Argon2id:
    """Argon2id (RFC 9106, version 0x13) through argon2-cffi; memory_cost in KiB.

    The default takes about 0.5-0.9 s and 128 MiB on this project's 2-core machine."""

    time_cost: int = 4
    memory_cost: int = 128 * 1024
    parallelism: int = 4
    name: ClassVar[str] = "argon2id"

    def check(self) -> None:
        if not 1 <= self.parallelism <= 64:
            raise ValueError(f"argon2id parallelism {self.parallelism} is outside 1..64")
        if not 1 <= self.time_cost <= 64:
            raise ValueError(f"argon2id time_cost {self.time_cost} is outside 1..64")
        if not 8 * self.parallelism <= self.memory_cost <= MAX_KDF_MEMORY // 1024:
            raise ValueError(f"argon2id memory_cost {self.memory_cost} KiB is outside 8*p..2 GiB")

    def derive(self, password: bytes, salt: bytes) -> bytes:
        return hash_secret_raw(
            password, salt, self.time_cost, self.memory_cost, self.parallelism, 32, Type.ID, ARGON2_VERSION
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": ARGON2_VERSION,
            "time_cost": self.time_cost,
            "memory_cost": self.memory_cost,
            "parallelism": self.parallelism,
        }


@dataclass(frozen=True)
class Scrypt:
    """scrypt (RFC 7914) through hashlib; n a power of two. Uses 128*n*r bytes of memory."""

    n: int = 2**17
    r: int = 8
    p: int = 1
    name: ClassVar[str] = "scrypt"

    def check(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n {self.n} is not a power of two >= 2")
        if not 1 <= self.r <= 64 or not 1 <= self.p <= 64:
            raise ValueError(f"scrypt r {self.r} or p {self.p} is outside 1..64")
        if 128 * self.n * self.r > MAX_KDF_MEMORY:
            raise ValueError("scrypt parameters need more than 2 GiB of memory")

    def derive(self, password: bytes, salt: bytes) -> bytes:
        maxmem = 128 * self.r * (self.n + self.p + 2) + (1 << 20)
        return hashlib.scrypt(password, salt=salt, n=self.n, r=self.r, p=self.p, maxmem=maxmem, dklen=32)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "r": self.r, "p": self.p}


Kdf = Argon2id | Scrypt
DEFAULT_KDF: Final[Kdf] = Argon2id()
# For tests only: about a millisecond, and no protection worth the name.
FAST_KDF: Final[Kdf] = Argon2id(time_cost=1, memory_cost=1024, parallelism=1)


def parse_kdf_spec(spec: str) -> Kdf:
    """`fast`, `argon2id:t=4,m=131072,p=4` (m in KiB) or `scrypt:n=131072,r=8,p=1`."""
    spec = spec.strip()
    if spec == "fast":
        return FAST_KDF
    name, _, rest = spec.partition(":")
    try:
        fields = {k.strip(): int(v) for k, v in (f.split("=", 1) for f in rest.split(",") if f.strip())}
        kdf: Kdf
        if name == "argon2id":
            base = Argon2id()
            kdf = Argon2id(
                fields.pop("t", base.time_cost),
                fields.pop("m", base.memory_cost),
                fields.pop("p", base.parallelism),
            )
        elif name == "scrypt":
            base_s = Scrypt()
            kdf = Scrypt(fields.pop("n", base_s.n), fields.pop("r", base_s.r), fields.pop("p", base_s.p))
        else:
            raise ValueError(f"unknown KDF {name!r} (argon2id or scrypt)")
        if fields:
            raise ValueError(f"unknown parameter {sorted(fields)[0]!r}")
        kdf.check()
    except ValueError as exc:
        raise UsageError(f"bad KDF setting {spec!r}: {exc}") from None
    return kdf


def kdf_from_env(environ: Mapping[str, str] | None = None) -> Kdf:
    """The KDF for new key files: CHROMASNAP_KDF if set (see parse_kdf_spec), else DEFAULT_KDF."""
    spec = (os.environ if environ is None else environ).get(KDF_ENV, "")
    return parse_kdf_spec(spec) if spec.strip() else DEFAULT_KDF


def _kdf_from_json(doc: object) -> Kdf:
    if not isinstance(doc, dict):
        raise ValueError("kdf is not an object")

    def num(key: str) -> int:
        v = doc.get(key)
        if type(v) is not int:
            raise ValueError(f"kdf {key} is not an integer")
        return v

    kdf: Kdf
    if doc.get("name") == "argon2id":
        if num("version") != ARGON2_VERSION:
            raise ValueError(f"unsupported argon2 version {doc.get('version')}")
        kdf = Argon2id(num("time_cost"), num("memory_cost"), num("parallelism"))
    elif doc.get("name") == "scrypt":
        kdf = Scrypt(num("n"), num("r"), num("p"))
    else:
        raise ValueError(f"unknown kdf {str(doc.get('name'))[:40]!r}")
    kdf.check()
    return kdf


# --- key files -----------------------------------------------------------------------------


def key_file_name(key_id: str) -> str:
    return f"{KEYS_FOLDER}/{key_id}.json"


def wrap_associated_data(store_id: str, key_id: str) -> bytes:
    """What the wrapped master key is bound to: a key file opens only its own store, under its own id."""
    return b"chromasnap key v1\x00" + store_id.encode() + b"\x00" + key_id.encode()


@dataclass(frozen=True)
class KeyFile:
    """One parsed `keys/<id>.json`."""

    id: str
    created_at: str
    kdf: Kdf
    salt: bytes
    cipher: int
    nonce: bytes
    wrapped_key: bytes
    version: int = KEY_FILE_VERSION

    @property
    def name(self) -> str:
        return key_file_name(self.id)

    def to_json(self) -> bytes:
        doc = {
            "version": self.version,
            "id": self.id,
            "created_at": self.created_at,
            "kdf": {**self.kdf.to_json(), "salt": self.salt.hex()},
            "cipher": crypto.CIPHER_NAMES[self.cipher],
            "nonce": self.nonce.hex(),
            "wrapped_key": self.wrapped_key.hex(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, name: str) -> KeyFile:
        """A key file read from the store (hostile input); StoreError naming `name` if damaged."""
        try:
            if len(data) > MAX_KEY_FILE:
                raise ValueError(f"{len(data)} bytes, more than a key file ever holds")
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            version = doc.get("version")
            if type(version) is not int:
                raise ValueError("no version")
            if version > KEY_FILE_VERSION:
                raise StoreError(
                    f"key file {name} is version {version}: written by a newer chromasnap, upgrade it"
                )
            if version != KEY_FILE_VERSION:
                raise ValueError(f"unknown version {version}")
            key_id = doc.get("id")
            if (
                not isinstance(key_id, str)
                or name != key_file_name(key_id)
                or not KEY_ID_RE.fullmatch(key_id)
            ):
                raise ValueError("its id does not match its name")
            created = doc.get("created_at")
            if not isinstance(created, str) or not _TIME_RE.fullmatch(created):
                raise ValueError("bad created_at")
            kdf_doc = doc.get("kdf")
            kdf = _kdf_from_json(kdf_doc)
            assert isinstance(kdf_doc, dict)
            salt = _hex(kdf_doc.get("salt"), "salt", 16, 64)
            ciphers = {v: k for k, v in crypto.CIPHER_NAMES.items()}
            cipher_name = doc.get("cipher")
            cipher = ciphers.get(cipher_name) if isinstance(cipher_name, str) else None
            if cipher is None:
                raise ValueError("unknown cipher")
            nonce = _hex(doc.get("nonce"), "nonce", crypto.NONCE_SIZE, crypto.NONCE_SIZE)
            size = crypto.MASTER_KEY_SIZE + crypto.TAG_SIZE
            wrapped = _hex(doc.get("wrapped_key"), "wrapped_key", size, size)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise StoreError(f"key file {name} is damaged ({str(exc)[:120]})") from None
        return cls(key_id, created, kdf, salt, cipher, nonce, wrapped, version)

    def unwrap(self, store_id: str, password: str) -> bytes | None:
        """The master key, or None when the password is not this key's (after the KDF)."""
        wrapping = self.kdf.derive(password_bytes(password), self.salt)
        try:
            key = crypto.aead(self.cipher, wrapping).decrypt(
                self.nonce, self.wrapped_key, wrap_associated_data(store_id, self.id)
            )
        except InvalidTag:
            return None
        return key if len(key) == crypto.MASTER_KEY_SIZE else None


def password_bytes(password: str) -> bytes:
    """What the KDF hashes: the password's UTF-8 bytes; bytes that were not UTF-8 where the
    password came from (an environment variable, a file) arrive as surrogate escapes and go
    back to the bytes given."""
    return password.encode("utf-8", "surrogateescape")


def _hex(value: object, what: str, lo: int, hi: int) -> bytes:
    if not isinstance(value, str) or not _HEX_RE.fullmatch(value) or not lo <= len(value) // 2 <= hi:
        raise ValueError(f"bad {what}")
    return bytes.fromhex(value)


def make_key_file(
    store_id: str, master_key: bytes, password: str, kdf: Kdf, cipher: int = crypto.DEFAULT_CIPHER
) -> KeyFile:
    """A new key file (fresh id, salt and nonce) wrapping `master_key` under `password`."""
    if not password:
        raise UsageError("an empty password is not allowed")
    if len(master_key) != crypto.MASTER_KEY_SIZE:
        raise ValueError("bad master key length")
    kdf.check()
    key_id = os.urandom(8).hex()
    salt = os.urandom(SALT_SIZE)
    nonce = os.urandom(crypto.NONCE_SIZE)
    wrapping = kdf.derive(password_bytes(password), salt)
    wrapped = crypto.aead(cipher, wrapping).encrypt(nonce, master_key, wrap_associated_data(store_id, key_id))
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return KeyFile(key_id, created, kdf, salt, cipher, nonce, wrapped)


# --- the store's key files -----------------------------------------------------------------


class NamedObject(Protocol):
    @property
    def name(self) -> str: ...


class KeyStorage(Protocol):
    """Where key files live: the store's backend (issue 15's contract) fits as it is.

    `save(create_only=True)` must be atomic and durable when it returns and must refuse an
    existing name; `list` gives the objects under a folder, recursively."""

    def save(self, name: str, data: bytes, *, create_only: bool = False) -> object: ...

    def load(self, name: str) -> bytes: ...

    def list(self, prefix: str) -> Sequence[NamedObject]: ...

    def remove(self, name: str) -> None: ...


def list_keys(storage: KeyStorage) -> tuple[list[KeyFile], list[str]]:
    """The store's readable key files (oldest first), and one message per damaged one."""
    keys: list[KeyFile] = []
    problems: list[str] = []
    for obj in storage.list(KEYS_FOLDER):
        if not _NAME_RE.fullmatch(obj.name):
            continue  # temporaries (".name.tmp-…") and anything else are not key files
        try:
            keys.append(KeyFile.parse(storage.load(obj.name), obj.name))
        except StoreError as exc:
            problems.append(str(exc))
    keys.sort(key=lambda k: (k.created_at, k.id))
    return keys, problems


def create_master_key(
    storage: KeyStorage,
    store_id: str,
    password: str,
    *,
    kdf: Kdf | None = None,
    master_key: bytes | None = None,
) -> tuple[bytes, KeyFile]:
    """A new random master key (or `master_key`: another store's, for `copy --same-key`) and
    the store's first key file (for `init`)."""
    keys, problems = list_keys(storage)
    if keys or problems:
        raise UsageError(f"store {store_id[:12]} already has key files")
    master = master_key if master_key is not None else crypto.new_master_key()
    if len(master) != crypto.MASTER_KEY_SIZE:
        raise ValueError(f"a master key is {crypto.MASTER_KEY_SIZE} bytes, not {len(master)}")
    return master, add_key(storage, store_id, master, password, kdf=kdf)


def open_master_key(storage: KeyStorage, store_id: str, password: str) -> tuple[bytes, KeyFile]:
    """The master key and the key file that opened it; WrongPassword after trying every key
    file (one KDF run each), NoUsableKey when no key file is left to try."""
    keys, problems = list_keys(storage)
    if not keys:
        if problems:
            raise NoUsableKey(f"store {store_id[:12]} has no usable key file: {problems[0]}")
        raise NoUsableKey(
            f"store {store_id[:12]} has no key files (keys/ is empty or gone): it cannot be opened"
        )
    for key in keys:
        master = key.unwrap(store_id, password)
        if master is not None:
            return master, key
    extra = f" ({len(problems)} damaged key file(s) skipped: {problems[0]})" if problems else ""
    raise WrongPassword(f"wrong password for store {store_id[:12]}{extra}")


def add_key(
    storage: KeyStorage, store_id: str, master_key: bytes, password: str, *, kdf: Kdf | None = None
) -> KeyFile:
    """Write a new key file for `password` (create-only); the caller opened the store already."""
    key = make_key_file(store_id, master_key, password, kdf or kdf_from_env())
    data = key.to_json()
    storage.save(key.name, data, create_only=True)
    if storage.load(key.name) != data:
        raise StoreError(f"key file {key.name} did not read back as written")
    return key


def remove_key(storage: KeyStorage, store_id: str, key_id: str, *, opened_with: str) -> None:
    """Remove one key file. Refused for the key this session opened the store with
    (`opened_with`, as restic does): that one is known to work and stays, so a bogus key file
    planted by a bucket writer can never be the only one left. Refused for the last one too."""
    keys, _ = list_keys(storage)
    if not any(k.id == key_id for k in keys):
        raise UsageError(f"store {store_id[:12]} has no key {key_id}")
    if key_id == opened_with:
        raise UsageError(
            f"refusing to remove key {key_id}: the store was opened with it "
            "(give another key's password to remove it, or use passwd to change it)"
        )
    if len(keys) == 1:
        raise UsageError(
            f"refusing to remove the last key of store {store_id[:12]}: nothing could open it again"
        )
    storage.remove(key_file_name(key_id))


def change_password(
    storage: KeyStorage,
    store_id: str,
    master_key: bytes,
    key_id: str,
    new_password: str,
    *,
    kdf: Kdf | None = None,
) -> KeyFile:
    """Replace key `key_id` by a new key file (new id) for `new_password`. The new file is
    durable and read back before the old one is removed: a crash between the two leaves both."""
    keys, _ = list_keys(storage)
    if not any(k.id == key_id for k in keys):
        raise UsageError(f"store {store_id[:12]} has no key {key_id}")
    new = add_key(storage, store_id, master_key, new_password, kdf=kdf)
    crash_point("keys.passwd.written")  # test seam: SIGKILL between the two writes
    storage.remove(key_file_name(key_id))
    return new
