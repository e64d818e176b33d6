"""Restore all or part of a version into a target directory.

Large files: blocks are fetched, authenticated and decompressed by worker threads, a bounded
window ahead of the writer, and the calling thread writes them in order. Small files are taken in
batches: their contents and block locations are looked up in a few queries, their blocks sorted by
place in their volumes and fetched by worker threads as runs (one range read for many adjacent
blocks), and the calling thread writes the files in that order while later runs arrive. Writing
small files on one thread keeps the interpreter lock from bouncing between threads on every system
call, which cost more than the overlap gained. The calling thread alone uses the local index.

A file is written under a temporary name in its directory (`.fsbackup-restore-<random>`, mode 0600)
and renamed to its own name only once its content is complete and matches the hash recorded at
backup, its owner, mode, xattrs and times already set: a final name never holds a partial file or
wrong metadata, and a file it replaces (--overwrite) stays whole until then. A file whose data
cannot be authenticated, or whose content hash does not match, is reported and its temporary
removed, as on any error or interruption: wrong bytes are never left behind. Only a killed
process leaves its temporary; the next restore into that directory removes it.

Nothing below the target is reached by path (restore often runs as root in folders other users
can write): the target is opened once, and every directory below it relative to its parent's
descriptor with O_NOFOLLOW (`fsutil.DirFds`); every entry is made, replaced, linked and given its
metadata relative to its directory's descriptor, or through its own. A directory swapped for a
symlink while the restore runs is never followed: the restore stops with an error naming it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, TypeVar

from ..catalog.tree import ROOT_ID, Content, Node, VersionTree
from ..codec import wire
from ..errors import (
    CorruptObject,
    FsbackupError,
    NoSpace,
    NoSuchObject,
    PathNotFound,
    PermissionDenied,
    TargetConflict,
    UsageError,
    os_error_kind,
)
from ..fsutil import DirFds, GlobMatcher, at_path, chmod_at, open_dir, outermost, split
from ..progress import SILENT, Reporter
from ..repository import Repository, block_runs
from ..repository.blockcache import BlockCache
from ..repository.fetching import RUN_BYTES, RUN_GAP, fetched_block, file_fetches

T = TypeVar("T")

FETCH_WINDOW = 16          # blocks fetched ahead of the writer
CACHE_BYTES = 64 << 20     # recently used blocks: a block shared by many files is fetched once
SMALL_FILE = 1 << 20       # files up to this size are restored in batches
SMALL_BATCH_FILES = 512    # small files looked up together ...
SMALL_BATCH_BYTES = 16 << 20   # ... and bytes of them fetched ahead of the writer per batch
RESTORE_THREADS = 4
TEMP_PREFIX = b".fsbackup-restore-"     # + 16 hex digits: a file being written
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + rb"[0-9a-f]{16}")
DIR_FDS = 64               # directory descriptors kept open (the small-file batches' directories)
# What --overwrite does with an entry the target already holds where the version has one
# ("refuse", without --overwrite: the restore stops before writing anything, TargetConflict).
OVERWRITE_MODES = ("always", "if-changed", "never")
_TYPE_OF_MODE = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p", stat.S_IFCHR: "c",
                 stat.S_IFBLK: "b"}


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    damaged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    replaced: int = 0          # entries the target held that were replaced (counted in files, dirs, others too)
    unchanged: int = 0         # --overwrite=if-changed: entries left as they were, already like the version's
    kept: int = 0              # --overwrite=never: entries the target held, left in place
    deleted: int = 0           # --delete: entries the version does not hold removed (a folder counts once)
    dry_run: bool = False      # nothing was written: the counts say what a restore would do
    would_write: int = 0       # --dry-run: bytes of the files that would be written

    def as_json(self) -> dict:
        doc = {"files": self.files, "dirs": self.dirs, "others": self.others, "bytes_written": self.bytes_written,
               "duration": round(self.duration, 3), "damaged": self.damaged, "warnings": self.warnings,
               "replaced": self.replaced, "unchanged": self.unchanged, "kept": self.kept, "deleted": self.deleted,
               "dry_run": self.dry_run}
        if self.dry_run:
            doc["would_write"] = self.would_write
        return doc


class _FileJob:
    """A large file being written: under `temp` (None once renamed or removed) in the directory
    open as `dir_fd` (its own descriptor, closed with the job), to become `name` there; `path` is
    its path, for messages."""
    __slots__ = ("path", "rel", "dir_fd", "name", "temp", "node", "fd", "hasher", "expected_hash", "error")

    def __init__(self, path: bytes, rel: bytes, dir_fd: int, temp: bytes, node: Node, fd: int, hasher,
                 expected_hash: bytes):
        self.path, self.rel, self.dir_fd, self.name = path, rel, dir_fd, split(rel)[1]
        self.temp: bytes | None = temp
        self.node, self.fd = node, fd
        self.hasher, self.expected_hash = hasher, expected_hash
        self.error: str | None = None

    def close(self) -> None:
        """Close the file and its directory, and remove the temporary if still there (never
        raises: used on the way out too)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            _remove_quietly(self.temp, self.dir_fd)
            self.temp = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


