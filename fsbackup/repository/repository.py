"""The repository: the only door to a backend. Names objects, encrypts them, and keeps the
local index in step with what is durably stored. The layers above reach the storage through
named methods (`list_objects`, `delete_object`, `read_checked`, ...) and `open_storage`, never
through a `Backend`; names are built and parsed by `names.py` alone.

Remote layout (docs/format.md):
  config                 plain JSON: format version and repository id
  keys/<hex>             the master secret wrapped under a passphrase
  data/<hh>/<hex>        volumes of encrypted blocks
  index/<hex>            one per volume: its block table
  versions/<hex>         one per backup version: header and file tree
  locks/<hex>            one per running command that locks the repository (locks.py)
  forgotten/<hex>        the record that the version of that name was forgotten
  tags/<hex>             a tag record: a version's tags from then on
"""
from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

from ..backends import Backend, Latency, open_backend
from ..backends.retry import RetryingBackend
from ..catalog import Catalog
from ..catalog import blocks as catalog_blocks
from ..catalog import versions as catalog_versions
from ..catalog.blocks import BlockLocation
from ..catalog.rebuild import Refill
from ..catalog.usage import blocks_only_in, used_extents
from ..codec import wire
from ..codec.crypto import (
    MASTER_SECRET_LEN,
    Keys,
    ObjectCipher,
    config_digest,
    open_about,
    seal_about,
    unwrap_master_secret,
    wrap_master_secret,
)
from ..codec.names import (
    CONFIG,
    Kind,
    forgotten_object,
    index_object,
    key_object,
    lock_object,
    object_name,
    parse_object_name,
    tag_object,
    version_object,
    volume_object,
)
from ..errors import (
    CorruptObject,
    FsbackupError,
    ListingContradiction,
    NoSpace,
    NoSuchObject,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)
from .locks import leftover_age

T = TypeVar("T")

log = logging.getLogger("fsbackup.repository")


# Local index meta key: volumes the index knew vanished from the remote since the last backup.
REREAD_FILES = "reread_files"
# Local index meta key: JSON list of version objects the last sync could not read (skipped).
UNREADABLE_VERSIONS = "unreadable_versions"


def block_runs(blocks: Iterable[tuple[bytes, BlockLocation]], max_bytes: int, gap: int = 0) -> Iterator[list]:
    """Group (block id, location) pairs, in (volume, offset) order, into runs that one range read
    fetches (`Repository.fetch_run`): one volume, at most `gap` bytes between neighbours, at most
    `max_bytes` in all (a larger block is a run of its own)."""
    run: list = []
    for block_id, loc in blocks:
        if run:
            first, last = run[0][1], run[-1][1]
            if (loc.volume != first.volume or loc.offset > last.offset + last.stored_length + gap
                    or loc.offset + loc.stored_length - first.offset > max_bytes):
                yield run
                run = []
        run.append((block_id, loc))
    if run:
        yield run


class FetchedBlock(NamedTuple):
    """One block of a run (`Repository.fetch_run_blocks`)."""
    block_id: bytes
    data: bytes | FsbackupError        # the block, or the error that stands for it
    stored: bytes | memoryview | None  # its stored bytes as authenticated, for a cache (None on error)


__all__ = ["CONFIG", "Kind", "forgotten_object", "index_object", "lock_object", "object_name", "parse_object_name",
           "version_object", "volume_object"]      # (names.py's, as the layers above know them from here)


def open_storage(url: str, connections: int | None = None, limit_upload: float = 0,
                 limit_download: float = 0) -> Backend:
    """The storage of a repository URL (`backends.open_backend`: a path, file://PATH or
    b2://BUCKET/PREFIX), retrying temporary failures; `connections` overrides its own hint;
    `limit_upload` and `limit_download` (KiB/s, 0: unlimited) bound the process's bandwidth."""
    backend = open_backend(url, limit_upload, limit_download)
    if connections:
        backend.connections = connections
    return backend


def list_objects(backend: Backend, kind: Kind, strays: list[str] | None = None) -> dict[str, int]:
    """{id: size} of the stored objects of `kind`. Names in its folder that are no object's
    (`parse_object_name`) are left out, and appended to `strays` when given."""
    objects = {}
    for name, size in backend.list(kind.folder):
        try:
            found, object_id = parse_object_name(name)
        except ValueError:
            found = None
        if found is kind:
            objects[object_id] = size
        elif strays is not None:
            strays.append(name)
    return objects


class StoredObject(NamedTuple):
    """An object as the storage lists it (`Backend.list_modified`)."""
    size: int
    modified: float          # when it was written, in seconds since the epoch (the storage's clock)

    def older_than(self, seconds: float) -> bool:
        return time.time() - self.modified >= seconds


def list_stored(backend: Backend, kind: Kind, strays: list[str] | None = None) -> dict[str, StoredObject]:
    """`list_objects` with each object's modification time."""
    objects = {}
    for name, size, modified in backend.list_modified(kind.folder):
        try:
            found, object_id = parse_object_name(name)
        except ValueError:
            found = None
        if found is kind:
            objects[object_id] = StoredObject(size, modified)
        elif strays is not None:
            strays.append(name)
    return objects


def default_catalog_path(repo_id: str) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fsbackup", repo_id, "index.sqlite")


def get_checked(backend: Backend, name: str, decode: Callable[[bytes], T], offset: int = 0,
                length: int | None = None, retry: bool = True) -> T:
    """`decode` applied to object `name` (or to its `length` bytes from `offset`), downloaded once
    more when the first download comes back short or does not decode (CorruptObject): a transfer
    can be cut or garbled on its way, while a damaged stored object fails again and is reported.
    Every read of a repository object goes through here; nothing is cached before it decodes."""
    def download_and_decode() -> T:
        data = backend.get(name, offset, length)
        if length is not None and len(data) != length:
            raise CorruptObject(name, "truncated")
        return decode(data)

    if not retry:
        return download_and_decode()
    try:
        return download_and_decode()
    except CorruptObject as first:
        damage = first
    result = download_and_decode()      # a second failure is the error the caller reports, once
    log.warning("%s when first downloaded; a second download was intact", damage)
    return result


