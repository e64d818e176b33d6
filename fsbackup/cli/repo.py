"""Opening the repository for a command: the passphrase, the storage, the lock it holds."""
from __future__ import annotations

import getpass
import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from .. import repository
from ..errors import UsageError, WrongPassphrase
from ..repository import Repository
from ..repository.locks import DEFAULT_WAIT, LockInfo, Waiting, duration_text, hold_lock
from .output import Output


def _not_empty(passphrase: bytes) -> bytes:
    """A new passphrase, refused when empty: an empty one protects nothing."""
    if not passphrase:
        raise UsageError("an empty passphrase is not allowed; choose one that protects the repository")
    return passphrase


def _read_passphrase_file(path: str) -> bytes:
    """The passphrase in file `path` (--password-file, --new-password-file): its first line."""
    try:
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n")
    except OSError as e:
        raise UsageError(f"cannot read password file {path}: {e.strerror}") from None


def _ask_twice(prompt: str, again: str) -> bytes:
    passphrase = os.fsencode(getpass.getpass(prompt))
    if os.fsencode(getpass.getpass(again)) != passphrase:
        raise UsageError("the passphrases do not match")
    return passphrase


def _run_passphrase_command(cmd: str, what: str) -> bytes:
    """The standard output of the shell command line `cmd` (run by /bin/sh -c), its trailing CR
    and LF removed; `what` names it in the error when it fails."""
    res = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE)
    if res.returncode != 0:
        raise UsageError(f"{what} failed with exit code {res.returncode}")
    return res.stdout.rstrip(b"\r\n")


def get_passphrase(args, new: bool = False) -> bytes:
    """The passphrase from --password-file, FSBACKUP_PASSWORD, FSBACKUP_PASSWORD_COMMAND (a shell
    command line, run by /bin/sh -c; its stdout is the passphrase) or the terminal (asked twice
    when `new`). A `new` one (init) must not be empty; opening a repository
    with an empty one is only a wrong passphrase."""
    if args.password_file:
        passphrase = _read_passphrase_file(args.password_file)
    elif "FSBACKUP_PASSWORD" in os.environ:
        passphrase = os.fsencode(os.environ["FSBACKUP_PASSWORD"])
    elif os.environ.get("FSBACKUP_PASSWORD_COMMAND"):
        passphrase = _run_passphrase_command(os.environ["FSBACKUP_PASSWORD_COMMAND"], "FSBACKUP_PASSWORD_COMMAND")
    elif not sys.stdin.isatty():
        raise UsageError("no passphrase: set FSBACKUP_PASSWORD or FSBACKUP_PASSWORD_COMMAND, or use --password-file")
    elif new:
        passphrase = _ask_twice("new passphrase: ", "repeat passphrase: ")
    else:
        passphrase = os.fsencode(getpass.getpass("passphrase: "))
    return _not_empty(passphrase) if new else passphrase


def get_source_passphrase(args) -> bytes:
    """The source repository's passphrase (copy): from --from-password-file, FSBACKUP_FROM_PASSWORD,
    --from-password-command or the terminal, read as `get_passphrase` reads the destination's."""
    if args.from_password_file:
        return _read_passphrase_file(args.from_password_file)
    if "FSBACKUP_FROM_PASSWORD" in os.environ:
        return os.fsencode(os.environ["FSBACKUP_FROM_PASSWORD"])
    if args.from_password_command:
        return _run_passphrase_command(args.from_password_command, "--from-password-command")
    if not sys.stdin.isatty():
        raise UsageError("no passphrase for the source repository: set FSBACKUP_FROM_PASSWORD, or use "
                         "--from-password-file or --from-password-command")
    return os.fsencode(getpass.getpass("source repository passphrase: "))


def get_new_passphrase(args) -> bytes:
    """The new passphrase of 'key passwd' and 'key add' (never empty)."""
    if getattr(args, "new_password_file", None):
        passphrase = _read_passphrase_file(args.new_password_file)
    elif "FSBACKUP_NEW_PASSWORD" in os.environ:
        passphrase = os.fsencode(os.environ["FSBACKUP_NEW_PASSWORD"])
    elif sys.stdin.isatty():
        passphrase = _ask_twice("new passphrase: ", "repeat new passphrase: ")
    else:
        raise UsageError("no new passphrase: set FSBACKUP_NEW_PASSWORD or use --new-password-file")
    return _not_empty(passphrase)


def repo_url(args) -> str:
    url = args.repo or os.environ.get("FSBACKUP_REPOSITORY")
    if not url:
        raise UsageError("no repository given: use --repo URL or set FSBACKUP_REPOSITORY")
    return url


