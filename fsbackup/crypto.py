"""Keys and authenticated encryption.

A repository has one random 64-byte master secret, stored only wrapped (AES-256-GCM) under a key
derived from a passphrase with Argon2id (keys/<key id> objects, see docs/format.md). From the
master secret we derive, with BLAKE3's key-derivation mode:

- `id_key`: keys the BLAKE3 hash that names blocks, so block ids reveal nothing without it;
- `object_root`: from which every remote object gets its own AES-256-GCM key, derived from the
  object's random name and purpose. Because each key belongs to one object that is written once,
  a nonce need only be unique within that object (docs/format.md says how each kind picks them);
- `chunker_seed`: seeds FastCDC's gear table so cut points do not leak content (fingerprinting).
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from .errors import CorruptObject, WrongPassphrase

MASTER_SECRET_LEN = 64
TAG_LEN = 16
NONCE_LEN = 12
ZERO_NONCE = bytes(NONCE_LEN)

# Argon2id cost for new keys. 64 MiB and 3 passes take about 0.2 s here; the parameters are
# stored with each key object, so they can be raised later without breaking old keys.
DEFAULT_KDF = {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode())


MAX_KDF_MEMORY_KIB = 4 << 20     # a damaged key object must not make us allocate without bound


def derive_kek(passphrase: bytes, kdf: dict) -> bytes:
    """Raises ValueError/KeyError/TypeError on parameters that cannot be right."""
    if kdf["name"] != "argon2id":
        raise ValueError(f"unknown KDF {kdf['name']!r}")
    memory, iterations, lanes = int(kdf["memory_kib"]), int(kdf["iterations"]), int(kdf["lanes"])
    if not (0 < memory <= MAX_KDF_MEMORY_KIB and 0 < iterations <= 1000 and 0 < lanes <= 64):
        raise ValueError("KDF parameters out of range")
    return Argon2id(salt=_unb64(kdf["salt"]), length=32, iterations=iterations, lanes=lanes,
                    memory_cost=memory).derive(passphrase)


def kdf_cost_from_env() -> dict:
    """The KDF cost for new keys. FSBACKUP_KDF_MEMORY_KIB lowers it (the test suite does, for speed)."""
    kdf = dict(DEFAULT_KDF)
    if os.environ.get("FSBACKUP_KDF_MEMORY_KIB"):
        kdf["memory_kib"] = max(8 * kdf["lanes"], int(os.environ["FSBACKUP_KDF_MEMORY_KIB"]))
        kdf["iterations"] = 1
    return kdf


def wrap_master_secret(secret: bytes, passphrase: bytes, repo_id: str, about: dict | None = None) -> bytes:
    """The content of a key object: JSON with the KDF parameters and the wrapped master secret,
    plus `about` (when and where it was made: shown by `key list`, not needed to open it)."""
    kdf = dict(kdf_cost_from_env(), salt=_b64(os.urandom(16)))
    nonce = os.urandom(NONCE_LEN)   # a fresh random salt makes a fresh KEK: the nonce is used once
    wrapped = AESGCM(derive_kek(passphrase, kdf)).encrypt(nonce, secret, b"fsbackup key " + repo_id.encode())
    doc = {"version": 1, "repository": repo_id, **(about or {}), "kdf": kdf, "nonce": _b64(nonce),
           "wrapped": _b64(wrapped)}
    return json.dumps(doc, indent=1).encode()


def unwrap_master_secret(key_object: bytes, passphrase: bytes, repo_id: str, name: str) -> bytes:
    try:
        doc = json.loads(key_object)
        nonce, wrapped = _unb64(doc["nonce"]), _unb64(doc["wrapped"])
        kek = derive_kek(passphrase, doc["kdf"])
        aead = AESGCM(kek)
        key_repo_id = doc.get("repository", repo_id)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(name, "not a key object") from None
    if key_repo_id != repo_id:
        # The key says which repository it belongs to: a damaged config must not pass for a wrong passphrase.
        raise CorruptObject(f"config or {name}", "their repository ids differ, so one of them is damaged")
    try:
        return aead.decrypt(nonce, wrapped, b"fsbackup key " + repo_id.encode())
    except (InvalidTag, ValueError):
        raise WrongPassphrase("wrong passphrase for this repository") from None


def _derive(context: str, material: bytes) -> bytes:
    return blake3.blake3(material, derive_key_context=f"fsbackup 2026-11 {context}").digest()


@dataclass(frozen=True)
class Keys:
    id_key: bytes
    object_root: bytes
    chunker_seed: int

    @classmethod
    def from_master_secret(cls, secret: bytes) -> "Keys":
        return cls(id_key=_derive("block id", secret),
                   object_root=_derive("object key", secret),
                   chunker_seed=int.from_bytes(_derive("chunker seed", secret)[:8], "little") >> 1)

    def block_id(self, data) -> bytes:
        """The keyed id of a block's plaintext (32 bytes)."""
        return blake3.blake3(data, key=self.id_key, max_threads=1).digest()

    def content_hasher(self):
        """An incremental keyed hash of a whole file's content, to check a restore end to end.
        Same key as block ids: a one-block file's content hash is its block id."""
        return blake3.blake3(key=self.id_key)

    def object_cipher(self, purpose: bytes, object_id: bytes) -> "ObjectCipher":
        """The cipher of one remote object and one purpose (e.g. b'blocks', b'table')."""
        key = blake3.blake3(purpose + b"\0" + object_id, key=self.object_root).digest()
        return ObjectCipher(AESGCM(key))


class ObjectCipher:
    """AES-256-GCM under a key that belongs to one object and one purpose."""

    __slots__ = ("_aead",)

    def __init__(self, aead: AESGCM):
        self._aead = aead

    def seal(self, nonce: bytes, plaintext, ad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, ad)

    def open(self, nonce: bytes, ciphertext, ad: bytes, object_name: str) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag:
            raise CorruptObject(object_name) from None