def _parse_config(raw: bytes) -> tuple[dict, bytes]:
    try:
        config = json.loads(raw)
        if isinstance(config, dict) and "format" in config and isinstance(config.get("id"), str):
            return config, raw
    except (ValueError, TypeError):
        pass
    raise CorruptObject(CONFIG, "not an fsbackup config")


def read_config(backend: Backend) -> tuple[dict, bytes]:
    """The config object, parsed and as stored (key objects bind its exact bytes)."""
    try:
        config, raw = get_checked(backend, CONFIG, _parse_config)
    except NoSuchObject:
        if any(True for _ in backend.list("")):
            raise RepositoryNotFound(f"{backend.url} is not an fsbackup repository (it has no config object)") from None
        raise RepositoryNotFound(f"no repository at {backend.url}; create one with 'fsbackup init'") from None
    fmt_version = config["format"]
    if fmt_version not in wire.READABLE_VERSIONS:
        raise UnsupportedFormat(f"repository format {fmt_version} is not supported by this fsbackup "
                                f"(it reads formats {', '.join(map(str, wire.READABLE_VERSIONS))}); upgrade fsbackup")
    return config, raw


def _unwrap_key(backend: Backend, name: str, passphrase: bytes, repo_id: str) -> tuple[bytes, bytes | None]:
    """`unwrap_master_secret` of key object `name`. As `get_checked` does, a key object that does not
    open is downloaded once more: a byte damaged on its way fails like a wrong passphrase (nothing
    can tell them apart), so it is tried again when the second download differs, and only then
    (a wrong passphrase costs no second key derivation)."""
    first = backend.get(name)
    try:
        return unwrap_master_secret(first, passphrase, repo_id, name)
    except (CorruptObject, WrongPassphrase) as e:
        failure = e
    again = backend.get(name)
    if again == first:
        raise failure
    result = unwrap_master_secret(again, passphrase, repo_id, name)     # a second failure is the one reported
    log.warning("%s when first downloaded; a second download was intact", failure)
    return result


def unfinished_forget(name: str) -> str:
    """The note naming a version still stored though recorded as forgotten (`listed_though_forgotten`)."""
    return (f"version {name[:8]} is recorded as forgotten but still stored (a forget that stopped midway, or a "
            f"record stored by a machine that may not delete): it is kept; 'fsbackup forget {name[:8]}' "
            "finishes forgetting it")


def _key_about() -> dict:
    return {"created": time.time_ns(), "host": socket.gethostname()}


def _new_key_name() -> tuple[str, bytes]:
    key_id = secrets.token_bytes(32)
    return key_object(key_id.hex()), key_id


