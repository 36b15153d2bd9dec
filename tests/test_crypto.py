"""Encryption building blocks (issue 17): codecs, key files, password sources.

Key files are written through `DirStorage`, a small adapter over a real directory with the
create-only, crash-safe `save` of the storage contract (issue 15); the repository will hand
keys.py its backend instead. Crashes are real SIGKILLs of child processes, at the seam
between passwd's two writes (CHROMASNAP_CRASH_AT) and at random instants.
"""

from __future__ import annotations

import inspect
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zstandard
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chromasnap.snapshots import crypto, fsutil, keys
from chromasnap.snapshots.crypto import AuthenticationError, PlainCodec, SealedCodec
from chromasnap.snapshots.errors import StoreError, UsageError
from chromasnap.snapshots.password import read_password

STORE_ID = "5e" * 32
FAST = keys.FAST_KDF


# --- a local KeyStorage ---------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    name: str
    size: int


class DirStorage:
    """The storage contract's save/load/list/remove over a directory: temp + fsync, then link
    (create-only) or rename into place, then fsync the folder. Dot names are temporaries."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        from chromasnap.snapshots.backend import check_name

        return self.root / check_name(name)

    def save(self, name: str, data: bytes, *, create_only: bool = False) -> str:
        path = self._path(name)
        fsutil.make_private_dirs(path.parent)
        tmp = fsutil.temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if create_only:
                os.link(tmp, path)  # FileExistsError when the name exists
                os.unlink(tmp)
            else:
                os.rename(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        fsutil.fsync_dir(path.parent)
        return str(path.stat().st_ino)

    def load(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def list(self, prefix: str) -> list[Obj]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [
            Obj(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        ]

    def remove(self, name: str) -> None:
        path = self._path(name)
        path.unlink(missing_ok=True)
        fsutil.fsync_dir(path.parent)


def test_dir_storage_is_create_only(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    st.save("keys/a.json", b"1", create_only=True)
    with pytest.raises(FileExistsError):
        st.save("keys/a.json", b"2", create_only=True)
    assert st.load("keys/a.json") == b"1"
    assert [o.name for o in st.list("keys")] == ["keys/a.json"]


# --- codecs ---------------------------------------------------------------------------------


def test_plain_codec_is_the_unencrypted_format() -> None:
    c = PlainCodec()
    assert c.seal("index/x.json", b"abc") == b"abc"
    assert c.open("index/x.json", b"abc") == b"abc"
    assert c.blob_key(b"abc") == blake3(b"abc").hexdigest()
    assert (c.encrypted, c.overhead) == (False, 0)


@pytest.mark.parametrize("cipher", [crypto.AES_256_GCM, crypto.CHACHA20_POLY1305])
def test_sealed_round_trip(cipher: int) -> None:
    codec = SealedCodec(crypto.new_master_key(), cipher)
    for size in (0, 1, 16 * 1024, 256 * 1024 + 3, 1 << 20):
        body = os.urandom(size)
        sealed = codec.seal("packs/ab/abcd", body)
        assert len(sealed) == size + crypto.OVERHEAD == size + 30
        assert sealed[:2] == bytes((1, cipher))
        assert codec.open("packs/ab/abcd", sealed) == body
    # fresh random nonce each time: the same object sealed twice never repeats
    assert codec.seal("n", b"same") != codec.seal("n", b"same")


def test_a_store_reads_both_ciphers_with_separate_keys() -> None:
    master = crypto.new_master_key()
    aes, chacha = SealedCodec(master, crypto.AES_256_GCM), SealedCodec(master, crypto.CHACHA20_POLY1305)
    assert aes.open("a", chacha.seal("a", b"x")) == b"x"
    assert chacha.open("a", aes.seal("a", b"y")) == b"y"
    # the cipher byte is authenticated: relabelling an AES object as ChaCha fails
    sealed = bytearray(aes.seal("a", b"z"))
    sealed[1] = crypto.CHACHA20_POLY1305
    with pytest.raises(AuthenticationError):
        aes.open("a", bytes(sealed))


def test_every_flipped_byte_fails_authentication_with_the_name() -> None:
    codec = SealedCodec(crypto.new_master_key())
    sealed = codec.seal("snapshots/abc.json", b'{"reason": "nightly"}')
    for i in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[i] ^= 0x40
        with pytest.raises(AuthenticationError) as err:
            codec.open("snapshots/abc.json", bytes(damaged))
        assert err.value.name == "snapshots/abc.json"
        assert str(err.value).startswith("damaged object snapshots/abc.json: ")
        assert isinstance(err.value, StoreError) and err.value.exit_code == 1
        assert "\n" not in str(err.value)


def test_truncated_object_fails_authentication() -> None:
    codec = SealedCodec(crypto.new_master_key())
    sealed = codec.seal("catalog.json", b"x" * 100)
    for cut in (1, 16, len(sealed) - crypto.OVERHEAD + 1, len(sealed)):
        with pytest.raises(AuthenticationError, match=r"^damaged object catalog\.json: "):
            codec.open("catalog.json", sealed[:-cut])
    with pytest.raises(AuthenticationError, match="truncated"):
        codec.open("catalog.json", sealed[:10])


def test_swapped_objects_fail_authentication() -> None:
    """Objects are bound to their names: a bucket writer cannot swap two of them, nor serve
    one snapshot document for another, nor another store's object under the same name."""
    codec = SealedCodec(crypto.new_master_key())
    a = codec.seal("snapshots/aaaa.json", b"document a")
    b = codec.seal("snapshots/bbbb.json", b"document b")
    with pytest.raises(AuthenticationError, match=r"snapshots/aaaa\.json"):
        codec.open("snapshots/aaaa.json", b)
    with pytest.raises(AuthenticationError, match=r"snapshots/bbbb\.json"):
        codec.open("snapshots/bbbb.json", a)
    k1, k2 = "1" * 64, "2" * 64  # blobs inside packs are bound to their blob keys
    with pytest.raises(AuthenticationError):
        codec.open(k1, codec.seal(k2, b"blob"))
    other = SealedCodec(crypto.new_master_key())
    with pytest.raises(AuthenticationError, match="another store"):
        other.open("snapshots/aaaa.json", a)


