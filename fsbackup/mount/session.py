"""`fsbackup mount` and `umount`: checks, daemonizing, and the FUSE session's life cycle."""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from typing import Callable

from ..catalog.versions import VersionInfo
from ..errors import FsbackupError, UsageError
from ..private import forget_passphrase, open_private, open_private_folder
from .diskcache import claim_cache_folder

MOUNT_OPTIONS = {"fsname=fsbackup", "subtype=fsbackup", "ro", "default_permissions"}
DEFAULT_REMOTE_CACHE = 1 << 30
# How long a read waits out a storage outage before it fails with EIO: a file manager or a copy
# must get an answer, not hang for the minutes a backup would wait.
MOUNT_RETRY_SECONDS = 30.0
# How often the local index is brought in step with the repository (versions and volumes other
# machines stored or removed; a read whose volume is gone syncs at once). Each sync lists
# versions/ and index/: on B2 two list calls, billed per 1,000 names, so once a minute; a local
# directory (or a NAS) lists cheaply.
SYNC_SECONDS_LOCAL = 30.0
SYNC_SECONDS_REMOTE = 60.0
SYNC_SECONDS_VARIABLE = "FSBACKUP_MOUNT_SYNC_SECONDS"   # overrides both; for the test suite, not users
# Threads that load blocks: on remote storage enough to keep a whole read-ahead window in flight,
# one round trip each; a local directory answers at once, and more threads there only take turns
# at the GIL with the thread that answers the kernel (a cold cat of 256 MiB: a median 0.57 s with
# 4, 0.67 s with 16, five runs each).
FETCH_THREADS_REMOTE = 16
FETCH_THREADS_LOCAL = 4
LOG_FOLDER = "logs"           # --daemon's messages: LOG_FOLDER/LOG_NAME next to the local index
LOG_NAME = "mount.log"
# The kernel's read-ahead on the mount, in KiB: its default, 128, splits a file read in order into
# requests of 128 or 256 KiB; 1024 (FUSE's largest request) makes a quarter as many round trips
# through the mount, for a cold `cat` of a large file about a fifth less time. Only root may set it.
READ_AHEAD_KIB = 1024


class FuseUnavailable(FsbackupError):
    pass


def is_dead_mount(path: str) -> bool:
    """A FUSE mount whose process is gone (killed): every access fails with ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def clean_dead_mount(path: str, out) -> bool:
    """Lazily unmount a dead FUSE mount at `path`, with a note; says whether there was one."""
    if not is_dead_mount(path):
        return False
    check_fuse()
    p = subprocess.run(["fusermount3", "-uz", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise FsbackupError(f"{path} is a mount whose process is gone, and it cannot be unmounted: "
                            f"{p.stderr.strip() or 'fusermount3 failed'}")
    out.note(f"{path} was a mount whose process had died (killed, or its terminal closed); "
             "cleaned it up with a lazy unmount")
    return True


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.lexists(path):
        raise UsageError(f"mountpoint {path} does not exist; create an empty directory first")
    if not os.path.isdir(path):
        raise UsageError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already a mount point; unmount it first (fsbackup umount {path})")
    if os.listdir(path):
        raise UsageError(f"mountpoint {path} is not empty; use an empty directory")
    return path


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("FUSE is not available: /dev/fuse is missing (load the fuse module, or in a "
                              "container pass --device /dev/fuse)")
    if not shutil.which("fusermount3"):
        raise FuseUnavailable("FUSE is not available: fusermount3 is missing (install the fuse3 package)")


def mount(args, out, open_repo, version_filter: Callable[[VersionInfo], bool] | None = None) -> int:
    """Mount the repository `open_repo(args, out)` opens at `args.mountpoint` and serve it until
    unmounted; `version_filter` narrows the versions every part of the mount shows (None: all)."""
    import pyfuse3
    import trio

    from .fuse import Operations, serve
    from .view import RepositoryView

    if args.xattrs == "off" and args.allow_other:
        raise UsageError("--xattrs off with --allow-other would let other users read files that ACLs deny them; "
                         "drop one of the two")
    clean_dead_mount(os.path.abspath(args.mountpoint), out)
    mountpoint = check_mountpoint(args.mountpoint)
    check_fuse()
    repo = open_repo(args, out)            # rebuilds the local index first when it is missing
    forget_passphrase()                    # the keys are unwrapped; the mount may live for weeks
    repo.bound_retries(MOUNT_RETRY_SECONDS)   # from now on: reads
    state_folder = os.path.dirname(repo.catalog_path)
    local = repo.storage_is_local
    cache_size = args.cache_size
    if cache_size is None:   # a local directory is its own cache: copying it to a cache only costs disk
        cache_size = 0 if local else DEFAULT_REMOTE_CACHE
    cache_dir = args.cache_dir or os.path.join(state_folder, "blocks")
    if cache_size > 0:       # a folder the cache may not use is refused here, before going to the background
        os.close(claim_cache_folder(cache_dir))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="fsbackup mount: %(message)s")
    # A retry is a warning line; during an outage every waiting read retries: only with -v.
    logging.getLogger("fsbackup.backends").setLevel(logging.WARNING if args.verbose else logging.ERROR)
    ready_pipe = None
    if args.daemon:
        log_folder = os.path.join(state_folder, LOG_FOLDER)
        log_fd = _open_log(log_folder)
        repo.close_catalog()                 # an SQLite connection must not cross a fork
        ready_pipe = _daemonize(log_fd, os.path.join(log_folder, LOG_NAME))   # returns only in the child
    view = RepositoryView(repo, cache_dir=cache_dir, cache_size=cache_size, sync_seconds=_sync_seconds(local),
                          version_filter=version_filter,
                          fetch_threads=FETCH_THREADS_LOCAL if local else FETCH_THREADS_REMOTE)
    # An xattr request the mount answers ENOSYS once is never made again: `ls -l` then makes no
    # request per entry for SELinux labels and ACLs. Only where that hides nothing, unless asked.
    xattrs = args.xattrs == "on" or (args.xattrs == "auto" and (args.allow_other or view.any_xattrs()))
    options = set(MOUNT_OPTIONS)
    if args.allow_other:
        options.add("allow_other")
    try:
        # (resolved before mounting: once mounted, a look at the mount point is a request to this
        # process, which does not answer until its loop runs)
        resolved = os.path.realpath(mountpoint)
        operations = Operations(view, xattrs, after_init=lambda: _widen_read_ahead(resolved))
        pyfuse3.init(operations, mountpoint, options)
    except RuntimeError as e:
        msg = f"cannot mount at {mountpoint}: {e}"
        if ready_pipe is not None:
            os.write(ready_pipe, ("E" + msg).encode())
            os._exit(1)
        raise FsbackupError(msg) from None

    def ready() -> None:
        if ready_pipe is not None:
            os.write(ready_pipe, b"R")
            os.close(ready_pipe)
        else:
            out.info(f"mounted {len(view.by_name)} version(s) at {mountpoint}")
            out.info(f"browse {mountpoint}/latest; unmount with Ctrl-C or 'fsbackup umount {mountpoint}'")
            sys.stdout.flush()

    try:
        trio.run(serve, operations, ready)
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:  # noqa: BLE001 - already unmounted from outside
            pass
        view.close()
        repo.close()
    return 0


def mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The device number ("major:minor") of the FUSE file system last mounted at `mountpoint`,
    read from `mountinfo` (a stat of the mount point would be a request to the mount itself,
    whose loop is not running yet); None when none is."""
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5 or " - " not in line:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            kind = line.split(" - ", 1)[1].split()[0]
            if point == mountpoint and kind.startswith("fuse") and re.fullmatch(r"\d+:\d+", fields[2]):
                found = fields[2]
    return found


