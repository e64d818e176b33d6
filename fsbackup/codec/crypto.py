"""Keys and authenticated encryption.

A repository has one random 64-byte master secret, stored only wrapped (AES-256-GCM) under a key
derived from a passphrase with Argon2id (keys/<key id> objects, see docs/format.md). From the
master secret we derive, with BLAKE3's key-derivation mode:

- `id_key`: keys the BLAKE3 hash that names blocks, so block ids reveal nothing without it;
- `object_root`: from which every remote object gets its own AES-256-GCM key, derived from the
  object's random name and purpose. A nonce need only be unique under that one key: objects written
  once count or fix theirs, objects ever written again take random ones (`ObjectCipher`; docs/format.md
  says how each kind picks them);
- `chunker_seed`: FastCDC's secret gear table (a 64-bit XOR seed in format 1 repositories), so that
  cut points do not leak content (fingerprinting).

Key objects (version 2) also bind the repository's config object, which is stored in clear, so that a
changed config (say, an older format to weaken the chunker) is found when a passphrase opens it.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import CorruptObject, UsageError, WrongPassphrase
from .chunker import GEAR_TABLE_LEN, ChunkerSeed

MASTER_SECRET_LEN = 64
TAG_LEN = 16
NONCE_LEN = 12
ZERO_NONCE = bytes(NONCE_LEN)
HOLE_MARK = b"\0fsbackup-hole\0"    # a hole in a content hash (ContentHasher)

# Argon2id cost for new keys. 64 MiB and 3 passes take about 0.2 s here; the parameters are
# stored with each key object, so they can be raised later without breaking old keys.
DEFAULT_KDF: dict[str, Any] = {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4}
# A key object's KDF parameters are read before anything is authenticated, so a hostile storage can
# set them: no client derives a key above these bounds (1 GiB of memory, ten passes over it).
MAX_KDF_MEMORY_KIB = 1 << 20
MAX_KDF_ITERATIONS = 10
MAX_KDF_LANES = 16
# FSBACKUP_KDF_MEMORY_KIB sets the memory cost of new keys. Below the default it makes weak keys,
# which only a test suite wants: it is refused unless this variable is "1" too.
KDF_MEMORY_VAR = "FSBACKUP_KDF_MEMORY_KIB"
WEAK_KDF_FLAG = "FSBACKUP_WEAK_KDF_FOR_TESTS"

KEY_FORMAT = 2           # key objects written now; version 1 ones are still read
CONFIG_DIGEST_LEN = 32


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)


class KdfOutOfBounds(ValueError):
    pass


def kdf_params(kdf: dict) -> tuple[int, int, int]:
    """(memory KiB, iterations, lanes) of a key object's KDF, checked against the bounds any client
    accepts before it allocates anything. Raises KdfOutOfBounds, or ValueError/KeyError/TypeError
    on parameters that do not parse."""
    if kdf["name"] != "argon2id":
        raise ValueError(f"unknown KDF {kdf['name']!r}")
    memory, iterations, lanes = (kdf[k] for k in ("memory_kib", "iterations", "lanes"))
    if not all(type(v) is int for v in (memory, iterations, lanes)):
        raise TypeError("KDF parameters are not integers")
    if not (0 < lanes <= MAX_KDF_LANES and 8 * lanes <= memory <= MAX_KDF_MEMORY_KIB
            and 0 < iterations <= MAX_KDF_ITERATIONS):
        raise KdfOutOfBounds(f"its KDF cost ({memory} KiB, {iterations} passes, {lanes} lanes) is outside what "
                             f"fsbackup accepts (at most {MAX_KDF_MEMORY_KIB} KiB, {MAX_KDF_ITERATIONS} passes, "
                             f"{MAX_KDF_LANES} lanes); it was not tried")
    return memory, iterations, lanes


def derive_kek(passphrase: bytes, kdf: dict) -> bytes:
    memory, iterations, lanes = kdf_params(kdf)
    return Argon2id(salt=_unb64(kdf["salt"]), length=32, iterations=iterations, lanes=lanes,
                    memory_cost=memory).derive(passphrase)


def kdf_cost_from_env() -> dict:
    """The KDF cost for new keys: the default, or FSBACKUP_KDF_MEMORY_KIB's memory cost. A cost
    below the default (one pass, for speed) needs FSBACKUP_WEAK_KDF_FOR_TESTS=1: a stray variable
    must not make weak keys. Raises UsageError on a value fsbackup refuses."""
    kdf = dict(DEFAULT_KDF)
    text = os.environ.get(KDF_MEMORY_VAR)
    if not text:
        return kdf
    try:
        memory = int(text)
    except ValueError:
        memory = 0
    weak_allowed = os.environ.get(WEAK_KDF_FLAG) == "1"
    lowest = 8 * kdf["lanes"] if weak_allowed else DEFAULT_KDF["memory_kib"]
    if not lowest <= memory <= MAX_KDF_MEMORY_KIB:
        raise UsageError(f"{KDF_MEMORY_VAR}={text} is refused: new keys take {DEFAULT_KDF['memory_kib']} to "
                         f"{MAX_KDF_MEMORY_KIB} KiB (less makes weak keys: only test suites may, by also setting "
                         f"{WEAK_KDF_FLAG}=1)")
    kdf["memory_kib"] = memory
    if memory < DEFAULT_KDF["memory_kib"]:
        kdf["iterations"] = 1
    return kdf


def config_digest(config_bytes: bytes) -> bytes:
    """What a key object binds of the repository's config object: its exact bytes' BLAKE3 hash."""
    return blake3.blake3(config_bytes).digest()


def _wrap_ad(key_format: int, repo_id: str) -> bytes:
    return (b"fsbackup key " if key_format == 1 else b"fsbackup key 2\0") + repo_id.encode()


def wrap_master_secret(secret: bytes, passphrase: bytes, repo_id: str, config_bytes: bytes,
                       about: str | None = None) -> bytes:
    """The content of a key object: JSON with the KDF parameters and the master secret wrapped
    together with the config's digest, so that a changed config is found (`unwrap_master_secret`).
    `about` is what `seal_about` made of when and where the key was made (for `key list`)."""
    kdf = dict(kdf_cost_from_env(), salt=_b64(os.urandom(16)))
    nonce = os.urandom(NONCE_LEN)   # a fresh random salt makes a fresh KEK: the nonce is used once
    wrapped = AESGCM(derive_kek(passphrase, kdf)).encrypt(nonce, secret + config_digest(config_bytes),
                                                          _wrap_ad(KEY_FORMAT, repo_id))
    doc = {"version": KEY_FORMAT, "repository": repo_id, "kdf": kdf, "nonce": _b64(nonce), "wrapped": _b64(wrapped)}
    if about is not None:
        doc["about"] = about
    return json.dumps(doc, indent=1).encode()


def unwrap_master_secret(key_object: bytes, passphrase: bytes, repo_id: str, name: str) -> tuple[bytes, bytes | None]:
    """(master secret, the digest of the config the key was made with, or None for a version 1
    key, which binds only the repository id). Raises CorruptObject for a key object that does not
    parse or whose KDF cost is out of bounds (before deriving anything), WrongPassphrase."""
    try:
        doc = json.loads(key_object)
        key_format = doc.get("version", 1)
        if key_format not in (1, 2):
            raise ValueError(f"unknown key version {key_format!r}")
        nonce, wrapped = _unb64(doc["nonce"]), _unb64(doc["wrapped"])
        key_repo_id = doc["repository"] if key_format == 2 else doc.get("repository", repo_id)
        kdf_params(doc["kdf"])
    except KdfOutOfBounds as e:
        raise CorruptObject(name, str(e)) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(name, "not a key object") from None
    if key_repo_id != repo_id:
        # The key says which repository it belongs to: a damaged config must not pass for a wrong passphrase.
        raise CorruptObject(f"config or {name}", "their repository ids differ, so one of them is damaged")
    try:
        plain = AESGCM(derive_kek(passphrase, doc["kdf"])).decrypt(nonce, wrapped, _wrap_ad(key_format, repo_id))
    except (ValueError, KeyError, TypeError):
        raise CorruptObject(name, "not a key object") from None
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase for this repository") from None
    if key_format == 1:
        if len(plain) != MASTER_SECRET_LEN:
            raise CorruptObject(name, "not a key object")
        return plain, None
    if len(plain) != MASTER_SECRET_LEN + CONFIG_DIGEST_LEN:
        raise CorruptObject(name, "not a key object")
    return plain[:MASTER_SECRET_LEN], plain[MASTER_SECRET_LEN:]


def _derive(context: str, material: bytes) -> bytes:
    return blake3.blake3(material, derive_key_context=f"fsbackup 2026-11 {context}").digest()


@dataclass(frozen=True)
class Keys:
    id_key: bytes
    object_root: bytes
    chunker_seed: ChunkerSeed

    @classmethod
    def from_master_secret(cls, secret: bytes, legacy_chunker: bool = False) -> "Keys":
        """`legacy_chunker`: a format 1 repository, whose gear table is pyfastcdc's public one XORed
        with a 64-bit seed (kept, so that its cut points and deduplication do not change). Newer
        repositories derive the whole table with BLAKE3 keyed in XOF mode: block lengths, which
        the storage sees, then tell nothing that predicts other cut points."""
        if legacy_chunker:
            chunker_seed: ChunkerSeed = int.from_bytes(_derive("chunker seed", secret)[:8], "little") >> 1
        else:
            chunker_seed = blake3.blake3(key=_derive("chunker gear table", secret)).digest(length=GEAR_TABLE_LEN)
        return cls(id_key=_derive("block id", secret), object_root=_derive("object key", secret),
                   chunker_seed=chunker_seed)

    def block_id(self, data) -> bytes:
        """The keyed id of a block's plaintext (32 bytes)."""
        return blake3.blake3(data, key=self.id_key, max_threads=1).digest()

    def content_hasher(self) -> ContentHasher:
        """An incremental keyed hash of a whole file's content, to check a restore end to end.
        Same key as block ids: a one-block file's content hash is its block id."""
        return ContentHasher(self.id_key)

    def object_cipher(self, purpose: bytes, object_id: bytes) -> "ObjectCipher":
        """The cipher of one remote object and one purpose (e.g. b'blocks', b'table')."""
        key = blake3.blake3(purpose + b"\0" + object_id, key=self.object_root).digest()
        return ObjectCipher(AESGCM(key))


