"""Stream a version's file, or a directory of it as a tar or zip archive, to a binary stream.

Nothing is held whole in memory: a file's blocks are fetched and authenticated by worker threads
a bounded window ahead of the stream (`repository.fetching`, as restore does), and the archive
writers (tarfile in stream mode, zipfile with data descriptors) never seek. Every block is
authenticated, its length and every file's content hash checked, as restore does. Damage stops
the dump with CorruptObject or NoSuchObject: what was written until then stays a truncated
stream (an archive is never closed, so it cannot pass for a complete one), never wrong bytes.

Names in an archive are the entries' paths in the version without the leading '/', as restic's
dump and `fsbackup restore` place them: `dump latest /home/alice` holds home/alice/,
home/alice/notes.txt, ...; `tar -x` recreates the tree below the current directory.
"""
from __future__ import annotations

import os
import stat
import struct
import tarfile
import time
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from ..catalog.tree import Node, VersionTree
from ..codec import wire
from ..errors import CorruptObject, FsbackupError, NoSuchObject, os_error_kind
from ..progress import SILENT, Reporter
from ..repository import Repository
from ..repository.blockcache import BlockCache
from ..repository.fetching import fetched_block, file_fetches

FETCH_WINDOW = 16          # blocks fetched ahead of the stream (as restore's writer)
DUMP_THREADS = 4           # I/O-bound (storage reads): more threads than cores, as restore
# Recently used blocks, for a block several files share (copies, hard links in zip). Smaller than
# restore's: each block is streamed once and not kept, so memory stays the window and this.
CACHE_BYTES = 16 << 20
ZEROS = bytes(1 << 20)          # a hole is streamed in pieces of at most this many zeros
ZIP_EARLIEST = (1980, 1, 1, 0, 0, 0)    # zip's DOS times cover 1980 to 2107
ZIP_LATEST = (2107, 12, 31, 23, 59, 58)