def test_unknown_version_and_cipher_are_refused() -> None:
    codec = SealedCodec(crypto.new_master_key())
    sealed = bytearray(codec.seal("x", b"body"))
    sealed[0] = 2
    with pytest.raises(AuthenticationError, match="version 2"):
        codec.open("x", bytes(sealed))
    sealed[0], sealed[1] = 1, 9
    with pytest.raises(AuthenticationError, match="cipher id 9"):
        codec.open("x", bytes(sealed))
    with pytest.raises(ValueError):
        SealedCodec(b"short")


def test_blob_keys_are_keyed_per_store() -> None:
    m1, m2 = crypto.new_master_key(), crypto.new_master_key()
    chunk = os.urandom(4096)
    k1 = SealedCodec(m1).blob_key(chunk)
    assert k1 == SealedCodec(m1).blob_key(chunk)  # deterministic: deduplication still works
    assert len(k1) == 64 and all(c in "0123456789abcdef" for c in k1)
    assert k1 != SealedCodec(m2).blob_key(chunk)  # another store, another name
    assert k1 != PlainCodec().blob_key(chunk)  # not the public BLAKE3: cannot be confirmed
    assert SealedCodec(m1).blob_key(chunk + b"x") != k1


def test_known_plaintext_never_appears_in_sealed_output() -> None:
    """A document string, a metadata value and an embedding's float32 bytes, compressed then
    sealed as a blob would be (and sealed uncompressed, as a document would be)."""
    doc = b"The quick brown fox says the secret launch code is 0451."
    meta = b'"customer_email": "alice@example.org"'
    emb = np.random.default_rng(3).standard_normal(384, dtype=np.float32).tobytes()
    plain = (doc + meta) * 50 + emb
    codec = SealedCodec(crypto.new_master_key())
    key = codec.blob_key(plain)
    outputs = [
        codec.seal(key, zstandard.ZstdCompressor(level=1).compress(plain)),
        codec.seal("snapshots/x.json", plain),
    ]
    for out in outputs:
        for needle in (doc, meta, emb, emb[:16], emb[-16:], doc[:12]):
            assert needle not in out
    assert key != blake3(plain).hexdigest()