class ContentHasher:
    """The keyed hash of a whole file's content (docs/format.md): its data in order, and each hole
    (a run of zeros the file does not store) as HOLE_MARK and its length, 8 bytes little-endian.
    Backup makes it and restore checks it: one rule for both."""

    __slots__ = ("_hash",)

    def __init__(self, key: bytes):
        self._hash = blake3.blake3(key=key)

    def data(self, data) -> None:
        self._hash.update(data)

    def hole(self, length: int) -> None:
        self._hash.update(HOLE_MARK + length.to_bytes(8, "little"))

    def digest(self) -> bytes:
        return self._hash.digest()


class ObjectCipher:
    """AES-256-GCM under a key that belongs to one object and one purpose.

    Nonce rule: under one key, a nonce never encrypts two different plaintexts. Objects written
    once may use a fixed or counted nonce (`seal`); objects that are ever written again under their
    name (index objects, locks) and small sealed fields take a random one (`seal_random`)."""

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

    def seal_random(self, plaintext, ad: bytes) -> bytes:
        """A fresh random nonce, then the ciphertext and tag. (2**32 writings under one key keep the
        chance of two equal random nonces below 2**-32, NIST's bound; no object comes near.)"""
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, ad)

    def open_random(self, sealed, ad: bytes, object_name: str) -> bytes:
        """The plaintext of what `seal_random` made."""
        if len(sealed) < NONCE_LEN + TAG_LEN:
            raise CorruptObject(object_name, "truncated")
        return self.open(bytes(sealed[:NONCE_LEN]), sealed[NONCE_LEN:], ad, object_name)


# ---- what a key object says of itself, readable only with the master secret ------------------

def seal_about(keys: Keys, key_id: bytes, about: dict) -> str:
    """When and where a key was made, sealed under the key object's own object key (so the storage
    does not see them, and every passphrase's holder can list them)."""
    return _b64(keys.object_cipher(b"key", key_id).seal_random(json.dumps(about).encode(), b"key\0"))


def open_about(keys: Keys, key_id: bytes, text: str, name: str) -> dict:
    try:
        sealed = _unb64(text)
    except (ValueError, AttributeError):
        raise CorruptObject(name, "its 'about' field does not parse") from None
    plain = keys.object_cipher(b"key", key_id).open_random(sealed, b"key\0", name)
    try:
        about = json.loads(plain)
    except ValueError:
        about = None
    if not isinstance(about, dict):
        raise CorruptObject(name, "its 'about' field does not parse")
    return about