class Repository:
    def __init__(self, backend: Backend, config: dict, keys: Keys, catalog_path: str | None = None,
                 master_secret: bytes | None = None, key_name: str | None = None,
                 config_bytes: bytes | None = None):
        self.backend = backend
        self.config = config
        self._config_bytes = config_bytes       # as stored: new key objects bind them
        self.id: str = config["id"]
        self.keys = keys
        self._master_secret = master_secret     # kept to wrap it under another passphrase (key commands)
        self.key_name = key_name                 # the key object that opened the repository
        self.catalog_path = catalog_path or default_catalog_path(self.id)
        self._catalog: Catalog | None = None
        self._ciphers: OrderedDict[str, ObjectCipher] = OrderedDict()
        self._ciphers_lock = threading.Lock()
        # Set by the user (--accept-missing): objects the local index knows may be missing from
        # the listings in any number (`refuse_surprising_loss`).
        self.accept_missing = False

    def as_json(self) -> dict:
        """Which repository this is: where it is stored, and its id."""
        return {"repository": self.storage_url, "id": self.id}

    # ---- creation and opening -----------------------------------------------------------

    @classmethod
    def create(cls, backend: Backend, passphrase: bytes, catalog_path: str | None = None) -> "Repository":
        try:
            existing = next(iter(backend.list("")), None)
        except FsbackupError:
            existing = None
        if existing is not None:
            if backend.exists(CONFIG):
                raise UsageError(f"{backend.url} already holds an fsbackup repository")
            raise UsageError(f"{backend.url} is not empty and not an fsbackup repository; "
                             "choose an empty or new folder")
        config = {"format": wire.FORMAT_VERSION, "id": secrets.token_hex(16)}
        config_bytes = json.dumps(config, indent=1).encode()
        secret = os.urandom(MASTER_SECRET_LEN)
        keys = Keys.from_master_secret(secret)
        repo = cls(backend, config, keys, catalog_path, secret, config_bytes=config_bytes)
        repo.key_name = repo.add_key(passphrase)
        backend.put(CONFIG, config_bytes)       # last: a half-made repo has no config
        return repo

    @classmethod
    def open(cls, backend: Backend, passphrase: bytes, catalog_path: str | None = None) -> "Repository":
        """Open with the first key object `passphrase` opens. A version 2 key binds the config it
        was made with: a config changed since (its format, its id) is reported as corrupt. The
        config is checked only against the keys, so one garbled on its way reads as a config that
        matches none: it is downloaded once more, as `get_checked` does, and tried again when the
        second download differs."""
        config = read_config(backend)
        try:
            return cls._open_with(backend, passphrase, catalog_path, config)
        except CorruptObject as e:
            again = read_config(backend)
            if again[1] == config[1]:
                raise
            repo = cls._open_with(backend, passphrase, catalog_path, again)
            log.warning("%s when first downloaded; a second download was intact", e)
            return repo

    @classmethod
    def _open_with(cls, backend: Backend, passphrase: bytes, catalog_path: str | None,
                   config_read: tuple[dict, bytes]) -> "Repository":
        config, config_bytes = config_read
        key_names = sorted(key_object(key_id) for key_id in list_objects(backend, Kind.KEY))
        if not key_names:
            raise CorruptObject(Kind.KEY.folder, "the repository has no key objects")
        damage: CorruptObject | None = None
        wrong_passphrase = False
        for name in key_names:          # every key is tried: one damaged key must not hide another
            try:
                secret, bound_config = _unwrap_key(backend, name, passphrase, config["id"])
            except WrongPassphrase:
                wrong_passphrase = True
                continue
            except CorruptObject as e:
                damage = damage or e
                continue
            if bound_config is not None and bound_config != config_digest(config_bytes):
                raise CorruptObject(CONFIG, f"it is not the config {name} was made with: it was changed")
            keys = Keys.from_master_secret(secret, legacy_chunker=config["format"] == 1)
            return cls(backend, config, keys, catalog_path, secret, name, config_bytes)
        if wrong_passphrase or damage is None:
            raise WrongPassphrase("wrong passphrase for this repository")
        raise damage

    # ---- the storage, by kind and id (for the layers above) ---------------------------------

    @property
    def connections(self) -> int:
        """How many storage requests suit the storage at once (`Backend.connections`)."""
        return self.backend.connections

    @property
    def storage_is_local(self) -> bool:
        """Whether the storage declares itself local (`BackendTraits.latency`): a request costs
        about a system call, so copying objects into a cache on this machine gains nothing."""
        return self.backend.traits.latency is Latency.LOCAL

    @property
    def storage_url(self) -> str:
        return self.backend.url

    def bound_retries(self, max_seconds: float) -> None:
        """From now on, retry a storage call that fails temporarily for at most `max_seconds`."""
        self.backend = RetryingBackend(self.backend, max_seconds=max_seconds)

    def list_objects(self, kind: Kind) -> dict[str, int]:
        """{id: size} of the stored objects of `kind` (foreign names in its folder left out).
        Whole or raising, as every listing (`Backend.list`)."""
        return list_objects(self.backend, kind)

    def list_stored(self, kind: Kind) -> dict[str, StoredObject]:
        """{id: (size, when written)} of the stored objects of `kind` (`list_objects`)."""
        return list_stored(self.backend, kind)

    def stored_bytes(self) -> int:
        """Bytes of every object on the storage, fsbackup's or not (for summaries and tests)."""
        return sum(size for _, size in self.backend.list(""))

    def delete_object(self, kind: Kind, object_id: str) -> None:
        """Delete the object of `kind` and `object_id` (no error when it is gone already). The
        caller keeps the order of docs/design.md ("Crash safety") and holds an exclusive lock."""
        self.backend.delete(object_name(kind, object_id))

    def read_checked(self, kind: Kind, object_id: str, decode: Callable[[bytes], T], offset: int = 0,
                     length: int | None = None) -> T:
        """`get_checked` of the object of `kind` and `object_id`: decoded, downloaded once more
        when the first download is short or does not decode."""
        return get_checked(self.backend, object_name(kind, object_id), decode, offset, length)

    def remove_partial_uploads(self) -> tuple[int, int]:
        """Remove what puts of killed runs left unseen on the storage, once older than
        `locks.leftover_age()` (why that age: locks.py); (how many, bytes). Under an
        exclusive lock."""
        return self.backend.remove_partial_uploads(leftover_age())

    # ---- the local index ----------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        """The local index (the catalog's connection, `fsbackup.catalog`), opened on first use; a
        file that belongs to another repository is refused."""
        if self._catalog is None:
            self._catalog = Catalog(self.catalog_path)
            repo_id = self._catalog.get_meta("repository_id")
            if repo_id is not None and repo_id != self.id:
                raise UsageError(f"the local index {self.catalog_path} belongs to another repository; "
                                 "use another --index")
        return self._catalog

    def catalog_is_built(self) -> bool:
        return not self.catalog.is_empty()

    def sync_catalog(self, progress=None) -> Catalog:
        """The local index, brought in step with the remote: rebuilt when missing, else updated
        with the versions and volumes other runs stored (and versions removed) since it was written.

        A version object that does not read is skipped with a warning (the others stay usable) and
        remembered (UNREADABLE_VERSIONS): prune refuses to run while one is, as it would take that
        version's data for unused. Listings that drop much of what the index knows are refused
        (`refuse_surprising_loss`) before anything is forgotten."""
        if not self.catalog_is_built():
            result = self.rebuild_catalog(progress, skip_damaged_versions=True)
            for obj in result["damaged"]:
                _warn_skipped_version(obj)
            self.follow_tag_records()
            return self.catalog
        catalog = self.catalog
        # What this index knows is read before the listings: a version another process records
        # meanwhile is then neither taken for vanished nor recorded twice.
        known_volumes = catalog_blocks.volume_names(catalog)
        local_versions = catalog_versions.version_names(catalog)
        # Versions are listed before index objects: a version is stored after every index object
        # it needs, so each version listed has its volumes in the index listing that follows,
        # even when another machine's backup stores both between the two listings.
        remote_versions = set(self.list_objects(Kind.VERSION))
        remote_indexes = set(self.list_objects(Kind.INDEX))
        vanished_volumes = known_volumes - remote_indexes
        self.follow_remote_versions(local_versions, remote_versions)
        # New volumes first: blocks another machine's prune moved into them are then recorded there
        # too (as spares), and a volume whose index object is gone is judged by what still needs it.
        new_indexes = sorted(remote_indexes - known_volumes)
        if new_indexes:
            self._record_index_objects(new_indexes, self.list_objects(Kind.VOLUME), progress=None)
        self.refuse_surprising_loss("index objects (index/)", known_volumes, vanished_volumes,
                                    still_needed=lambda names: bool(self.volumes_needed_alone(names)))
        # A volume whose index object is gone was deleted by a prune (maybe another machine's), or
        # lost: forgotten, its blocks moving to their spare places.
        self.forget_vanished_volumes(vanished_volumes)
        unreadable = []
        for name in sorted(remote_versions - local_versions):
            try:
                head, entries = self.load_version(name)
                self.record_version(name, head, entries)
            except NoSuchObject:
                continue                  # forgotten by another machine since the listing
            except CorruptObject:
                unreadable.append(version_object(name))
                _warn_skipped_version(version_object(name))
        if json.dumps(unreadable) != (catalog.get_meta(UNREADABLE_VERSIONS) or "[]"):
            catalog.set_meta(UNREADABLE_VERSIONS, json.dumps(unreadable))
        self.follow_tag_records()
        return catalog

    def volumes_needed_alone(self, volumes: set[str]) -> set[str]:
        """Those of `volumes` that hold a block a recorded version's file uses and no other volume
        holds: what a prune (which deletes only volumes no version needs, or whose live blocks it
        stored elsewhere first) never deletes. A volume gone without being one of them may be
        a prune's work, this machine's or another's. A full pass over the files' layouts: only
        run when volumes vanished."""
        sole = blocks_only_in(self.catalog, volumes)
        holding = set(sole.values())        # the most that can be needed: the pass ends once all are
        needed: set[str] = set()
        for extents in used_extents(self.catalog) if sole else ():
            for block_id, _ in wire.EXTENT.iter_unpack(extents):
                volume = sole.get(block_id)
                if volume is not None:
                    needed.add(volume)
            if needed == holding:
                break
        return needed

    def unreadable_versions(self) -> list[str]:
        """Version objects the last sync of the local index could not read (and skipped)."""
        return json.loads(self.catalog.get_meta(UNREADABLE_VERSIONS) or "[]")

    def refuse_surprising_loss(self, what: str, known: set[str], missing: set[str],
                               still_needed: Callable[[set[str]], bool] | None = None) -> None:
        """Raise ListingContradiction when a listing lacks more than half of the objects of a kind
        the local index knows (all of them, when it knows one): prunes and forgets remove a few at
        a time, while a folder moved away, a NAS share half mounted or a wrong prefix loses them
        wholesale. Nothing is forgotten or deleted on such a listing unless the user confirms it
        (`accept_missing`). A listing that could not be read raises before this (the backends)."""
        if self.accept_missing or not missing or 2 * len(missing) <= len(known):
            return
        if still_needed is not None and not still_needed(missing):
            return                        # nothing that remains needs them: a prune's work, not a loss
        raise ListingContradiction(
            f"the repository lists {len(known) - len(missing)} of the {len(known)} {what} this machine's "
            f"local index knows: check that the repository's folders are all there and readable (a moved or "
            f"unmounted folder, a changed prefix); if they were removed on purpose, run the command again "
            f"with --accept-missing")

    def _record_index_objects(self, names: list[str], volume_sizes: dict[str, int], progress) -> list[str]:
        """Record the blocks of the index objects of volumes `names` whose volume exists (in
        `volume_sizes`, by id); returns the index objects skipped."""
        skipped = []
        for name in names:
            obj = index_object(name)
            if name not in volume_sizes:
                skipped.append(obj)       # its volume is gone (or never arrived): its blocks are not available
            else:
                try:
                    size, entries = self.load_index_object(name)
                except NoSuchObject:
                    skipped.append(obj)   # deleted since the listing (another machine's prune)
                else:
                    self.record_volume(name, size, entries)
            if progress:
                progress.advance(items=1)
        return skipped

    def unrecord_version(self, name: str) -> None:
        """Forget version `name` and its tree in the local index (`catalog.versions.unrecord_version`)."""
        catalog_versions.unrecord_version(self.catalog, name)

    def drop_unused_contents(self) -> None:
        """Forget file contents no recorded version refers to any more (after versions are removed)."""
        catalog_versions.drop_unused_contents(self.catalog)

    def rebuild_catalog(self, progress=None, keep_going: bool = False, skip_damaged_versions: bool = False) -> dict:
        """Rebuild the local index from index and version objects alone (no volume is downloaded).
        Objects are downloaded and decrypted in threads (AEAD and zstd release the GIL) while this
        thread writes them in one transaction. An index or version object that does not read stops
        the rebuild (nothing is recorded), unless `keep_going` (repair): then it is listed in `damaged`.
        `skip_damaged_versions` lists damaged version objects there too, but not index objects (a
        volume left out would make restores fail with less telling errors)."""
        catalog = self.catalog
        index_names = sorted(self.list_objects(Kind.INDEX))
        listed = set(self.list_objects(Kind.VERSION))
        version_names = sorted(listed)
        volume_sizes = self.list_objects(Kind.VOLUME)
        present = [n for n in index_names if n in volume_sizes]
        skipped = sorted(index_object(n) for n in set(index_names) - set(present))   # their volume is gone
        if progress:
            progress.start("rebuilding index", total_items=len(present) + len(version_names))
        damaged: list[str] = []
        # Alone with the index (rows are renumbered), tuned for one bulk load (`Catalog.rebuilding`).
        with catalog.rebuilding():
            with ThreadPoolExecutor(max(4, 2 * self.connections)) as pool, catalog.transaction() as db:
                self._rebuild_in(Refill(catalog, db), pool, present, version_names, damaged, keep_going,
                                 skip_damaged_versions, progress)
        if progress:
            progress.finish()
        return {"volumes": len(present) - sum(1 for d in damaged if d.startswith(Kind.INDEX.folder)),
                "versions": len(version_names) - sum(1 for d in damaged if d.startswith(Kind.VERSION.folder)),
                "skipped": skipped, "damaged": damaged}

    def _rebuild_in(self, refill: Refill, pool, present: list[str], version_names: list[str], damaged: list[str],
                    keep_going: bool, skip_damaged_versions: bool, progress) -> None:
        """rebuild_catalog's writing, inside its one transaction (`refill`'s)."""
        def unreadable(obj: str, error: FsbackupError) -> None:
            if not (keep_going or (skip_damaged_versions and obj.startswith(Kind.VERSION.folder))):
                raise error
            damaged.append(obj)

        # Versions keep their row ids (the mount's inode numbers); everything else is renumbered.
        version_ids = refill.start()
        # Index objects are small: each worker task reads a run of them (one hand-over of the
        # GIL per run, not per object) and returns the rows to write; volume ids are positions.
        runs = [(first, present[first:first + INDEX_OBJECTS_PER_TASK])
                for first in range(0, len(present), INDEX_OBJECTS_PER_TASK)]
        for _, results in _bounded_map(pool, self._read_index_objects, runs):
            for obj, result in results:
                if isinstance(result, FsbackupError):
                    unreadable(obj, result)
                    continue
                refill.add_volume(*result)           # (one transaction: no savepoint per volume)
            if progress:
                progress.advance(items=len(results))
        refill.place_blocks()
        content_ids: dict[bytes, int] = {}                  # extents -> contents row, shared by versions
        for name, result in _bounded_map(pool, self._read_version, version_names):
            if isinstance(result, FsbackupError):
                unreadable(version_object(name), result)
            else:
                head, entries = result
                try:
                    self.record_version(name, head, entries, content_ids=content_ids, version_id=version_ids.get(name))
                except CorruptObject as e:              # an entry that does not read or check
                    unreadable(version_object(name), e)
            if progress:
                progress.advance(items=1)
        refill.finish({"repository_id": self.id,
                       UNREADABLE_VERSIONS: json.dumps([d for d in damaged if d.startswith(Kind.VERSION.folder)])})

    def _read_index_objects(self, run: tuple[int, list[str]]) -> list[tuple[str, object]]:
        """(object, result) for the index objects of a run of volumes, the first becoming volume row
        first+1: the result is (volumes row, staged block rows), or the error for the writing
        thread to decide."""
        first, names = run
        results: list[tuple[str, object]] = []
        for vol_id, name in enumerate(names, start=first + 1):
            obj = index_object(name)
            try:
                size, entries = self.load_index_object(name)
            except (CorruptObject, NoSuchObject) as e:
                results.append((obj, e))
                continue
            results.append((obj, ((vol_id, name, size, len(entries)),
                                  [(e.id, vol_id, e.offset, e.stored_length, e.plain_length) for e in entries])))
        return results

    def _read_version(self, name: str):
        """(header, entries) of a version object, authenticated; its entries are decompressed and
        parsed as the writing thread records them (streamed: memory holds no version's tree)."""
        try:
            return self.load_version(name)
        except (CorruptObject, NoSuchObject) as e:
            return e

    def forget_lost_volumes(self) -> list[str]:
        """Forget the volumes the local index records but the storage no longer lists (removed
        elsewhere, or lost), so that no new version refers to their blocks; say what was done.
        Changes nothing stored: a backup calls it under its shared (append) lock, after the sync."""
        strays: list[str] = []
        volumes = list_objects(self.backend, Kind.VOLUME, strays)
        notes = [f"{obj} is not an fsbackup object; left alone" for obj in strays]
        known = catalog_blocks.volume_names(self.catalog)
        gone = known - set(volumes)
        self.refuse_surprising_loss("volumes (data/)", known, gone)
        self.forget_vanished_volumes(gone)
        if gone:
            notes.append(f"the local index listed {len(gone)} volume(s) the repository no longer holds; "
                         "forgotten (their blocks will be stored again when needed)")
        return notes

    def listed_though_forgotten(self) -> list[str]:
        """The versions still stored though a record says they were forgotten: a forget that stopped
        between its two steps, an older copy of the version put back, or a record stored by a
        machine that may not delete (backup-only credentials, docs/append-only.md). A record alone
        forgets nothing, so that a machine that can only add objects cannot make the trusted
        machine's prune delete a version's data: these stay versions like any other, check and
        prune name them, and forgetting them again finishes the forget."""
        listed = set(self.list_objects(Kind.VERSION))
        return sorted(listed & self.forgotten_names(listed))

    def settle_leftovers(self) -> list[str]:
        """Bring the remote and the local index to agree after runs that stopped midway, and say
        what was done (one note per object). Repair calls it under the exclusive lock, before it
        rebuilds the local index. Backups share their lock, so a running backup's uploads look
        exactly like a stopped one's leftovers: objects are judged only once older than
        `locks.leftover_age()` (why: locks.py), younger ones are left for a later run.

        - a volume without its index object (a run stopped between the two uploads) is adopted:
          its own table gives the index object back, and its blocks serve later backups; one
          whose table does not read is deleted (no version can use it: versions are written last);
        - an index object whose volume is missing is deleted (its blocks are unavailable anyway);
        - a version object recorded as forgotten is kept and named (`listed_though_forgotten`);
        - the temporaries of puts a killed run never finished are removed;
        """
        age = leftover_age()
        strays: list[str] = []
        volumes = list_stored(self.backend, Kind.VOLUME, strays)
        notes = [f"{obj} is not an fsbackup object; left alone" for obj in strays]
        index_objs = self.list_stored(Kind.INDEX)
        for name in sorted(set(volumes) - set(index_objs)):
            if volumes[name].older_than(age):
                notes.append(self._adopt_volume(name, volumes[name].size))
        for name in sorted(set(index_objs) - set(volumes)):
            if index_objs[name].older_than(age):
                self.delete_object(Kind.INDEX, name)
                notes.append(f"removed {index_object(name)}: its volume is missing")
        notes += [unfinished_forget(name) for name in self.listed_though_forgotten()]
        removed, size = self.remove_partial_uploads()
        if removed:
            notes.append(f"removed {removed} partial upload(s) of runs that stopped midway ({size} bytes)")
        return notes

    def forget_vanished_volumes(self, names: set[str]) -> None:
        """Forget volumes the local index knew and the remote no longer holds. Whether a prune
        removed them or they were lost cannot be told, so the next backup must not take unchanged
        files' blocks on trust (REREAD_FILES): it reads every file again, once."""
        for name in names:
            self.unrecord_volume(name)
        if names:
            self.catalog.set_meta(REREAD_FILES, "1")

    def _adopt_volume(self, name: str, size: int) -> str:
        obj = volume_object(name)
        try:
            entries = self.read_volume_table(name, size)
        except CorruptObject as e:
            self.delete_object(Kind.VOLUME, name)
            return f"deleted {obj}, left by a backup that stopped before recording it ({e})"
        self.adopt_volume(name, size, entries)
        return f"adopted {obj}, left by a backup that stopped before recording it"

    def read_volume_table(self, name: str, size: int) -> list[wire.BlockEntry]:
        """A volume's own encrypted table (two small range reads), for a volume whose index object
        is missing; CorruptObject when it does not read."""
        obj = volume_object(name)
        volume_id = bytes.fromhex(name)
        offset, length = self.read_checked(Kind.VOLUME, name, lambda f: wire.table_place(f, size, obj),
                                           size - wire.FOOTER.size, wire.FOOTER.size)
        return self.read_checked(Kind.VOLUME, name, lambda t: wire.open_table(self.keys, volume_id, t, obj),
                                 offset, length)

    def adopt_volume(self, name: str, size: int, entries: list[wire.BlockEntry]) -> None:
        """Store a volume's index object again from its table, and record the volume."""
        self.store_index_object(name, size, entries)
        self.record_volume(name, size, entries)

    def store_index_object(self, name: str, size: int, entries: list[wire.BlockEntry]) -> None:
        """Store (or replace whole) the index object of volume `name`, of `size` bytes, listing `entries`."""
        self.backend.put(index_object(name), wire.encode_index(self.keys, bytes.fromhex(name), size, entries))

    def load_index_object(self, name: str) -> tuple[int, list[wire.BlockEntry]]:
        """(volume size, block entries) of volume `name`'s index object, authenticated."""
        obj = index_object(name)
        return self.read_checked(Kind.INDEX, name, lambda data: wire.decode_index(self.keys, bytes.fromhex(name),
                                                                                 data, obj))

    # ---- keys -----------------------------------------------------------------------------

    def key_objects(self) -> list[tuple[str, dict]]:
        """(name, what its JSON says) of every key object, with when and where it was made
        (`created`, `host`) opened when it says so; a damaged one says {"damaged": why}."""
        out = []
        for key_id in sorted(self.list_objects(Kind.KEY)):
            name = key_object(key_id)
            try:
                doc = json.loads(self.backend.get(name))
                if not isinstance(doc, dict):
                    raise ValueError
                about = doc.pop("about", None)
                if about is not None:
                    doc.update(open_about(self.keys, bytes.fromhex(key_id), about, name))
            except ValueError:
                doc = {"damaged": "not a key object"}
            except CorruptObject as e:
                doc = {"damaged": str(e)}
            out.append((name, doc))
        return out

    def add_key(self, passphrase: bytes) -> str:
        """Store the master secret wrapped under another passphrase, bound to the config; returns
        the new key object's name."""
        if self._master_secret is None or self._config_bytes is None:
            raise UsageError("this repository was opened without its key material: open it with a passphrase")
        name, key_id = _new_key_name()
        about = seal_about(self.keys, key_id, _key_about())
        self.backend.put(name, wrap_master_secret(self._master_secret, passphrase, self.id, self._config_bytes, about))
        return name

    def change_passphrase(self, passphrase: bytes) -> str:
        """Replace the key in use by one under `passphrase`: the new key is stored first, so a crash
        between the two steps leaves both, never none. No other object changes."""
        old, new = self.key_name, self.add_key(passphrase)
        if old is not None:
            self.backend.delete(old)
        self.key_name = new
        return new

    def remove_key(self, name: str) -> None:
        if name == self.key_name:
            raise UsageError("that is the key in use; open the repository with another passphrase to remove it")
        names = [key_object(key_id) for key_id in self.list_objects(Kind.KEY)]
        if name not in names:
            raise NoSuchObject(name)
        if len(names) < 2:
            raise UsageError("that is the repository's last key")
        self.backend.delete(name)

    # ---- locks (locks.py decides who may hold them) -------------------------------------------

    def lock_names(self) -> list[str]:
        return sorted(self.list_objects(Kind.LOCK))

    def store_lock(self, name: str, doc: dict) -> None:
        self.backend.put(lock_object(name), wire.encode_lock(self.keys, bytes.fromhex(name), doc))

    def load_lock(self, name: str) -> dict:
        obj = lock_object(name)
        return self.read_checked(Kind.LOCK, name,
                                 lambda data: wire.decode_lock(self.keys, bytes.fromhex(name), data, obj))

    def delete_lock(self, name: str) -> None:
        self.delete_object(Kind.LOCK, name)

    # ---- volumes and blocks -------------------------------------------------------------

    def block_cipher(self, volume_name: str) -> ObjectCipher:
        with self._ciphers_lock:
            cipher = self._ciphers.get(volume_name)
            if cipher is None:
                cipher = self._ciphers[volume_name] = self.keys.object_cipher(b"blocks", bytes.fromhex(volume_name))
                if len(self._ciphers) > 1024:
                    self._ciphers.popitem(last=False)
            return cipher

    def store_volume(self, name: str, volume: bytes, index_obj: bytes) -> None:
        """Upload a sealed volume, then its index object (worker threads call this)."""
        self.backend.put(volume_object(name), volume)
        self.backend.put(index_object(name), index_obj)

    def record_volume(self, name: str, size: int, entries: Iterable[wire.BlockEntry], moved: bool = False) -> None:
        """Record a volume whose volume and index objects are durably stored. Blocks already
        recorded elsewhere keep their place (this one is kept as a spare: catalog/schema.py, v4),
        unless `moved` (prune's repacking, which deletes the old volume next) moves them here."""
        catalog_blocks.record_volume(self.catalog, name, size, list(entries), moved)

    def unrecord_volume(self, name: str) -> None:
        """Forget a volume and the blocks recorded in it (before it is deleted, or once it is gone)."""
        catalog_blocks.unrecord_volume(self.catalog, name)

    def delete_volume(self, name: str) -> None:
        """Delete a volume no version needs: unrecorded first (the index never names a block that
        may be gone), then its index object (from then on no reader records it again), then the
        volume. A crash in between leaves a volume without index object, which prune deletes."""
        self.unrecord_volume(name)
        self.delete_object(Kind.INDEX, name)
        self.delete_object(Kind.VOLUME, name)

    def known_blocks(self, block_ids: list[bytes]) -> set[bytes]:
        """The ones among `block_ids` the index records as stored (at most a few hundred at once)."""
        return catalog_blocks.known_blocks(self.catalog, block_ids)

    def block_location(self, block_id: bytes, catalog: Catalog | None = None) -> BlockLocation:
        """Where a stored block lies, read through `index` (another thread's own connection) or the
        repository's; NoSuchObject when no stored volume holds it."""
        return catalog_blocks.block_location(catalog or self.catalog, block_id)

    def block_locations(self, block_ids: Iterable[bytes]) -> dict[bytes, BlockLocation]:
        """`block_location` of many blocks in few queries; a block in no stored volume is left out."""
        return catalog_blocks.block_locations(self.catalog, block_ids)

    def fetch_run(self, blocks: list[tuple[bytes, BlockLocation]]) -> dict[bytes, bytes | FsbackupError]:
        """Each block's bytes, or the error that stands for it (`fetch_run_blocks`)."""
        return {fetched.block_id: fetched.data for fetched in self.fetch_run_blocks(blocks)}

    def fetch_run_blocks(self, blocks: list[tuple[bytes, BlockLocation]]) -> list[FetchedBlock]:
        """Blocks lying close together in one volume (`blocks`: (block id, location) by offset),
        fetched with one range read and decoded together (`wire.decode_blocks`), in the order given.
        A block that does not decode is downloaded alone once more, as `get_checked` does, so
        damage costs only the files that use it: its `data` is the CorruptObject (or NoSuchObject)
        found. Thread-safe, like `fetch_block`."""
        volume = blocks[0][1].volume
        name = volume_object(volume)
        start = blocks[0][1].offset
        end = max(loc.offset + loc.stored_length for _, loc in blocks)
        try:
            raw = self.backend.get(name, start, end - start)
        except NoSuchObject as e:
            return [FetchedBlock(block_id, e, None) for block_id, _ in blocks]
        view = memoryview(raw)
        stored = [view[loc.offset - start:loc.offset - start + loc.stored_length] for _, loc in blocks]
        decoded = wire.decode_blocks(self.keys, self.block_cipher(volume),
                                    [(block_id, s, loc.plain_length) for (block_id, loc), s in zip(blocks, stored)],
                                    name)
        fetched = []
        raw_block: bytes | memoryview
        for (block_id, loc), data, raw_block in zip(blocks, decoded, stored):
            if not isinstance(data, CorruptObject):
                fetched.append(FetchedBlock(block_id, data, raw_block))
                continue
            damage = data
            try:
                data, raw_block = self.download_block(block_id, loc, retry=False)
            except (CorruptObject, NoSuchObject) as e:
                fetched.append(FetchedBlock(block_id, e, None))
            else:
                log.warning("%s when first downloaded; a second download was intact", damage)
                fetched.append(FetchedBlock(block_id, data, raw_block))
        return fetched

    def fetch_block(self, block_id: bytes, location: BlockLocation) -> bytes:
        """Fetch one block with one range read, authenticate, decompress and check it against its id.
        Thread-safe: needs no index (`location` comes from `block_location`)."""
        return self.download_block(block_id, location)[0]

    def download_block(self, block_id: bytes, location: BlockLocation, retry: bool = True) -> tuple[bytes, bytes]:
        """(the block, its stored bytes as downloaded and authenticated), for callers that cache them.
        `retry=False` downloads once (for a caller whose first download already failed)."""
        return get_checked(self.backend, volume_object(location.volume),
                           lambda stored: (self.decode_block(block_id, location, stored), stored),
                           location.offset, location.stored_length, retry)

    def decode_block(self, block_id: bytes, location: BlockLocation, stored: bytes) -> bytes:
        return wire.decode_block(self.keys, self.block_cipher(location.volume), block_id, stored,
                                location.plain_length, volume_object(location.volume))

    # ---- versions -----------------------------------------------------------------------

    def store_version(self, head: dict, entries: Iterable[list]) -> str:
        name = secrets.token_hex(32)
        self.backend.put(version_object(name), wire.encode_version(self.keys, bytes.fromhex(name), head, entries))
        return name

    def delete_version(self, name: str, why: str = "forget") -> None:
        """Remove a version: first the record that it was forgotten (`forgotten/<name>`: no machine
        then takes its going for a loss), then its object (a crash between the two leaves an
        version that stays, until a forget of it runs again: `listed_though_forgotten`), then its
        rows in the local index."""
        record = wire.encode_forgotten(self.keys, bytes.fromhex(name), {"time_ns": time.time_ns(), "why": why})
        try:
            self.backend.put(forgotten_object(name), record)
        except NoSpace:
            # A full repository disk (forget --no-lock is how space is freed): the version object
            # goes first, and the record takes a little of the room that freed.
            self.delete_object(Kind.VERSION, name)
            try:
                self.backend.put(forgotten_object(name), record)
            except NoSpace:
                log.warning("the disk is full: no record that version %s was forgotten could be stored; other "
                            "machines will report it as gone without a forget", name[:8])
        else:
            self.delete_object(Kind.VERSION, name)
        self.unrecord_version(name)
        # (a crash before this leaves tag records of a version that is gone: readers ignore them)
        self.delete_tag_records([r.name for r in catalog_versions.tag_records_of(self.catalog, name)])

    # ---- tag records ----------------------------------------------------------------------

    def store_tag_record(self, version: str, tags: list[str], generation: int) -> str:
        """Store a tag record giving version `version` the tags `tags` (docs/format.md "Tag
        records") under a new name, and mirror it in the local index; returns its name."""
        name = secrets.token_hex(32)
        time_ns = time.time_ns()
        self.backend.put(tag_object(name), wire.encode_tag_record(self.keys, bytes.fromhex(name), version, tags,
                                                                  generation, time_ns))
        catalog_versions.follow_tag_records(
            self.catalog, [catalog_versions.TagRecord(name, version, generation, time_ns, tags)], [])
        return name

    def delete_tag_records(self, names: list[str]) -> None:
        """Delete tag records (superseded ones, or those of a forgotten version) and their rows."""
        for name in names:
            self.delete_object(Kind.TAGS, name)
        catalog_versions.follow_tag_records(self.catalog, [], names)

    def load_tag_record(self, name: str) -> catalog_versions.TagRecord:
        """Tag record `name`, authenticated and checked; CorruptObject or NoSuchObject else."""
        obj = tag_object(name)
        doc = self.read_checked(Kind.TAGS, name,
                                lambda data: wire.decode_tag_record(self.keys, bytes.fromhex(name), data, obj))
        return catalog_versions.TagRecord(name, doc["version"], doc["generation"], doc["time_ns"], doc["tags"])

    def follow_tag_records(self) -> None:
        """Mirror the repository's tag records in the local index: read the ones it lacks, drop
        the ones no longer listed. A record that does not read is skipped with a warning (its
        version keeps the tags it had here)."""
        listed = set(self.list_objects(Kind.TAGS))
        known = catalog_versions.tag_record_names(self.catalog)
        added = []
        for name in sorted(listed - known):
            try:
                added.append(self.load_tag_record(name))
            except NoSuchObject:
                continue                  # superseded and deleted since the listing
            except CorruptObject as e:
                log.warning("%s; the tags it sets are not applied", e)
        if added or known - listed:
            catalog_versions.follow_tag_records(self.catalog, added, known - listed)

    def forgotten_names(self, candidates: set[str]) -> set[str]:
        """Those of the versions `candidates` recorded as forgotten (their `forgotten/` objects),
        each only when its record authenticates: a record is no more trusted for its name than any
        other object."""
        names = set(self.list_objects(Kind.FORGOTTEN)) & candidates
        for name in sorted(names):
            obj = forgotten_object(name)
            try:
                self.read_checked(Kind.FORGOTTEN, name,
                                  functools.partial(wire.decode_forgotten, self.keys, bytes.fromhex(name), name=obj))
            except (CorruptObject, NoSuchObject) as e:
                names.discard(name)
                log.warning("%s; version %s is not taken for forgotten", e, name[:8])
        return names

    def follow_remote_versions(self, local: set[str], remote: set[str]) -> None:
        """Bring the local index's versions in step with the listing `remote`: drop the versions it
        no longer lists (the caller records the new ones). Every listed version is a version, a
        forgotten record or not (`listed_though_forgotten`).

        A version gone without a record that it was forgotten was deleted behind fsbackup's back,
        or lost: it is remembered (vanished_versions), warned about, and reported by `check` until
        the user accepts it (--accept-missing). More than half of them at once is refused
        (`refuse_surprising_loss`)."""
        vanished = local - remote
        unexplained = vanished - self.forgotten_names(vanished) if vanished else set()
        if vanished - unexplained:
            unexplained |= self._hidden_versions(vanished - unexplained)
        self.refuse_surprising_loss("version objects (versions/)", local, unexplained)
        if unexplained or self.accept_missing:     # (a sync that changes nothing writes nothing)
            self._remember_vanished(unexplained)
        for name in vanished:
            self.unrecord_version(name)

    def _hidden_versions(self, recorded: set[str]) -> set[str]:
        """Of versions gone with a record that they were forgotten, those the storage keeps hidden
        (`Backend.hidden`): a forget deletes, so the record was stored, and the version hidden, by
        a machine that may not delete (docs/append-only.md). They are taken for gone without a
        forget: reported, and their data kept from prune until the user accepts the loss."""
        hidden = self.backend.hidden({version_object(name) for name in recorded})
        names = {name for name in recorded if version_object(name) in hidden}
        for name in sorted(names):
            log.warning("version %s is hidden in the storage, though recorded as forgotten (a forget deletes "
                        "it): a machine that may not delete may have hidden it; unhide %s to get it back "
                        "(docs/append-only.md)", name[:8], version_object(name))
        return names

    def _remember_vanished(self, unexplained: set[str]) -> None:
        names = sorted(unexplained)
        catalog_versions.remember_vanished(self.catalog, names, time.time_ns(), accept_all=self.accept_missing)
        for name in names:
            log.warning("version %s is gone from the repository without having been forgotten (deleted "
                        "outside fsbackup, or lost); 'fsbackup check' reports it until you accept it with "
                        "--accept-missing", name[:8])

    def vanished_versions(self) -> list[catalog_versions.VanishedVersion]:
        """The versions this machine saw vanish without a forget (not yet accepted)."""
        return catalog_versions.vanished_versions(self.catalog)

    def load_version(self, name: str) -> tuple[dict, wire.CheckedEntries]:
        """(header, entries) of a version object: authenticated whole, its entries streamed and
        checked as they are iterated (CorruptObject naming the object, from either)."""
        obj = version_object(name)

        def decode(data: bytes) -> tuple[dict, wire.CheckedEntries]:
            head, entries = wire.decode_version(self.keys, bytes.fromhex(name), data, obj)
            return wire.check_head(head, obj), wire.checked_entries(entries, obj)
        return get_checked(self.backend, obj, decode)

    def record_version(self, name: str, head: dict, entries: Iterable[list],
                       content_ids: dict[bytes, int] | None = None, version_id: int | None = None) -> int:
        """Record a stored version and its tree in the local index, checked as it is recorded
        (`catalog.versions.record_version`: CorruptObject leaves nothing recorded). Returns the
        version's row id: `version_id` (a rebuild keeps a version's id) or a new one."""
        return catalog_versions.record_version(self.catalog, name, head, entries, content_ids, version_id)

    def close_catalog(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def close(self) -> None:
        self.close_catalog()
        self.backend.close()


def _warn_skipped_version(obj: str) -> None:
    log.warning("remote object %s does not read (damaged); that version is skipped, the others are usable "
                "('fsbackup check' tells more, 'fsbackup repair --remove-damaged' removes it)", obj)


def _bounded_map(pool, fn, items, window: int = 16):
    """(item, fn(item)) in order, with at most `window` calls running or waiting: memory stays
    bounded however many objects there are."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            first, fut = pending.popleft()
            yield first, fut.result()
    while pending:
        first, fut = pending.popleft()
        yield first, fut.result()


INDEX_OBJECTS_PER_TASK = 64    # rebuild_catalog reads index objects in runs of this many