def test_sealed_object_decrypts_by_the_documented_layout_alone() -> None:
    """docs/encryption.md, followed with `cryptography` and `blake3` only."""
    master = crypto.new_master_key()
    sealed = SealedCodec(master).seal("index/0123.json", b'{"version": 1}')
    version, cipher, nonce, rest = sealed[0], sealed[1], sealed[2:14], sealed[14:]
    assert (version, cipher) == (1, 1)
    enc_key = blake3(master, derive_key_context="chromasnap 2026-11-29 object key aes-256-gcm v1").digest()
    assert AESGCM(enc_key).decrypt(nonce, rest, sealed[:2] + b"index/0123.json") == b'{"version": 1}'
    id_key = blake3(master, derive_key_context="chromasnap 2026-11-29 blob id key v1").digest()
    assert SealedCodec(master).blob_key(b"abc") == blake3(b"abc", key=id_key).hexdigest()


# --- key files ------------------------------------------------------------------------------


def test_create_and_open(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    master, kf = keys.create_master_key(st, STORE_ID, "correct horse", kdf=FAST)
    assert len(master) == 32
    doc = json.loads((tmp_path / kf.name).read_text())
    assert list(doc) == ["version", "id", "created_at", "kdf", "cipher", "nonce", "wrapped_key"]
    assert doc["version"] == 1 and doc["id"] == kf.id and kf.name == f"keys/{kf.id}.json"
    assert doc["kdf"]["name"] == "argon2id" and len(bytes.fromhex(doc["kdf"]["salt"])) == 16
    assert doc["cipher"] == "aes-256-gcm" and len(bytes.fromhex(doc["wrapped_key"])) == 48
    assert master.hex() not in (tmp_path / kf.name).read_text()
    got, used = keys.open_master_key(st, STORE_ID, "correct horse")
    assert (got, used.id) == (master, kf.id)
    with pytest.raises(UsageError, match="already has key files"):
        keys.create_master_key(st, STORE_ID, "again", kdf=FAST)


def test_key_file_unwraps_by_the_documented_layout_alone(tmp_path: Path) -> None:
    from argon2.low_level import Type, hash_secret_raw

    st = DirStorage(tmp_path)
    master, kf = keys.create_master_key(st, STORE_ID, "pw", kdf=keys.Argon2id(2, 2048, 2))
    doc = json.loads((tmp_path / kf.name).read_text())
    k = doc["kdf"]
    wrapping = hash_secret_raw(
        b"pw", bytes.fromhex(k["salt"]), k["time_cost"], k["memory_cost"], k["parallelism"], 32, Type.ID, 19
    )
    ad = b"chromasnap key v1\x00" + STORE_ID.encode() + b"\x00" + doc["id"].encode()
    assert (
        AESGCM(wrapping).decrypt(bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["wrapped_key"]), ad) == master
    )


