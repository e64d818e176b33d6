"""Domain errors. Each carries the exit code the CLI maps it to (docs/exit-codes.md).

They are raised where a problem is found and mapped once: to an exit code in the CLI
(`cli.main`) and to an errno in the FUSE adapter. The message is one line a user can act on.
"""
import errno

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3          # backup saved, but some source files could not be read
EXIT_CONFLICT = 4          # restore target holds files it would replace (no --overwrite)
EXIT_NO_REPOSITORY = 10
EXIT_WRONG_PASSPHRASE = 11
EXIT_CORRUPT = 12
EXIT_NOT_FOUND = 13
EXIT_LOCKED = 14
EXIT_NO_SPACE = 15
EXIT_PERMISSION = 16
EXIT_BACKEND = 17
EXIT_INTERRUPTED = 130


class FsbackupError(Exception):
    """Base class: a problem with a one-line message and an exit code."""
    exit_code = EXIT_FATAL


class UsageError(FsbackupError):
    exit_code = EXIT_USAGE


class CommandFailed(FsbackupError):
    """A command the user gave backup to run failed: --stdin-from-command or --pre-command (nothing
    was stored), or --post-command."""
    exit_code = EXIT_FATAL


class RepositoryNotFound(FsbackupError):
    exit_code = EXIT_NO_REPOSITORY


class UnsupportedFormat(FsbackupError):
    exit_code = EXIT_NO_REPOSITORY


class WrongPassphrase(FsbackupError):
    exit_code = EXIT_WRONG_PASSPHRASE


class CorruptObject(FsbackupError):
    """An object failed authentication or does not parse. Names the object."""
    exit_code = EXIT_CORRUPT

    def __init__(self, name: str, why: str = "failed authentication"):
        super().__init__(f"remote object {name} is corrupt ({why})")
        self.name = name


class DamageFound(FsbackupError):
    """A command finished and found damaged data, listed above its one-line summary (check, repair,
    restore): what the command itself did is complete."""
    exit_code = EXIT_CORRUPT


class NoSuchObject(FsbackupError):
    """A remote object that should exist does not."""
    exit_code = EXIT_CORRUPT

    def __init__(self, name: str):
        super().__init__(f"remote object {name} is missing")
        self.name = name


class VersionNotFound(FsbackupError):
    exit_code = EXIT_NOT_FOUND


class PathNotFound(FsbackupError):
    exit_code = EXIT_NOT_FOUND


class KeyNotFound(FsbackupError):
    exit_code = EXIT_NOT_FOUND


class Locked(FsbackupError):
    """Another process holds a lock that conflicts with the one asked for (locks.py)."""
    exit_code = EXIT_LOCKED


class NoSpace(FsbackupError):
    exit_code = EXIT_NO_SPACE


class PermissionDenied(FsbackupError):
    exit_code = EXIT_PERMISSION


class BackendError(FsbackupError):
    """The storage failed. `temporary` says whether retrying may help; `retry_after` is how many
    seconds the storage asked us to wait first (None when it did not say)."""
    exit_code = EXIT_BACKEND

    def __init__(self, message: str, temporary: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.temporary = temporary
        self.retry_after = retry_after


class AuthenticationFailed(BackendError):
    """The storage rejected the credentials (e.g. a wrong or revoked B2 application key). Permanent."""
    exit_code = EXIT_PERMISSION

    def __init__(self, message: str):
        super().__init__(message, temporary=False)


class Interrupted(FsbackupError):
    exit_code = EXIT_INTERRUPTED


class SnapshotFailed(FsbackupError):
    """A path could not be snapshotted although a snapshot was asked for (backup --snapshot btrfs or lvm)."""


class TargetConflict(FsbackupError):
    """A restore would replace existing files and --overwrite was not given."""
    exit_code = EXIT_CONFLICT


class ListingContradiction(FsbackupError):
    """A repository listing lacks much of what the local index knows (a folder moved away or not
    mounted): nothing is forgotten or deleted on its word unless the user confirms (--accept-missing)."""
    exit_code = EXIT_CORRUPT


class LocalIndexDamaged(FsbackupError):
    """The local index (a cache of the repository) is damaged: `repair` sets it aside and rebuilds it."""
    exit_code = EXIT_CORRUPT


def exit_code_of(e: BaseException) -> int:
    """The exit code a command ends with when `e` stops it (cli.main's mapping, docs/exit-codes.md)."""
    if isinstance(e, FsbackupError):
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, BrokenPipeError):
        return 0                  # the reader went away (`| head`): what it wanted was written
    return EXIT_FATAL


def os_error_kind(e: OSError) -> type[FsbackupError] | None:
    """The domain error an OSError is, wherever it is met: PermissionDenied (EACCES, EPERM, EROFS),
    NoSpace (ENOSPC, EDQUOT), or None for the rest (each caller words its own message)."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace
    return None