class _Sink:
    """The output stream, cut off after a failure: what an archive writer writes while it is
    dropped (zipfile closes itself when collected, writing a central directory) never reaches the
    stream, so a dump that stopped never ends like a complete archive. A write the stream refuses
    (a full disk) is the domain error it is (NoSpace, PermissionDenied, else FsbackupError), and
    sets `failed`; a reader gone (BrokenPipeError) stays itself, for the caller to treat as no error."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.cut = False
        self.failed = False
        self.written = 0

    def write(self, data) -> int:
        if self.cut:
            return len(data)
        with self._refused_as_domain_error():
            n = self.out.write(data)
        self.written += len(data)
        return n if n is not None else len(data)

    def flush(self) -> None:
        if not self.cut:
            with self._refused_as_domain_error():
                self.out.flush()

    @contextmanager
    def _refused_as_domain_error(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as e:
            self.failed = True
            raise (os_error_kind(e) or FsbackupError)(f"cannot write the dump: {e.strerror}") from None

    def tell(self) -> int:
        return self.written

    def close(self) -> None:
        """(The stream stays open: its owner closes it.)"""


class _FileReader:
    """A file's content as a readable object (what tarfile copies from): `read(n)` takes the
    next bytes from the block stream."""

    def __init__(self, chunks: Iterator[bytes | memoryview]):
        self.chunks = chunks
        self.rest = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        parts, wanted = [], n if n >= 0 else float("inf")
        got = 0
        while got < wanted:
            if not self.rest:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.rest = memoryview(chunk)
            take = self.rest[:int(min(wanted - got, len(self.rest)))]
            self.rest = self.rest[len(take):]
            parts.append(take)
            got += len(take)
        return b"".join(parts)


class Dump:
    """Dumps from one version (`tree`) to `out`, a binary stream that is only written to."""

    def __init__(self, repo: Repository, tree: VersionTree, out: BinaryIO, reporter: Reporter | None = None):
        self.repo = repo
        self.tree = tree
        self.sink = _Sink(out)
        self.reporter = reporter or SILENT
        self.cache = BlockCache(CACHE_BYTES)

    def run(self, path: str, archive: str | None) -> None:
        """Dump the entry at `path`: a regular file's content as it is when `archive` is None,
        else the entry and everything below it as a `archive` ("tar" or "zip") archive."""
        top = self.tree.resolve(path)
        top_path = self.tree.path_of(top)
        self.pool = ThreadPoolExecutor(DUMP_THREADS, thread_name_prefix="fsbackup-dump")
        try:
            if archive is None:
                for chunk in self._content(top, top_path):
                    self.sink.write(chunk)
            elif archive == "tar":
                self._tar(top, top_path)
            else:
                self._zip(top, top_path)
            self.sink.flush()
        except BaseException:
            self.sink.cut = True
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- content ----------------------------------------------------------------------

    def _content(self, node: Node, path: bytes) -> Iterator[bytes | memoryview]:
        """A regular file's bytes in order, fetched FETCH_WINDOW blocks ahead; raises
        CorruptObject or NoSuchObject (naming the file) when a block cannot be had or the
        content does not match what backup recorded. An error comes before the bytes it concerns,
        except a content hash mismatch, found once all are out (each block was authenticated)."""
        where = os.fsdecode(path)
        if node.content is None:
            raise CorruptObject(f"{where}: the local index records no content for it; run 'fsbackup repair'")
        content = self.tree.content(node.content)
        if sum(length for _, length in content.extents) != content.size or content.size != node.size:
            raise CorruptObject(f"{where}: its recorded layout does not add up to its size; run 'fsbackup repair'")
        fetches = file_fetches(self.repo, self.pool, self.cache, content.extents)
        hasher = self.repo.keys.content_hasher()
        ahead: deque[tuple[bytes, int, Future | None]] = deque()
        extents = iter(content.extents)
        in_flight = 0
        try:
            while True:
                while in_flight < FETCH_WINDOW:
                    extent = next(extents, None)
                    if extent is None:
                        break
                    block_id, length = extent
                    if block_id == wire.HOLE_ID:
                        ahead.append((block_id, length, None))
                        continue
                    starter = fetches.get(block_id)
                    if starter is None:
                        raise NoSuchObject(f"block {block_id.hex()[:16]} (not in any stored volume)")
                    ahead.append((block_id, length, starter()))
                    in_flight += 1
                if not ahead:
                    break
                block_id, length, fetched = ahead.popleft()
                if fetched is None:
                    hasher.hole(length)
                    for start in range(0, length, len(ZEROS)):
                        yield memoryview(ZEROS)[:min(len(ZEROS), length - start)]
                    continue
                in_flight -= 1
                data = fetched_block(fetched, block_id)
                if len(data) != length:
                    raise CorruptObject(f"block {block_id.hex()[:16]} is not as long as the file's layout says")
                hasher.data(data)
                yield data
        except (CorruptObject, NoSuchObject) as e:
            raise type(e)(f"{where}: {e}") from None
        if hasher.digest() != content.hash:
            raise CorruptObject(f"{where}: its content does not match the hash recorded at backup")

    def _entries(self, top: Node, top_path: bytes) -> Iterator[tuple[str, Node]]:
        """(archive name, node) of `top` and everything below it, parents first; the root has no
        entry of its own."""
        for path, node in self.tree.walk(top, top_path):
            name = path.strip(b"/")
            if name:
                yield os.fsdecode(name), node

    # ---- tar ----------------------------------------------------------------------------

    def _tar(self, top: Node, top_path: bytes) -> None:
        """A POSIX (PAX) tar stream: GNU tar and bsdtar read every field, `--xattrs` the xattrs."""
        tar = tarfile.open(fileobj=self.sink, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                           encoding="utf-8", errors="surrogateescape")
        first_link: dict[tuple[int, int], str] = {}   # (dev, ino) -> the name archived first for it
        for name, node in self._entries(top, top_path):
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(node.mode)
            info.uid, info.gid = node.uid, node.gid
            info.uname, info.gname = node.user or "", node.grp or ""
            info.pax_headers = _pax_records(node)
            # In the header, a whole second in the octal field's range; the exact time in PAX.
            info.mtime = min(max(node.mtime_ns // 1_000_000_000, 0), 8 ** 11 - 1)
            data = None
            key = (node.dev, node.ino)
            if node.type != "d" and node.nlink > 1 and key in first_link:
                info.type, info.linkname = tarfile.LNKTYPE, first_link[key]
            elif node.type == "f":
                info.type, info.size = tarfile.REGTYPE, node.size
                data = _FileReader(self._content(node, b"/" + os.fsencode(name)))
            elif node.type == "d":
                info.type = tarfile.DIRTYPE
            elif node.type == "l":
                info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(node.target or b"")
            elif node.type == "p":
                info.type = tarfile.FIFOTYPE
            elif node.type in "cb":
                info.type = tarfile.CHRTYPE if node.type == "c" else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
            else:
                continue
            if node.type != "d" and node.nlink > 1:
                first_link.setdefault(key, name)
            tar.addfile(info, data)
        tar.close()

    # ---- zip ----------------------------------------------------------------------------

    def _zip(self, top: Node, top_path: bytes) -> None:
        """A zip stream (data descriptors: nothing is sought back to). Modes and types are in the
        external attributes, a symlink's target is its content (Info-ZIP's convention, which
        unzip and bsdtar follow), times in the extended-timestamp field and owners in the Info-ZIP
        Unix field. Zip has no hard links (each name holds the content), FIFOs or devices (left
        out, with a warning), and names only in UTF-8 (others left out, with a warning)."""
        archive = zipfile.ZipFile(self.sink, "w", zipfile.ZIP_DEFLATED)
        writer = None
        try:
            for name, node in self._entries(top, top_path):
                if node.type not in "fdl":
                    self.reporter.warn(f"/{name}: a zip archive cannot hold a FIFO or device; left out "
                                       "(use --archive tar)")
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    self.reporter.warn(f"/{name}: a zip archive can only hold UTF-8 names; left out "
                                       "(use --archive tar)")
                    continue
                info = zipfile.ZipInfo(name + "/" if node.type == "d" else name, _zip_time(node.mtime_ns))
                info.create_system = 3        # Unix: the external attributes hold st_mode
                info.external_attr = (node.mode & 0xFFFF) << 16 | (0x10 if node.type == "d" else 0)
                info.extra = _zip_extra(node)
                if node.type != "f":
                    info.compress_type = zipfile.ZIP_STORED
                    archive.writestr(info, (node.target or b"") if node.type == "l" else b"")
                    continue
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = node.size        # (decides on zip64 before the data)
                writer = archive.open(info, "w")
                for chunk in self._content(node, b"/" + os.fsencode(name)):
                    writer.write(chunk)
                writer.close()
                writer = None
            archive.close()
        except BaseException:
            # zipfile would close the archive when collected: let it, into the cut sink, now.
            self.sink.cut = True
            try:
                if writer is not None:
                    writer.close()
                archive.close()
            except Exception:  # noqa: BLE001 - the error being raised is the one to report
                pass
            raise


def _exact_seconds(ns: int) -> str:
    """Nanoseconds since the epoch as a PAX time: decimal seconds, exact."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}".rstrip("0").rstrip(".")