def test_wrong_password_is_one_usage_line(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    keys.create_master_key(st, STORE_ID, "right", kdf=FAST)
    keys.add_key(st, STORE_ID, keys.open_master_key(st, STORE_ID, "right")[0], "also right", kdf=FAST)
    with pytest.raises(keys.WrongPassword) as err:
        keys.open_master_key(st, STORE_ID, "wrong guess")
    assert str(err.value) == f"wrong password for store {STORE_ID[:12]}"
    assert err.value.exit_code == 2


def test_key_file_is_bound_to_its_store_and_id(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    keys.create_master_key(st, STORE_ID, "pw", kdf=FAST)
    with pytest.raises(keys.WrongPassword):  # copied next to another store's config
        keys.open_master_key(st, "77" * 32, "pw")
    (name,) = [o.name for o in st.list("keys")]
    doc = json.loads(st.load(name))
    doc["id"] = "0123456789abcdef"  # renamed to another id
    st.remove(name)
    st.save("keys/0123456789abcdef.json", json.dumps(doc).encode(), create_only=True)
    with pytest.raises(keys.WrongPassword):
        keys.open_master_key(st, STORE_ID, "pw")


def test_truncated_or_damaged_key_files(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    master, first = keys.create_master_key(st, STORE_ID, "one", kdf=FAST)
    data = st.load(first.name)
    path = tmp_path / first.name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(keys.NoUsableKey) as err:
        keys.open_master_key(st, STORE_ID, "one")
    assert f"key file {first.name} is damaged" in str(err.value) and err.value.exit_code == 1
    # a second, good key still opens the store; the damaged one is reported by list_keys
    path.write_bytes(data)
    second = keys.add_key(st, STORE_ID, master, "two", kdf=FAST)
    path.write_bytes(data[:-40])
    assert keys.open_master_key(st, STORE_ID, "two") == (master, second)
    found, problems = keys.list_keys(st)
    assert [k.id for k in found] == [second.id] and len(problems) == 1 and first.name in problems[0]
    with pytest.raises(keys.WrongPassword, match=r"1 damaged key file"):
        keys.open_master_key(st, STORE_ID, "one")


@pytest.mark.parametrize(
    "change",
    [
        {"kdf": {"memory_cost": 64 * 1024 * 1024}},  # 64 GiB: refused before any KDF runs
        {"kdf": {"time_cost": True}},
        {"kdf": {"name": "pbkdf2"}},
        {"cipher": "rot13"},
        {"nonce": "00"},
        {"wrapped_key": "zz" * 48},
        {"version": "1"},
        {"id": "../../etc"},
        {"created_at": "2026-11-29\x1b[2J"},
    ],
)
def test_hostile_key_files_are_damaged_not_obeyed(tmp_path: Path, change: dict[str, object]) -> None:
    st = DirStorage(tmp_path)
    _, kf = keys.create_master_key(st, STORE_ID, "pw", kdf=FAST)
    doc = json.loads(st.load(kf.name))
    for k, v in change.items():
        if isinstance(v, dict):
            doc[k].update(v)
        else:
            doc[k] = v
    (tmp_path / kf.name).write_text(json.dumps(doc))
    with pytest.raises(keys.NoUsableKey, match="is damaged"):
        keys.open_master_key(st, STORE_ID, "pw")


def test_deep_or_huge_or_newer_key_files(tmp_path: Path) -> None:
    name = "keys/0123456789abcdef.json"
    for data in (b"[" * 100_000, b"{}" + b" " * 70_000, b"\xff\xfe", b"null"):
        with pytest.raises(StoreError, match="is damaged"):
            keys.KeyFile.parse(data, name)
    with pytest.raises(StoreError, match="newer chromasnap"):
        keys.KeyFile.parse(b'{"version": 2}', name)


def test_no_key_files_says_so(tmp_path: Path) -> None:
    with pytest.raises(
        keys.NoUsableKey, match=r"has no key files \(keys/ is empty or gone\): it cannot be opened"
    ):
        keys.open_master_key(DirStorage(tmp_path), STORE_ID, "pw")


def test_add_then_remove_the_first_key(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    master, first = keys.create_master_key(st, STORE_ID, "first", kdf=FAST)
    second = keys.add_key(st, STORE_ID, master, "second", kdf=FAST)
    assert {k.id for k in keys.list_keys(st)[0]} == {first.id, second.id}
    assert keys.open_master_key(st, STORE_ID, "first")[0] == master
    # the key a session opened with stays: remove the first key with the second's password
    with pytest.raises(UsageError, match="the store was opened with it"):
        keys.remove_key(st, STORE_ID, first.id, opened_with=first.id)
    _, used = keys.open_master_key(st, STORE_ID, "second")
    keys.remove_key(st, STORE_ID, first.id, opened_with=used.id)
    assert keys.open_master_key(st, STORE_ID, "second") == (master, second)
    with pytest.raises(keys.WrongPassword):
        keys.open_master_key(st, STORE_ID, "first")
    with pytest.raises(UsageError, match="refusing to remove the last key"):
        keys.remove_key(st, STORE_ID, second.id, opened_with="ffffffffffffffff")
    with pytest.raises(UsageError, match="has no key 0000"):
        keys.remove_key(st, STORE_ID, "0000000000000000", opened_with=second.id)
    assert keys.open_master_key(st, STORE_ID, "second")[0] == master
    with pytest.raises(UsageError, match="empty password"):
        keys.add_key(st, STORE_ID, master, "", kdf=FAST)


def test_passwd_rewraps_and_touches_nothing_else(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    master, old = keys.create_master_key(st, STORE_ID, "old pw", kdf=FAST)
    st.save("packs/ab/abcdef", b"sealed pack bytes", create_only=True)
    before = (tmp_path / "packs/ab/abcdef").stat()
    new = keys.change_password(st, STORE_ID, master, old.id, "new pw", kdf=FAST)
    assert new.id != old.id
    assert [o.name for o in st.list("keys")] == [new.name]
    assert [o.name for o in st.list("packs")] == ["packs/ab/abcdef"]
    after = (tmp_path / "packs/ab/abcdef").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert keys.open_master_key(st, STORE_ID, "new pw") == (master, new)
    with pytest.raises(keys.WrongPassword):
        keys.open_master_key(st, STORE_ID, "old pw")


def test_kdf_settings() -> None:
    assert keys.kdf_from_env({}) == keys.DEFAULT_KDF == keys.Argon2id(4, 128 * 1024, 4)
    assert keys.kdf_from_env({"CHROMASNAP_KDF": "fast"}) == FAST
    assert keys.parse_kdf_spec("argon2id:t=2,m=65536,p=2") == keys.Argon2id(2, 65536, 2)
    assert keys.parse_kdf_spec("scrypt:n=1024,r=8,p=1") == keys.Scrypt(1024, 8, 1)
    for bad in ("argon2id:t=0", "scrypt:n=1000", "pbkdf2", "argon2id:x=1", "argon2id:t=two"):
        with pytest.raises(UsageError, match="bad KDF setting"):
            keys.parse_kdf_spec(bad)


def test_scrypt_key_files(tmp_path: Path) -> None:
    st = DirStorage(tmp_path)
    master, kf = keys.create_master_key(st, STORE_ID, "pw", kdf=keys.Scrypt(1024, 8, 1))
    assert json.loads(st.load(kf.name))["kdf"] == {
        "name": "scrypt",
        "n": 1024,
        "r": 8,
        "p": 1,
        "salt": kf.salt.hex(),
    }
    assert keys.open_master_key(st, STORE_ID, "pw")[0] == master


# --- crash safety of passwd and add ---------------------------------------------------------

# The child defines DirStorage from this module's source (importing the module would import
# pytest and numpy: seconds per child on a loaded machine).
CHILD = textwrap.dedent(
    """
    from __future__ import annotations
    import os
    from dataclasses import dataclass
    from pathlib import Path
    from chromasnap.snapshots import fsutil, keys
    STORE_ID = {store_id!r}
    {storage}
    st = DirStorage(Path({root!r}))
    master, used = keys.open_master_key(st, STORE_ID, {old!r})
    print("ready", flush=True)
    if {op!r} == "passwd":
        keys.change_password(st, STORE_ID, master, used.id, {new!r}, kdf=keys.FAST_KDF)
    else:
        keys.add_key(st, STORE_ID, master, {new!r}, kdf=keys.FAST_KDF)
    """
)


def _child(root: Path, op: str, old: str, new: str, env: dict[str, str]) -> subprocess.Popen[str]:
    storage = "\n".join(textwrap.dedent(inspect.getsource(c)) for c in (Obj, DirStorage))
    code = CHILD.format(store_id=STORE_ID, storage=storage, root=str(root), old=old, new=new, op=op)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def _opens_with(st: DirStorage, master: bytes, *passwords: str) -> list[str]:
    ok = []
    for pw in passwords:
        try:
            got, _ = keys.open_master_key(st, STORE_ID, pw)
        except keys.WrongPassword:
            continue
        assert got == master
        ok.append(pw)
    return ok


def test_passwd_killed_between_its_two_writes_leaves_both_keys(tmp_path: Path) -> None:
    """SIGKILL at the seam after the new key file is durable, before the old one is removed
    (CHROMASNAP_CRASH_AT=keys.passwd.written): both passwords open the store."""
    st = DirStorage(tmp_path)
    master, _ = keys.create_master_key(st, STORE_ID, "old", kdf=FAST)
    proc = _child(tmp_path, "passwd", "old", "new", {"CHROMASNAP_CRASH_AT": "keys.passwd.written"})
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _opens_with(st, master, "old", "new") == ["old", "new"]
    # the user runs passwd again with the new password: the leftover old key can be removed
    found, _ = keys.list_keys(st)
    assert len(found) == 2


@pytest.mark.parametrize("op", ["passwd", "add"])
def test_passwd_and_add_killed_at_random_instants(tmp_path: Path, op: str) -> None:
    """SIGKILL at random instants of `key passwd` / `key add` (fast KDF, so the instants fall
    in the writes): afterwards the store opens with the old or the new password, never neither,
    and no half-written key file is ever read."""
    rng = random.Random(17)
    st = DirStorage(tmp_path)
    master, _ = keys.create_master_key(st, STORE_ID, "pw0", kdf=FAST)
    current = "pw0"
    outcomes = set()
    for i in range(1, 7):
        new = f"pw{i}"
        proc = _child(tmp_path, op, current, new, {})
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        ok = _opens_with(st, master, current, new)
        assert ok, f"instant {i}: neither {current!r} nor {new!r} opens the store"
        outcomes.add(tuple(ok) if op == "passwd" else len(ok))
        assert not keys.list_keys(st)[1]  # no damaged (half-written) key file
        current = new if new in ok else current
    assert outcomes  # which of old/new/both survived depends on the instant


# --- password sources -----------------------------------------------------------------------


def test_password_from_environment_and_files(tmp_path: Path) -> None:
    assert read_password(environ={"CHROMASNAP_PASSWORD": "from env"}) == "from env"
    f = tmp_path / "pw"
    f.write_bytes("sécret pw\r\nsecond line\n".encode())
    assert read_password(environ={"CHROMASNAP_PASSWORD_FILE": str(f)}) == "sécret pw"
    # the order: --password-file, CHROMASNAP_PASSWORD_FILE, _COMMAND, CHROMASNAP_PASSWORD
    g = tmp_path / "other"
    g.write_text("from arg\n")
    env = {
        "CHROMASNAP_PASSWORD": "env",
        "CHROMASNAP_PASSWORD_FILE": str(f),
        "CHROMASNAP_PASSWORD_COMMAND": "echo cmd",
    }
    assert read_password(password_file=g, environ=env) == "from arg"
    assert read_password(environ=env) == "sécret pw"
    assert read_password(environ={**env, "CHROMASNAP_PASSWORD_FILE": ""}) == "cmd"
    assert read_password(environ={"CHROMASNAP_NEW_PASSWORD": "n"}, prefix="CHROMASNAP_NEW") == "n"
    # bytes that are not UTF-8 are the password as given, from a file as from the environment
    latin = tmp_path / "latin1"
    latin.write_bytes("pässwörd\n".encode("latin-1"))
    from_file = read_password(password_file=latin, environ={})
    assert keys.password_bytes(from_file) == "pässwörd".encode("latin-1")
    assert from_file == os.fsdecode("pässwörd".encode("latin-1"))  # what os.environ would hold
    with pytest.raises(UsageError, match=r"cannot read the password file .*missing"):
        read_password(password_file=tmp_path / "missing", environ={})
    (tmp_path / "empty").write_text("\nsecond\n")
    with pytest.raises(UsageError, match="holds no password"):
        read_password(password_file=tmp_path / "empty", environ={})


def test_password_command(tmp_path: Path) -> None:
    env = {"CHROMASNAP_PASSWORD_COMMAND": "printf 'from command\\nignored\\n'"}
    assert read_password(environ=env) == "from command"
    script = tmp_path / "leaky"
    script.write_text("#!/bin/sh\necho hunter2-on-stdout\necho hunter2-on-stderr >&2\nexit 3\n")
    script.chmod(0o700)
    with pytest.raises(UsageError) as err:
        read_password(environ={"CHROMASNAP_PASSWORD_COMMAND": str(script)})
    assert (
        str(err.value)
        == "CHROMASNAP_PASSWORD_COMMAND (program 'leaky') failed with exit code 3; output not shown"
    )
    with pytest.raises(UsageError, match="program 'no-such-program-17'"):
        read_password(environ={"CHROMASNAP_PASSWORD_COMMAND": "no-such-program-17 --get"})
    with pytest.raises(UsageError, match=r"holds no password"):
        read_password(environ={"CHROMASNAP_PASSWORD_COMMAND": "true"})


def test_password_command_timeout_ends_its_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    cmd = f"sh -c 'sleep 30 & echo $! > {marker}; wait'"
    with pytest.raises(UsageError, match=r"did not finish within 3 s"):
        read_password(environ={"CHROMASNAP_PASSWORD_COMMAND": cmd}, timeout=3)
    grandchild = int(marker.read_text())
    for _ in range(200):  # SIGKILLed with its group (not waited for): gone, or a zombie until reaped
        try:
            if Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the password command's child outlived the timeout")


def test_no_password_and_no_terminal_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_PASSWORD")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from chromasnap.snapshots.password import read_password\n"
            "from chromasnap.snapshots.errors import UsageError\n"
            "try:\n    read_password()\nexcept UsageError as e:\n    print(e.exit_code, e)\n",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.stdout == (
        "2 no password: set CHROMASNAP_PASSWORD, CHROMASNAP_PASSWORD_FILE or "
        "CHROMASNAP_PASSWORD_COMMAND, or give --password-file (there is no terminal to ask on)\n"
    )


def _pty_expect(fd: int, want: bytes, seen: bytearray, deadline: float) -> None:
    while want not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {want!r} from the terminal; got {bytes(seen)!r}")
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {want!r}; got {bytes(seen)!r}")
            seen += chunk


def test_prompt_on_a_real_terminal_does_not_echo() -> None:
    """A child on a pseudo-terminal (its controlling tty) is asked twice (a new password)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_PASSWORD")}
    code = (
        "from chromasnap.snapshots.password import read_password\n"
        "pw = read_password(confirm=True)\n"
        "print('match' if pw == 'tty secret 17' else 'mismatch', flush=True)\n"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    seen = bytearray()
    deadline = time.monotonic() + 60
    try:
        _pty_expect(fd, b"Password: ", seen, deadline)
        os.write(fd, b"tty secret 17\n")
        _pty_expect(fd, b"Again: ", seen, deadline)
        os.write(fd, b"tty secret 17\n")
        _pty_expect(fd, b"match", seen, deadline)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"mismatch" not in seen and b"tty secret" not in seen  # never echoed
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_repository_names_the_key_folder_as_keys_does() -> None:
    """repository.py spells `keys` itself so that opening a plain store imports no keys.py."""
    from chromasnap.snapshots import keys, repository

    assert repository.KEYS_FOLDER == keys.KEYS_FOLDER