def _widen_read_ahead(mountpoint: str) -> None:
    """Set the kernel's read-ahead on the new mount to READ_AHEAD_KIB, where allowed (root); else
    the kernel's default stays, and reads in order take more, smaller requests. (After the answer
    to the kernel's INIT request, which sets it to the least of both sides' values.)"""
    try:
        device = mount_device(mountpoint)
        if device is not None:
            with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
                f.write(str(READ_AHEAD_KIB))
    except Exception as e:  # noqa: BLE001 - a speed-up only: the mount serves without it
        logging.getLogger(__name__).info("kept the kernel's read-ahead on the mount: %s", e)


def _sync_seconds(local: bool) -> float:
    value = os.environ.get(SYNC_SECONDS_VARIABLE)
    if value:
        return float(value)
    return SYNC_SECONDS_LOCAL if local else SYNC_SECONDS_REMOTE


def _open_log(log_folder: str) -> int:
    """The daemon's log file, opened for appending in `log_folder`, an owner-only folder fsbackup
    creates (next to the local index, which may be in a folder others can write): never
    through a symlink someone planted."""
    folder_fd = open_private_folder(log_folder)
    try:
        return open_private(folder_fd, LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    finally:
        os.close(folder_fd)


def _daemonize(log_fd: int, log_path: str) -> int:
    """Fork; the parent waits until the child's mount is ready (or failed) and exits with its status.
    The child's messages go to `log_fd`, the file at `log_path`."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        message = os.read(read_end, 4096)
        if message.startswith(b"R"):
            print(f"mounted in the background (pid {pid}); messages go to {log_path}", flush=True)
            os._exit(0)
        print(f"fsbackup: error: {message[1:].decode() or 'the mount process died before it was ready'}",
              file=sys.stderr, flush=True)
        os._exit(1)
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    return write_end


def umount(mountpoint: str, out) -> int:
    path = os.path.abspath(mountpoint)
    if clean_dead_mount(path, out):
        return 0
    if not os.path.ismount(path):
        raise UsageError(f"{path} is not mounted")
    p = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise FsbackupError(f"cannot unmount {path}: {p.stderr.strip() or 'fusermount3 failed'} "
                            "(is a program still using it? try 'fusermount3 -uz')")
    return 0