# The pieces of a large file in the writer's queue, in file order.
class _Data(NamedTuple):
    """A block on its way (`fetched`: its bytes, or the run it comes in, `Repository.fetch_run`),
    written at `offset` once it arrives."""
    job: _FileJob
    offset: int
    fetched: Future
    block_id: bytes

    def data(self) -> bytes:
        """The block's bytes; CorruptObject or NoSuchObject when it cannot be had."""
        return fetched_block(self.fetched, self.block_id)


class _Hole(NamedTuple):
    """A run of zeros the file does not store: only hashed."""
    job: _FileJob
    length: int


class _Failed(NamedTuple):
    """A block that cannot be had: the file is reported, not restored."""
    job: _FileJob
    why: str


class _End(NamedTuple):
    """The file's last piece was queued: check it and put it in place."""
    job: _FileJob


def _is_root() -> bool:
    return os.geteuid() == 0


class Restore:
    """A restore of `tree` (all of it, or the paths `run` is given) into `target`.

    `overwrite`: what to do with an entry the target already holds: False (refuse: stop before
    writing anything, TargetConflict), True or "always" (replace it), "if-changed" (replace it
    unless it is of the same type with the same size and modification time, a symlink with the
    same target; contents are not read), "never" (keep it; a folder kept in a directory's place is
    not entered). A directory the target holds where the version has one is always used.
    `include`/`exclude`: GLOBs (fsutil.GlobMatcher, matched against paths in the version): with
    includes, only matching entries, everything below matching directories, and the directories
    on the way to them are restored; excluded entries are left out with everything below them.
    `delete`: afterwards, remove from each directory restored whole what the version's directory
    does not hold (never in the folders only on the way to a selected path; an excluded name the
    version holds stays). `dry_run`: decide all of it, count and report it, write nothing (the
    target is not even made). `list_each`: report each entry's fate through `reporter.info`.
    """

    def __init__(self, repo: Repository, tree: VersionTree, target: str, overwrite: bool | str = False,
                 reporter: Reporter | None = None, *, include: GlobMatcher = GlobMatcher(()),
                 exclude: GlobMatcher = GlobMatcher(()),
                 delete: bool = False, dry_run: bool = False, list_each: bool = False):
        self.repo = repo
        self.tree = tree
        self.target = os.path.abspath(os.fsencode(target))
        self.overwrite = "always" if overwrite is True else overwrite or "refuse"
        if self.overwrite not in OVERWRITE_MODES + ("refuse",):
            raise UsageError(f"'{overwrite}' is not an overwrite mode ({', '.join(OVERWRITE_MODES)})")
        self.include, self.exclude = include, exclude
        self.delete, self.dry_run, self.list_each = delete, dry_run, list_each
        self.base = b"/"                          # the path in the version that the target stands for
        self.skipped: set[bytes] = set()          # directories kept or left unchanged: not entered
        self.cleaned: list[tuple[bytes, Node]] = []   # directories to rid of what the version lacks (--delete)
        self.reporter = reporter or SILENT
        self.progress = self.reporter.progress()
        self.stats = RestoreStats(dry_run=dry_run)
        self.cache = BlockCache(CACHE_BYTES)
        self.links: dict[tuple[int, int], bytes] = {}   # (dev, ino) -> the relative path restored first for it
        self.queue: deque[_Data | _Hole | _Failed | _End] = deque()   # a large file's pieces, in file order
        self.open_jobs: set[_FileJob] = set()     # large files being written, removed if the restore stops
        self.small_batch: list[tuple[bytes, Node]] = []   # (relative path, node)
        self.small_batch_bytes = 0
        self.small_ready: deque[list] = deque()   # batches looked up and being fetched, oldest first
        self.fresh_dirs: set[bytes] = set()       # directories this restore created (relative paths): nothing
                                                  # to replace in them
        self.warned_xattrs = False
        self.as_root = _is_root()                 # asked once, not for every file

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)
        self.reporter.warn(msg)

    def run(self, paths: list[str] | None = None, base: str | None = None) -> RestoreStats:
        """Restore `paths` (paths in the version; default: all of `base`) below the target.
        `base` (VERSION:SUBPATH; default '/') is the path in the version the target stands for:
        its contents land directly in the target, and relative `paths` are taken inside it; a
        `base` that is not a directory is restored into the target under its own name.
        PathNotFound when a path is not in the version; UsageError when one lies outside `base`."""
        started = time.monotonic()
        if os.path.lexists(self.target) and not os.path.isdir(self.target):
            raise UsageError(f"restore target {os.fsdecode(self.target)} is not a directory")
        if self.delete and not os.path.lexists(self.target):
            raise UsageError(f"restore target {os.fsdecode(self.target)} does not exist, and --delete removes what "
                             "an existing target holds beyond the version; check --target, or leave --delete out")
        selection = self._selection(paths or [], base)
        total = self._check_conflicts(selection)
        if self.dry_run:
            self._plan(selection)
            self.stats.duration = time.monotonic() - started
            return self.stats
        try:
            os.makedirs(self.target, exist_ok=True)
            # The target's own path is followed: it is the user's choice. Nothing below it is.
            target_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise _os_error(e, self.target) from None
        self.dir_fds = DirFds(target_fd, DIR_FDS)
        try:
            self._restore(selection, total)
        finally:
            self.dir_fds.close()
            os.close(target_fd)
        self.stats.duration = time.monotonic() - started
        return self.stats

    def _restore(self, selection, total: int) -> None:
        self.progress.start("restore", total_bytes=total)
        dirs: list[tuple[bytes, Node]] = []
        # I/O-bound (storage reads, file creation): more threads than cores; on remote storage, one
        # per connection the storage suits (S3's 8), so that every range read in flight has one.
        threads = RESTORE_THREADS if self.repo.storage_is_local else max(RESTORE_THREADS, self.repo.connections)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fsbackup-restore")
        try:
            for path, node, whole in self._items(selection):
                rel = self._rel(path)
                try:
                    self._restore_node(rel, node, whole, dirs)
                except OSError as e:
                    raise _os_error(e, self._path(rel)) from None
            self._drain(0)
            self._flush_small()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for job in self.open_jobs:     # stopped by an error or Ctrl-C: no partial file stays
                job.close()
        for rel, node in self.cleaned:     # before the directories' times are set: deleting changes them
            self.dir_fds.trim()
            try:
                self._delete_extras(rel, node, self.dir_fds.get(rel))
            except OSError as e:
                raise _os_error(e, self._path(rel)) from None
        for rel, node in reversed(dirs):   # children first: setting a dir's mtime last keeps it
            self.dir_fds.trim()
            try:
                self._set_metadata(self.dir_fds.get(rel), node, self._path(rel))
            except OSError as e:
                raise _os_error(e, self._path(rel)) from None
        self.progress.finish()

    def _path(self, rel: bytes) -> bytes:
        """The path of an entry in the target, for messages only."""
        return self.target.rstrip(b"/") + b"/" + rel if rel else self.target

    def _rel(self, path: bytes) -> bytes:
        """Where an entry at `path` in the version (at or below `self.base`) goes, relative to the target."""
        return path[len(self.base.rstrip(b"/")):].strip(b"/")

    def _tell(self, what: str, rel: bytes) -> None:
        """With `list_each`: one line saying what becomes (or would become) of an entry."""
        if self.list_each:
            self.reporter.info(f"{'would ' if self.dry_run else ''}{what} {os.fsdecode(self._path(rel))}")

    # ---- what to restore ----------------------------------------------------------------

    def _selection(self, paths: list[str], base: str | None) -> list[tuple[bytes, Node, list[bytes]]]:
        """(path, node, the paths of the directories between `self.base` and it) of each selected
        path, outermost ones only, sorted; sets `self.base`."""
        base_node = self.tree.resolve(base or "/")
        base_path = self.tree.path_of(base_node)
        if base_node.type != "d":               # a file (or symlink...): into the target by its own name
            if paths:
                raise UsageError(f"{base} is not a folder of the version: give PATHs only with a VERSION:SUBPATH "
                                 "that is a folder")
            paths, base_path = [os.fsdecode(base_path)], split(base_path)[0] or b"/"
        self.base = base_path
        tops: dict[bytes, Node] = {}
        for p in paths or [os.fsdecode(base_path)]:
            if base and not p.startswith("/"):  # inside SUBPATH
                p = os.fsdecode(base_path.rstrip(b"/")) + "/" + p
            wanted = os.path.normpath(os.fsencode(p))
            if base_path != b"/" and wanted != base_path and not wanted.startswith(base_path + b"/"):
                raise UsageError(f"{p} is not inside {base}: give PATHs inside the VERSION:SUBPATH restored")
            node = self.tree.resolve(p)
            path = self.tree.path_of(node)
            tops[path] = node
        selection = []
        for path in outermost(tops):
            parts = self._rel(path).split(b"/")[:-1] if path != base_path else []
            way = [self.base.rstrip(b"/") + b"/" + b"/".join(parts[:i + 1]) for i in range(len(parts))]
            selection.append((path, tops[path], way))
        return selection

    def _items(self, selection) -> Iterator[tuple[bytes, Node, bool]]:
        """(path in the version, node, restored whole?) of every entry to restore, parents before
        children: the selected entries that --include/--exclude let through (whole), and the
        directories on the way to them (not whole), each once."""
        on_the_way: set[bytes] = set()            # directories on the way already given
        for top_path, top, way in selection:
            # Directories not yet given, on the way to what this walk selects, innermost last:
            # (path, node or None where not looked up yet).
            pending: list[tuple[bytes, Node | None]] = [(p, None) for p in way if p not in on_the_way]
            stack = [(top_path, top, False)]      # (path, node, inside a selected directory?)
            while stack:
                path, node, inside = stack.pop()
                while pending and not path.startswith(pending[-1][0].rstrip(b"/") + b"/"):
                    pending.pop()                 # a directory the walk left without selecting anything in it
                is_root = node.id == ROOT_ID
                if self.exclude and not is_root and self.exclude.matches(path, node.name):
                    continue
                selected = inside or not self.include or (not is_root and self.include.matches(path, node.name))
                if selected:
                    for way_path, way_node in pending:
                        on_the_way.add(way_path)
                        yield way_path, way_node or self.tree.resolve(way_path), False
                    pending.clear()
                    yield path, node, True
                elif node.type == "d":
                    pending.append((path, node))
                if node.type == "d":
                    # (a child never has a smaller id than its parent: wire.TreeCheck, as VersionTree.walk)
                    kids = [k for k in self.tree.children(node.id) if k.id > node.id]
                    parent = path.rstrip(b"/")
                    stack.extend((parent + b"/" + k.name, k, selected) for k in reversed(kids))

    @contextlib.contextmanager
    def _target_as_it_is(self, look: bool) -> Iterator[DirFds | None]:
        """The target's directories by descriptors, to look at what it holds (`DirFds`), or None
        when it does not exist or `look` is false; closed after. An OSError meanwhile is mapped
        to its error, naming the target."""
        try:
            target_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if look else None
        except FileNotFoundError:
            target_fd = None            # an absent target holds nothing
        except OSError as e:
            raise _os_error(e, self.target) from None
        dir_fds = DirFds(target_fd, DIR_FDS) if target_fd is not None else None
        try:
            yield dir_fds
        except OSError as e:
            raise _os_error(e, self.target) from None
        finally:
            if dir_fds is not None:
                dir_fds.close()
                os.close(dir_fds.base_fd)

    def _check_conflicts(self, selection) -> int:
        """Refuse before writing anything if the target holds files we would replace; sum the bytes."""
        total, conflicts = 0, []
        missing: set[bytes] = set()     # directories absent from the target: their entries are too
        with self._target_as_it_is(look=self.overwrite == "refuse") as dir_fds:
            for path, node, _ in self._items(selection):
                if node.type == "f":
                    total += node.size
                rel = self._rel(path)
                if dir_fds is None or not rel:      # (the target itself is a directory)
                    continue
                parent, name = split(rel)
                if parent in missing:
                    st = None
                else:
                    dir_fds.trim()
                    st = _lstat_or_none(name, dir_fds.get(parent))
                if node.type == "d" and (st is None or not stat.S_ISDIR(st.st_mode)):
                    missing.add(rel)         # (not looked into through a symlink in its place)
                if st is not None and (node.type != "d" or not stat.S_ISDIR(st.st_mode)):
                    conflicts.append(rel)    # a directory replaces a file or symlink only with --overwrite
        if conflicts:
            raise TargetConflict(f"{len(conflicts)} file(s) already exist in the target, e.g. "
                                 f"{os.fsdecode(self._path(conflicts[0]))}; use --overwrite to replace them "
                                 "or pick an empty --target")
        return total

    # ---- writing ------------------------------------------------------------------------

    def _make_room(self, dir_fd: int, rel: bytes, node_type: str) -> None:
        """Clear what stands at `rel` (with --overwrite; else the conflict check found nothing) in
        the way of an entry of `node_type`. A directory stays for a directory. A file, or a hard
        link, replaces anything but a directory by a rename, atomically: what stands there stays
        whole until then."""
        name = split(rel)[1]
        st = _lstat_or_none(name, dir_fd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if node_type != "d":
                self.dir_fds.forget(rel)
                shutil.rmtree(name, dir_fd=dir_fd)     # by descriptors too: never through a symlink
        elif node_type != "f":
            os.unlink(name, dir_fd=dir_fd)

    def _remove_stale_temporaries(self, dir_fd: int) -> None:
        """Remove the temporary files a killed restore left in the directory open as `dir_fd`, one
        that existed before. Only a tidy-up: a directory that cannot be listed is left as it is."""
        try:
            with os.scandir(dir_fd) as entries:
                stale = [os.fsencode(e.name) for e in entries if TEMP_NAME.fullmatch(os.fsencode(e.name))
                         and e.is_file(follow_symlinks=False)]
        except OSError:
            return
        for name in stale:
            _remove_quietly(name, dir_fd)

    def _restore_node(self, rel: bytes, node: Node, whole: bool, dirs: list) -> None:
        if not rel:                      # the root of the selection: the target itself
            self._remove_stale_temporaries(self.dir_fds.base_fd)
            dirs.append((rel, node))
            self.stats.dirs += 1
            self._tell("restore", rel)
            if whole and self.delete:
                self.cleaned.append((rel, node))
            return
        parent, name = split(rel)
        if parent in self.skipped or self._device_skipped(rel, node):
            if node.type == "d":
                self.skipped.add(rel)
            return
        self.dir_fds.trim()
        parent_fd = self.dir_fds.get(parent)
        in_fresh_dir = parent in self.fresh_dirs
        fate = "new" if in_fresh_dir else self._fate(name, parent_fd, node)
        if fate in ("unchanged", "kept"):
            self._leave(rel, node, fate)
            return
        self.stats.replaced += fate == "replace"
        self._tell("replace" if fate == "replace" else "restore", rel)
        if not in_fresh_dir:
            self._make_room(parent_fd, rel, node.type)
        if node.type == "d":
            if in_fresh_dir or _lstat_or_none(name, parent_fd) is None:
                # A name someone made meanwhile is an error here (EEXIST), never a directory to use.
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.dir_fds.add(rel, open_dir(name, parent_fd))
                self.fresh_dirs.add(rel)
            else:
                self._remove_stale_temporaries(self.dir_fds.get(rel))
                if whole and self.delete:
                    self.cleaned.append((rel, node))
            dirs.append((rel, node))
            self.stats.dirs += 1
            return
        if node.nlink > 1:
            key = (node.dev, node.ino)
            if key in self.links:
                self._drain(0)   # the first link's content must be in place first
                self._flush_small()
                first = self.links.get(key)    # dropped if its content could not be restored
                if first is not None:
                    self._link(first, rel)
                    self.stats.files += node.type == "f"
                    return
                parent_fd = self.dir_fds.get(parent)    # (writing the files trimmed the descriptors)
            self.links[key] = rel
        if node.type == "f":
            self._restore_file(rel, node)
            return
        if node.type == "l":
            assert node.target is not None      # every link has one (wire.TreeCheck, at sync)
            os.symlink(node.target, name, dir_fd=parent_fd)
        elif node.type == "p":
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
        elif node.type in "cb":
            os.mknod(name, stat.S_IFMT(node.mode) | 0o600, node.rdev, dir_fd=parent_fd)
        else:
            return
        self._set_metadata((parent_fd, name), node, self._path(rel))
        self.stats.others += 1

    def _device_skipped(self, rel: bytes, node: Node) -> bool:
        """Whether `node` is a device node this restore cannot make (not root): then it says so."""
        if node.type in ("c", "b") and not self.as_root:
            self.warn(f"{os.fsdecode(self._path(rel))}: device nodes can only be restored as root; skipped")
            return True
        return False

    def _fate(self, name: bytes, dir_fd: int, node: Node) -> str:
        """What becomes of the entry `name` in the directory open as `dir_fd`, where the version
        has `node`: "new" (nothing stands there), "merge" (a directory where the version has one:
        used as it is), "replace", or, by --overwrite, "unchanged" (if-changed: of the same type,
        size and modification time; a symlink to the same target; contents are not compared) or
        "kept" (never). Without --overwrite the conflict check refused anything in the way; what
        appears there meanwhile is replaced."""
        st = _lstat_or_none(name, dir_fd)
        if st is None:
            return "new"
        kind = _TYPE_OF_MODE.get(stat.S_IFMT(st.st_mode))
        if node.type == "d" and kind == "d":
            return "merge"
        if self.overwrite == "never":
            return "kept"
        if self.overwrite == "if-changed" and kind == node.type and _same_as(st, name, dir_fd, node):
            return "unchanged"
        return "replace"

    def _leave(self, rel: bytes, node: Node, fate: str) -> None:
        """Count and report an entry left as the target holds it; a directory's place is not entered."""
        if fate == "unchanged":
            self.stats.unchanged += 1
            self._tell("leave unchanged", rel)
        else:
            self.stats.kept += 1
            self._tell("keep", rel)
        if node.type == "d":
            self.skipped.add(rel)

    def _delete_extras(self, rel: bytes, node: Node, dir_fd: int) -> None:
        """--delete: remove (with --dry-run, only count and report) what the directory open as
        `dir_fd`, restored at `rel` from `node`, holds and the version's directory does not. A
        symlink is removed, never followed; a folder is removed by descriptors (shutil.rmtree
        with dir_fd checks that what it opens is what it looked at)."""
        wanted = {k.name for k in self.tree.children(node.id)}
        with os.scandir(dir_fd) as entries:
            extras = sorted(n for n in (os.fsencode(e.name) for e in entries)
                            if n not in wanted and not TEMP_NAME.fullmatch(n))
        for name in extras:
            self.stats.deleted += 1
            extra = rel + b"/" + name if rel else name
            self._tell("delete", extra)
            if self.dry_run:
                continue
            st = _lstat_or_none(name, dir_fd)
            try:
                if st is not None and stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=dir_fd)
                elif st is not None:
                    os.unlink(name, dir_fd=dir_fd)
            except OSError as e:
                where = os.fsdecode(self._path(extra))
                if os_error_kind(e) is PermissionDenied:
                    raise PermissionDenied(f"permission denied deleting {where}: {e.strerror}") from None
                # (rmtree says so, with no errno, when a symlink stands where it looked at a folder)
                raise FsbackupError(f"cannot delete {where}: {e.strerror or 'it was replaced while deleting'}; "
                                    "nothing was followed there") from None

    def _plan(self, selection) -> None:
        """--dry-run: decide every entry as `_restore_node` does (`_fate`), count and report it,
        and write nothing. The target is looked at by descriptors as a restore would; where it
        lacks a directory (or one would be made anew), nothing below it exists yet."""
        made: set[bytes] = set()         # directories the restore would make: empty
        with self._target_as_it_is(look=True) as dir_fds:
            for path, node, whole in self._items(selection):
                rel = self._rel(path)
                parent, name = split(rel)
                if rel and (parent in self.skipped or self._device_skipped(rel, node)):
                    if node.type == "d":
                        self.skipped.add(rel)
                    continue
                if not rel:
                    fate = "new" if dir_fds is None else "merge"
                elif dir_fds is None or parent in made:
                    fate = "new"
                else:
                    dir_fds.trim()
                    fate = self._fate(name, dir_fds.get(parent), node)
                if fate in ("unchanged", "kept"):
                    self._leave(rel, node, fate)
                    continue
                self.stats.replaced += fate == "replace"
                self._tell("replace" if fate == "replace" else "restore", rel)
                if node.type == "d":
                    self.stats.dirs += 1
                    if fate != "merge":
                        made.add(rel)
                    elif whole and self.delete:
                        assert dir_fds is not None
                        dir_fds.trim()
                        self._delete_extras(rel, node, dir_fds.get(rel))
                elif node.type == "f":
                    self.stats.files += 1
                    self.stats.would_write += node.size
                else:
                    self.stats.others += 1

    def _restore_file(self, rel: bytes, node: Node) -> None:
        if node.size <= SMALL_FILE:
            self.small_batch.append((rel, node))
            self.small_batch_bytes += node.size
            if len(self.small_batch) >= SMALL_BATCH_FILES or self.small_batch_bytes >= SMALL_BATCH_BYTES:
                self._start_small_batch()
                while len(self.small_ready) > 1:     # one batch fetched ahead of the one being written
                    self._write_small_batch(self.small_ready.popleft())
            return
        assert node.content is not None          # every file has one (wire.TreeCheck, at sync)
        content = self.tree.content(node.content)
        dir_fd = os.dup(self.dir_fds.get(split(rel)[0]))    # the job's own: it outlives trims
        try:
            temp, fd = _create_temporary(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        job = _FileJob(self._path(rel), rel, dir_fd, temp, node, fd, self.repo.keys.content_hasher(), content.hash)
        self.open_jobs.add(job)
        if content.extents and content.extents[-1][0] == wire.HOLE_ID:
            os.ftruncate(fd, content.size)   # holes stay holes: we write only data extents
        offset = 0
        fetches = file_fetches(self.repo, self.pool, self.cache, content.extents)
        for block_id, length in content.extents:
            if block_id == wire.HOLE_ID:
                self.queue.append(_Hole(job, length))
            else:
                try:
                    fetched = fetches[block_id]()
                except NoSuchObject as e:
                    self.queue.append(_Failed(job, str(e)))
                except KeyError:             # (no run: the catalog knows no stored volume holding it)
                    self.queue.append(_Failed(job, f"block {block_id.hex()[:16]} (not in any stored volume)"))
                else:
                    self.queue.append(_Data(job, offset, fetched, block_id))
                    self._drain(FETCH_WINDOW)
            offset += length
        self.queue.append(_End(job))
        self._drain(FETCH_WINDOW)

    def _flush_small(self) -> None:
        """Restore every small file taken so far."""
        if self.small_batch:
            self._start_small_batch()
        while self.small_ready:
            self._write_small_batch(self.small_ready.popleft())

    def _start_small_batch(self) -> None:
        """Look the batch up and start fetching its blocks, as runs in volume order."""
        batch, self.small_batch, self.small_batch_bytes = self.small_batch, [], 0
        contents = self.tree.contents(sorted({node.content for _, node in batch if node.content is not None}))

        def content_of(node: Node) -> Content | None:
            return contents.get(node.content) if node.content is not None else None
        block_ids = {bid for c in contents.values() for bid, _ in c.extents if bid != wire.HOLE_ID}
        sources: dict[bytes, object] = {}          # block id -> its bytes, or the Future of its run
        for bid in block_ids:
            data = self.cache.peek(bid)
            if data is not None:
                sources[bid] = data
        locations = self.repo.block_locations(bid for bid in block_ids if bid not in sources)
        by_place = sorted(locations.items(), key=lambda item: (item[1].volume, item[1].offset))
        for run in block_runs(by_place, RUN_BYTES, RUN_GAP):
            self._submit_run(run, sources)

        def place(item):
            content = content_of(item[1])
            first = next((bid for bid, _ in content.extents if bid != wire.HOLE_ID), None) if content else None
            loc = locations.get(first)
            return (loc.volume, loc.offset) if loc else ("", 0)
        batch.sort(key=place)                      # the order the runs arrive in
        self.small_ready.append([(rel, node, content_of(node), sources) for rel, node in batch])

    def _submit_run(self, run: list, sources: dict) -> None:
        fut = self.pool.submit(self.repo.fetch_run, run)
        for bid, _ in run:
            sources[bid] = fut

    def _write_small_batch(self, batch: list) -> None:
        for rel, node, content, sources in batch:
            try:
                written, error = self._write_small(rel, node, content, sources)
            except OSError as e:
                raise _os_error(e, self._path(rel)) from None
            self.stats.bytes_written += written
            self.progress.advance(nbytes=written, files=1)
            if error is None:
                self.stats.files += 1
            else:
                self.stats.damaged.append(os.fsdecode(self._path(rel)))
                self.warn(f"{os.fsdecode(self._path(rel))} not restored: {error}")

    def _block(self, bid: bytes, sources: dict) -> bytes:
        source = sources.get(bid)
        if source is None:
            raise NoSuchObject(f"block {bid.hex()[:16]} (not in any stored volume)")
        if isinstance(source, bytes):
            return source
        data = source.result()[bid]
        if not isinstance(data, bytes):
            raise data
        self.cache.put(bid, data)
        return data

    def _write_small(self, rel: bytes, node: Node, content, sources: dict) -> tuple[int, str | None]:
        """One small file, whole. Returns (bytes written, why it was left out or None)."""
        if content is None:
            raise PathNotFound(f"content {node.content} is missing from the local index; run 'fsbackup repair'")
        hasher = self.repo.keys.content_hasher()
        written, error, offset = 0, None, 0
        dest = self._path(rel)
        self.dir_fds.trim()
        parent, name = split(rel)
        dir_fd = self.dir_fds.get(parent)      # (valid to the end: nothing here trims)
        temp: bytes | None
        temp, fd = _create_temporary(dir_fd)
        try:
            try:
                if content.extents and content.extents[-1][0] == wire.HOLE_ID:
                    os.ftruncate(fd, content.size)
                for block_id, length in content.extents:
                    if block_id == wire.HOLE_ID:
                        hasher.hole(length)
                    else:
                        try:
                            data = self._block(block_id, sources)
                        except (CorruptObject, NoSuchObject) as e:
                            error = str(e)
                            break
                        _pwrite_all(fd, data, offset, dest)
                        hasher.data(data)
                        written += len(data)
                    offset += length
                if error is None and hasher.digest() != content.hash:
                    error = "its content does not match the hash recorded at backup"
                if error is None:
                    # Through the open descriptor: no path lookups, and the times are set after the last write.
                    self._set_metadata(fd, node, dest)
            finally:
                os.close(fd)
            if error is None:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                temp = None
        finally:
            if temp is not None:
                _remove_quietly(temp, dir_fd)
        if error is not None:
            self._forget_link(node, rel)
        return written, error

    def _drain(self, keep: int) -> None:
        """Write finished items in order until at most `keep` fetches are in flight."""
        while self.queue and (len(self.queue) > keep or not isinstance(self.queue[0], _Data)
                              or self.queue[0].fetched.done()):
            item = self.queue.popleft()
            job = item.job
            if isinstance(item, _Data):
                try:
                    data = item.data()
                except (CorruptObject, NoSuchObject) as e:
                    job.error = job.error or str(e)
                    continue
                if job.error is None:
                    _pwrite_all(job.fd, data, item.offset, job.path)
                    job.hasher.data(data)
                    self.stats.bytes_written += len(data)
                    self.progress.advance(nbytes=len(data))
            elif isinstance(item, _Hole):
                job.hasher.hole(item.length)
            elif isinstance(item, _Failed):
                job.error = job.error or item.why
            else:
                self._finish_file(job)

    def _finish_file(self, job: _FileJob) -> None:
        """Rename a complete, checked file into place, its metadata set first; or report it and
        remove its temporary. Until it is done, the job stays open: if this raises, `run` removes it."""
        if job.error is None and job.hasher.digest() != job.expected_hash:
            job.error = "its content does not match the hash recorded at backup"
        if job.error is not None:
            job.close()
            self.open_jobs.discard(job)
            self._forget_link(job.node, job.rel)
            self.stats.damaged.append(os.fsdecode(job.path))
            self.warn(f"{os.fsdecode(job.path)} not restored: {job.error}")
            return
        self._set_metadata(job.fd, job.node, job.path)
        os.close(job.fd)
        job.fd = -1
        assert job.temp is not None               # a job is renamed once, here
        os.rename(job.temp, job.name, src_dir_fd=job.dir_fd, dst_dir_fd=job.dir_fd)
        job.temp = None
        job.close()
        self.open_jobs.discard(job)
        self.stats.files += 1
        self.progress.advance(files=1)

    def _forget_link(self, node: Node, rel: bytes) -> None:
        """`rel` was not restored: its other hard links must not link to it (nor, with
        --overwrite, to the old file still there); the next one is restored on its own."""
        if node.nlink > 1 and self.links.get((node.dev, node.ino)) == rel:
            del self.links[(node.dev, node.ino)]

    def _link(self, first: bytes, rel: bytes) -> None:
        """Make `rel` a hard link to `first` (the entry itself, even a symlink), replacing what
        stands there by a rename."""
        (first_parent, first_name), (parent, name) = split(first), split(rel)
        first_fd, dir_fd = self.dir_fds.get(first_parent), self.dir_fds.get(parent)
        temp, _ = _at_temporary_name(lambda temp: os.link(first_name, temp, src_dir_fd=first_fd,
                                                          dst_dir_fd=dir_fd, follow_symlinks=False))
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _remove_quietly(temp, dir_fd)
            raise

    def _set_metadata(self, entry: int | tuple[int, bytes], node: Node, path: bytes) -> None:
        """Give `entry` the owner, mode, xattrs and times of `node`. `entry` is a descriptor open
        on a file or directory, or (a directory's descriptor, a name in it) for a symlink, FIFO or
        device, which are never opened: then nothing follows a symlink (a FIFO or device swapped
        for one meanwhile fails with ELOOP). `path` names it in messages."""
        if isinstance(entry, int):
            def chown(): os.chown(entry, node.uid, node.gid)
            def chmod(): os.chmod(entry, stat.S_IMODE(node.mode))
            def setxattr(name, value): os.setxattr(entry, name, value)
            def utime(): os.utime(entry, ns=(node.atime_ns, node.mtime_ns))
        else:
            dir_fd, entry_name = entry
            def chown(): os.chown(entry_name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            def chmod(): chmod_at(entry_name, stat.S_IMODE(node.mode), dir_fd)
            def setxattr(name, value): os.setxattr(at_path(dir_fd, entry_name), name, value, follow_symlinks=False)
            def utime(): os.utime(entry_name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        if self.as_root:
            try:
                chown()
            except OSError as e:
                self.warn(f"cannot set owner of {os.fsdecode(path)}: {e.strerror}")
        if node.type != "l":
            chmod()      # after chown, which clears set-user-id bits
        for name, value in node.xattrs.items():
            try:
                setxattr(name, value)
            except OSError as e:
                if not self.warned_xattrs:
                    self.warned_xattrs = True
                    self.warn(f"cannot set extended attribute {os.fsdecode(name)} on {os.fsdecode(path)}: "
                              f"{e.strerror} (further xattr errors not shown)")
        utime()


def _at_temporary_name(create: Callable[[bytes], T]) -> tuple[bytes, T]:
    """(a new temporary name, what `create` returned making it); a name `create` finds taken
    (FileExistsError) is replaced by another."""
    while True:
        temp = TEMP_PREFIX + secrets.token_hex(8).encode()
        try:
            return temp, create(temp)
        except FileExistsError:
            continue


def _create_temporary(dir_fd: int) -> tuple[bytes, int]:
    """A new empty file, mode 0600, under a temporary name in the directory open as `dir_fd`: (its
    name, a descriptor open for writing). O_EXCL and O_NOFOLLOW: never an existing file, nor
    through a symlink."""
    return _at_temporary_name(lambda temp: os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))


def _lstat_or_none(name: bytes, dir_fd: int) -> os.stat_result | None:
    """What stands at `name` in `dir_fd` (not followed), or None where nothing can be found."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _same_as(st: os.stat_result, name: bytes, dir_fd: int, node: Node) -> bool:
    """Whether the entry `name` in `dir_fd` (whose lstat is `st`, of `node`'s type) counts as
    unchanged for --overwrite=if-changed: a file of the same size and modification time, a
    symlink to the same target, a device with the same number, a FIFO."""
    if node.type == "f":
        return st.st_size == node.size and st.st_mtime_ns == node.mtime_ns
    if node.type == "l":
        try:
            return os.readlink(name, dir_fd=dir_fd) == node.target
        except OSError:
            return False
    if node.type in ("c", "b"):
        return st.st_rdev == node.rdev
    return True


def _remove_quietly(name: bytes, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _pwrite_all(fd: int, data: bytes, offset: int, path: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as e:
            raise _os_error(e, path) from None
        view, offset = view[n:], offset + n


def _os_error(e: OSError, path: bytes) -> FsbackupError:
    where = os.fsdecode(path)
    kind = os_error_kind(e)
    if kind is NoSpace:
        return NoSpace(f"no space left on device while restoring {where}; free space or choose another --target")
    if kind is PermissionDenied:
        return PermissionDenied(f"permission denied writing {where}: {e.strerror}")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return FsbackupError(f"cannot restore {where}: it or a directory on its way was replaced (by a symlink "
                             "or another file) while restoring; nothing is followed there")
    return FsbackupError(f"cannot restore {where}: {e.strerror}")