def open_storage(args, url: str | None = None):
    """The storage for --repo (or `url`: copy's --from-repo), with the storage options,
    --connections when given, and the bandwidth limits --limit-upload and --limit-download (shared
    by every connection of the process)."""
    with _backend_settings(args):
        return repository.open_storage(url or repo_url(args), args.connections, args.limit_upload,
                                       args.limit_download)


# The options of one kind of storage and the variables they stand for, which its backend reads
# (backends/sftp.py, backends/s3.py; named here, as the command line reaches storage only through
# the repository layer).
BACKEND_OPTION_VARIABLES = {"sftp_identity": "FSBACKUP_SFTP_IDENTITY", "sftp_known_hosts": "FSBACKUP_SFTP_KNOWN_HOSTS",
                            "s3_endpoint": "FSBACKUP_S3_ENDPOINT", "s3_region": "FSBACKUP_S3_REGION",
                            "s3_path_style": "FSBACKUP_S3_PATH_STYLE"}


@contextmanager
def _backend_settings(args) -> Iterator[None]:
    """The storage options given (--sftp-*, --s3-*), handed to the backend as the variables they
    stand for while it opens: it reads them once, and keeps them for reconnecting and for the
    client a forked child makes."""
    given = {var: "1" if value is True else value for option, var in BACKEND_OPTION_VARIABLES.items()
             if (value := getattr(args, option, None))}
    saved = {var: os.environ.get(var) for var in given}
    os.environ.update(given)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def open_repo(args, out: Output, sync_catalog: bool = True) -> Repository:
    """The repository of --repo, opened with the passphrase; the caller closes it (the mount, whose
    life cycle is its own). `sync_index`: bring the local index in step with the repository."""
    backend = open_storage(args)
    repo = Repository.open(backend, get_passphrase(args), args.index)
    repo.accept_missing = args.accept_missing
    if sync_catalog:
        repo.sync_catalog(out.progress())
    return repo


def open_source_repo(args) -> Repository:
    """The repository of --from-repo (copy's source), opened with its own passphrase, its local
    index not yet brought in step; the caller closes it. It takes no lock: copy only reads it."""
    backend = open_storage(args, args.from_repo)
    try:
        repo = Repository.open(backend, get_source_passphrase(args))
    except WrongPassphrase:
        backend.close()
        raise WrongPassphrase(f"wrong passphrase for the source repository {args.from_repo}") from None
    except BaseException:
        backend.close()
        raise
    repo.accept_missing = args.accept_missing
    return repo


def lock_wait(args) -> float:
    """How long the command waits for conflicting locks: --retry-lock, 0 with --no-wait, else
    locks.DEFAULT_WAIT."""
    if args.no_wait:
        if args.retry_lock is not None:
            raise UsageError("give --no-wait or --retry-lock, not both")
        return 0.0
    return DEFAULT_WAIT if args.retry_lock is None else args.retry_lock


def waiting_note(out: Output) -> Waiting:
    """What a command says when it starts to wait for a lock (once)."""
    def note(holder: LockInfo, bound: float) -> None:
        out.note(f"waiting for the lock of {holder.describe()} (for up to {duration_text(bound)}; "
                 "--retry-lock sets how long, --no-wait fails at once)")
    return note


def hold(repo: Repository, args, out: Output, mode: str, command: str | None = None, no_lock: bool = False):
    """`locks.hold_lock` of `mode` in the name of `command` (args.command), waiting for
    conflicting locks as --retry-lock and --no-wait say."""
    return hold_lock(repo, mode, command or args.command, no_lock, lock_wait(args), waiting_note(out))


@contextmanager
def opened(args, out: Output, lock: str = "none", sync_catalog: bool = True,
           no_lock: bool = False) -> Iterator[Repository]:
    """The repository of --repo for the `with` block, holding the lock `lock` ("none", "shared",
    "append" or "exclusive": locks.hold_lock says which command holds which) in the name of
    args.command; the lock is released and the repository closed however the block ends. This is
    where a command chooses its lock: the engines take none of their own.
    `sync_index` brings the local index in step first, before the lock is taken. `no_lock`:
    --no-lock (forget and prune). A command that holds two locks in turn (backup, then its
    retention step) opens with "none" and takes each with `hold`. A lock held by another command
    that conflicts is waited for (`lock_wait`)."""
    if lock != "none":
        lock_wait(args)                 # (a usage error before anything is opened)
    repo = open_repo(args, out, sync_catalog)
    try:
        with hold(repo, args, out, lock, no_lock=no_lock):
            yield repo
    finally:
        repo.close()