def _pax_records(node: Node) -> dict[str, str]:
    """The node's exact times and its xattrs (as GNU tar's `--xattrs` writes them), as PAX records."""
    records = {"mtime": _exact_seconds(node.mtime_ns), "atime": _exact_seconds(node.atime_ns)}
    for name, value in sorted(node.xattrs.items()):
        # (tarfile marks the header hdrcharset=BINARY when a value is not UTF-8: bytes stay bytes)
        records["SCHILY.xattr." + os.fsdecode(name)] = value.decode("utf-8", "surrogateescape")
    return records


def _zip_time(ns: int) -> tuple[int, int, int, int, int, int]:
    """The local date and time of `ns` in zip's range (1980 to 2107), as zipfile wants it."""
    try:
        t = tuple(time.localtime(ns // 1_000_000_000)[:6])
    except (OverflowError, ValueError, OSError):
        t = ZIP_EARLIEST if ns < 0 else ZIP_LATEST
    return min(max(t, ZIP_EARLIEST), ZIP_LATEST)   # type: ignore[return-value]


def _zip_extra(node: Node) -> bytes:
    """Info-ZIP's extended timestamp (0x5455: the mtime in UTC seconds, where it fits 32 bits)
    and Unix owner (0x7875: uid and gid) fields, which unzip restores (owners with -X)."""
    extra = b""
    seconds = node.mtime_ns // 1_000_000_000
    if -2 ** 31 <= seconds < 2 ** 31:
        extra += struct.pack("<HHBi", 0x5455, 5, 1, seconds)
    if node.uid < 2 ** 32 and node.gid < 2 ** 32:
        extra += struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, node.uid, 4, node.gid)
    return extra
