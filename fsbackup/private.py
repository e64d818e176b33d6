"""What belongs to the user who runs fsbackup alone: its local state (the index, the mount's block
cache and log, the backup's spool) and its passphrase.

fsbackup often runs as root, next to folders other users can write (an `--index` in /tmp, a
shared cache folder). Its own folders are therefore opened without following symlinks and must
belong to the user who runs it; files in them are created 0600 and opened with O_NOFOLLOW, so a
symlink planted by someone else makes fsbackup refuse, never write through it.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from typing import BinaryIO

from .errors import FsbackupError, PermissionDenied, os_error_kind

PASSPHRASE_VARIABLE = "FSBACKUP_PASSWORD"


def make_private_folder(folder: str) -> None:
    """Create `folder` (and missing parents) readable by the owner only. A folder that already
    exists is left as it is: it may be one the user chose and shares (--index /tmp/x.sqlite
    must not lock others out of /tmp); the files fsbackup puts in it are created 0600."""
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)      # makedirs' mode is filtered by the umask


def _os_error(e: OSError, what: str) -> FsbackupError:
    """The domain error for an OSError met on `what` (a folder or file of the local state)."""
    return (os_error_kind(e) or FsbackupError)(f"cannot use {what}: {e.strerror}")


def open_owned_folder(folder: str) -> int:
    """`folder` as a directory file descriptor (O_DIRECTORY | O_NOFOLLOW; the caller closes it),
    created 0700 (with missing parents) when it does not exist. Its mode is left as it is.

    Raises PermissionDenied when `folder` is a symlink or belongs to another user: such a folder
    lets that user swap what fsbackup writes or deletes in it."""
    if not os.path.lexists(folder):
        try:
            make_private_folder(os.path.dirname(os.path.abspath(folder)))
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass                     # made meanwhile: it is checked below like any other
        except OSError as e:
            raise _os_error(e, folder) from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder):
            raise PermissionDenied(f"{folder} is a symlink; fsbackup keeps its local state only in "
                                   "folders it owns: remove the symlink") from None
        raise _os_error(e, folder) from None
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise PermissionDenied(f"{folder} belongs to another user (uid {owner}); fsbackup keeps its local state "
                               "only in folders it owns: remove it, or choose another folder")
    return fd


def open_private_folder(folder: str) -> int:
    """Like `open_owned_folder`, and the folder is made owner-only (0700): for the folders
    fsbackup names itself (the mount's log folder, the backup's spool folder)."""
    fd = open_owned_folder(folder)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except OSError as e:
        os.close(fd)
        raise _os_error(e, folder) from None
    return fd


def open_private(folder_fd: int, name: str, flags: int) -> int:
    """Open `name` in the folder `folder_fd` with `flags` plus O_NOFOLLOW and O_CLOEXEC; a file it
    creates is 0600. A symlink at `name` raises PermissionDenied instead of being followed."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PermissionDenied(f"{name} in {_folder_name(folder_fd)} is a symlink; fsbackup does not "
                                   "follow symlinks in its own folders: remove it") from None
        raise _os_error(e, f"{name} in {_folder_name(folder_fd)}") from None


def _folder_name(folder_fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{folder_fd}")
    except OSError:
        return "fsbackup's folder"


def private_temp_file(folder: str) -> BinaryIO:
    """A new temporary file (read and write, binary) in `folder`, an owner-only folder fsbackup
    creates (see `open_private_folder`). The file has no name (O_TMPFILE), or, where the file
    system cannot make one, a random name removed at once: no other process can open or replace
    it, and it vanishes when closed, also after a crash."""
    folder_fd = open_private_folder(folder)
    try:
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise _os_error(e, folder) from None
            name = ".tmp-" + secrets.token_hex(8)
            fd = open_private(folder_fd, name, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            os.unlink(name, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    return os.fdopen(fd, "w+b")


def forget_passphrase() -> None:
    """Remove FSBACKUP_PASSWORD from the environment, for a process that lives on after it opened
    the repository (the mount): from os.environ and the C environment (what child processes
    inherit), and overwrite it in the initial environment block, which /proc/PID/environ shows
    and `unsetenv` leaves in place. What stays: the unwrapped keys in the process's memory (a
    mount needs them), readable like /proc/PID/environ only by root and the same user."""
    value = os.environb.get(PASSPHRASE_VARIABLE.encode())
    if value is None:
        return
    os.environ.pop(PASSPHRASE_VARIABLE, None)       # also unsetenv()
    _overwrite_initial_environment(PASSPHRASE_VARIABLE.encode() + b"=" + value)


def _overwrite_initial_environment(assignment: bytes) -> None:
    """Overwrite `assignment` (NAME=value) with zero bytes where the kernel keeps the process's
    initial environment (between env_start and env_end of /proc/self/stat). Only after unsetenv:
    the C environment no longer points there. Does nothing where that block cannot be found."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/self/environ", "rb") as f:
            initial = f.read()
    except OSError:
        return
    env_start = int(fields[50 - 3]) if len(fields) > 50 - 3 else 0   # field 50 of proc(5), counting from 1
    if not env_start:
        return
    offset = 0
    for item in initial.split(b"\0"):
        if item == assignment:
            ctypes.memset(env_start + offset, 0, len(item))
        offset += len(item) + 1
