"""Codecs: how the repository turns an object's bytes into what a backend stores, and names blobs.

`PlainCodec` stores bytes as they are and names a blob by the BLAKE3 of its content (the
format of an unencrypted store). `SealedCodec` seals every object with an AEAD cipher under a
key derived from the store's master key, binds the object's name as associated data (so an
object moved to another name fails authentication), and names a blob by a BLAKE3 keyed hash
(so a bucket reader cannot confirm that a known document or vector is stored). Blobs are
compressed before they are sealed. Byte layouts: docs/encryption.md.
"""

from __future__ import annotations

import hmac
import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Final

from blake3 import blake3

from .errors import StoreError

KEYS_FOLDER: Final = "keys"
"""Where an encrypted store's key files are (keys.py): named here, so that telling a plain
store from an encrypted one needs neither argon2 nor cryptography (imported by keys.py)."""

MASTER_KEY_SIZE: Final = 32
NONCE_SIZE: Final = 12  # random 96-bit nonces: see docs/encryption.md for the collision bound
TAG_SIZE: Final = 16
SEALED_VERSION: Final = 1
HEADER_SIZE: Final = 2  # [version][cipher id]
OVERHEAD: Final = HEADER_SIZE + NONCE_SIZE + TAG_SIZE  # 30 bytes added to every sealed object

# Cipher ids of the sealed-object header. AES-256-GCM is what new stores write (measured faster
# than ChaCha20-Poly1305 here: bench/crypto_bench.py); both are read.
AES_256_GCM: Final = 1
CHACHA20_POLY1305: Final = 2
CIPHER_NAMES: Final = {AES_256_GCM: "aes-256-gcm", CHACHA20_POLY1305: "chacha20-poly1305"}
DEFAULT_CIPHER: Final = AES_256_GCM

# BLAKE3 derive_key contexts: fixed forever (changing one changes every key of every store).
# Each cipher has its own key, so no key is ever used with two algorithms.
BLOB_ID_CONTEXT: Final = "chromasnap 2026-11-29 blob id key v1"
OBJECT_KEY_CONTEXTS: Final = {
    AES_256_GCM: "chromasnap 2026-11-29 object key aes-256-gcm v1",
    CHACHA20_POLY1305: "chromasnap 2026-11-29 object key chacha20-poly1305 v1",
}

if TYPE_CHECKING:  # `cryptography` is imported when a store is sealed: a plain store's `list` skips it
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    _Aead = AESGCM | ChaCha20Poly1305


class AuthenticationError(StoreError):
    """A sealed object did not authenticate: damaged, truncated, tampered with, stored under
    another name, or sealed with another store's key. `name` is the object's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"damaged object {name}: {reason}")
        self.name = name
        self.reason = reason


def derive_subkey(master_key: bytes, context: str) -> bytes:
    """A 32-byte key for one purpose: BLAKE3 in derive_key mode over the master key."""
    return blake3(master_key, derive_key_context=context).digest()


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_SIZE)


def aead(cipher: int, key: bytes) -> _Aead:
    """The `cryptography` AEAD object for a cipher id of the sealed-object header."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    if cipher == AES_256_GCM:
        return AESGCM(key)
    if cipher == CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher id {cipher}")


class Codec(ABC):
    """What the repository applies to every object body it writes and reads, and how it
    names blobs. Backends see only the output of `seal`."""

    #: True when objects are sealed (a store with key files).
    encrypted: bool
    #: Bytes `seal` adds to an object.
    overhead: int

    @abstractmethod
    def seal(self, name: str, plaintext: bytes) -> bytes:
        """The bytes to store under `name` (for a blob inside a pack: its blob key)."""

    @abstractmethod
    def open(self, name: str, data: bytes) -> bytes:
        """The plaintext of what `seal(name, ...)` returned; AuthenticationError otherwise."""

    @abstractmethod
    def blob_key(self, plaintext: bytes) -> str:
        """The blob's name: 64 lowercase hex digits, the same for the same content."""

    @abstractmethod
    def same_keys(self, other: Codec) -> bool:
        """True when `other` names and seals exactly as this codec does (both plain, or both
        sealed under one master key): objects can then move between the stores unchanged."""


class PlainCodec(Codec):
    """An unencrypted store: objects as they are, blob keys the BLAKE3 of the content."""

    encrypted = False
    overhead = 0

    def seal(self, name: str, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, name: str, data: bytes) -> bytes:
        return data

    def blob_key(self, plaintext: bytes) -> str:
        return blake3(plaintext).hexdigest()

    def same_keys(self, other: Codec) -> bool:
        return not other.encrypted


class SealedCodec(Codec):
    """An encrypted store: AEAD with the object's name as associated data, keyed blob names.

    Safe to share between threads (the AEAD objects keep no per-call state)."""

    encrypted = True
    overhead = OVERHEAD

    def __init__(self, master_key: bytes, cipher: int = DEFAULT_CIPHER) -> None:
        if len(master_key) != MASTER_KEY_SIZE:
            raise ValueError(f"a master key is {MASTER_KEY_SIZE} bytes, not {len(master_key)}")
        if cipher not in CIPHER_NAMES:
            raise ValueError(f"unknown cipher id {cipher}")
        self.cipher = cipher
        self._blob_id_key = derive_subkey(master_key, BLOB_ID_CONTEXT)
        # Every cipher can be read; `cipher` is the one written.
        self._aeads = {c: aead(c, derive_subkey(master_key, ctx)) for c, ctx in OBJECT_KEY_CONTEXTS.items()}

    def seal(self, name: str, plaintext: bytes) -> bytes:
        header = bytes((SEALED_VERSION, self.cipher))
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aeads[self.cipher].encrypt(nonce, plaintext, header + name.encode())
        return header + nonce + sealed

    def open(self, name: str, data: bytes) -> bytes:
        if len(data) < OVERHEAD:
            raise AuthenticationError(name, f"truncated ({len(data)} bytes, a sealed object has {OVERHEAD}+)")
        version, cipher = data[0], data[1]
        if version != SEALED_VERSION:
            raise AuthenticationError(
                name, f"unknown sealed-object version {version} (damaged, or written by a newer chromasnap)"
            )
        box = self._aeads.get(cipher)
        if box is None:
            raise AuthenticationError(name, f"unknown cipher id {cipher}")
        from cryptography.exceptions import InvalidTag

        view = memoryview(data)  # slices of a view do not copy the body
        try:
            return box.decrypt(
                view[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE],
                view[HEADER_SIZE + NONCE_SIZE :],
                data[:HEADER_SIZE] + name.encode(),
            )
        except InvalidTag:
            raise AuthenticationError(
                name,
                "authentication failed (changed, truncated, moved from another name, or another store's)",
            ) from None

    def blob_key(self, plaintext: bytes) -> str:
        return blake3(plaintext, key=self._blob_id_key).hexdigest()

    def same_keys(self, other: Codec) -> bool:
        # every working key is derived from the master key: one equal derived key means one master
        return isinstance(other, SealedCodec) and hmac.compare_digest(self._blob_id_key, other._blob_id_key)
