"""The command line: parses arguments, calls the engines, prints results, maps errors to exit codes.

It holds no backup logic. Each command is a module of this package holding its options
(`add_arguments`) beside its handler (`run`), declared as an `options.Command`; `main` builds the
parser from them and runs one. Every FsbackupError becomes one line on stderr and its exit code
(docs/exit-codes.md), here and nowhere else; nothing leaves as a traceback unless FSBACKUP_DEBUG
is set.
"""
from __future__ import annotations

import argparse
import errno
import importlib.metadata
import logging
import os
import sys

from .. import __version__, errors
from ..errors import FsbackupError
from . import (
    backup,
    check,
    completion,
    copy,
    diff,
    dump,
    find,
    forget,
    init,
    key,
    ls,
    mount,
    prune,
    repair,
    restore,
    stats,
    tag,
    unlock,
    versions,
)
from .options import PROG, Command, global_options
from .output import Output

__all__ = ["main", "build_parser"]

EPILOG = """\
environment:
  FSBACKUP_REPOSITORY       repository URL (a directory path or b2://BUCKET/PREFIX), instead of --repo
  B2_APPLICATION_KEY_ID     Backblaze B2 application key id, for b2:// repositories (docs/b2.md)
  B2_APPLICATION_KEY        Backblaze B2 application key
  FSBACKUP_PASSWORD         the passphrase
  FSBACKUP_PASSWORD_COMMAND a command that prints the passphrase (e.g. 'pass show backup'), run
                            through /bin/sh -c with your environment: shell syntax applies, so
                            quote it as in a shell and set it only from a source you trust
  FSBACKUP_NEW_PASSWORD     the new passphrase, for 'key passwd' and 'key add'
  FSBACKUP_FROM_PASSWORD    the source repository's passphrase, for 'copy'
  XDG_CACHE_HOME            where the local index lives (default ~/.cache/fsbackup/<repository id>/)

examples:
  export FSBACKUP_REPOSITORY=/mnt/nas/backups
  fsbackup init
  fsbackup backup ~/Documents ~/Pictures --exclude '*.tmp' --exclude-caches
  fsbackup versions --host laptop
  fsbackup ls latest /home/alice/Documents -l
  fsbackup find '*.odt' --newer 7d
  fsbackup diff 3f2a9c1e latest /home/alice
  fsbackup restore latest /home/alice/Documents/report.odt --target /tmp/restored
  fsbackup dump latest /home/alice/Documents | tar -t
  fsbackup key passwd
  fsbackup forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  fsbackup check --read-data-subset 1/7
  fsbackup copy --repo b2://bucket/laptop --from-repo /mnt/nas/backups

exit codes: 0 ok, 1 error, 2 usage, 3 backup saved but some files could not be read,
  4 restore would overwrite files, 10 no repository, 11 wrong passphrase, 12 corrupt or missing
  data, 13 version, path or key not found, 14 repository locked by another process, 15 disk
  full, 16 permission denied or storage credentials rejected, 17 storage failure, 130 interrupted
  (see docs/exit-codes.md)
"""


# The commands, in the order --help lists them.
COMMANDS: list[Command] = [init.COMMAND, backup.COMMAND, forget.COMMAND, prune.COMMAND, versions.COMMAND,
                           tag.COMMAND, ls.COMMAND, find.COMMAND, diff.COMMAND, restore.COMMAND, copy.COMMAND,
                           mount.MOUNT, mount.UMOUNT, unlock.COMMAND, key.COMMAND, check.COMMAND, repair.COMMAND]
COMMANDS += [dump.COMMAND, stats.COMMAND, completion.COMMAND]
BY_NAME = {command.name: command for command in COMMANDS}


def version() -> str:
    """The version of the installed package (its metadata), or of the source tree when it runs
    uninstalled."""
    try:
        return importlib.metadata.version("fsbackup")
    except importlib.metadata.PackageNotFoundError:
        return __version__


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error (docs/exit-codes.md), naming the help to
    read instead of printing the usage. Sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(errors.EXIT_USAGE, f"{PROG}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Deduplicated, compressed, encrypted backups of directories, browsable as a read-only filesystem.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}",
                        help="print the version and exit")
    global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        global_options(p, suppress=True)
        command.add_arguments(p)
    return parser


class _WarningLines(logging.Handler):
    """Warnings of the engine's loggers as 'warning: ...' lines on the stderr of the moment (the
    mount configures its own log instead)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - a warning that cannot be printed must not stop the command
            self.handleError(record)


def _log_warnings_to_stderr() -> None:
    logger = logging.getLogger("fsbackup")
    if not any(isinstance(h, _WarningLines) for h in logger.handlers):
        handler = _WarningLines(logging.WARNING)
        logger.addHandler(handler)


def _fill_closed_standard_fds() -> None:
    """Open /dev/null in place of a closed stdin, stdout or stderr (e.g. `2>&-`). Otherwise Python
    leaves sys.stderr None, which nothing expects, and the next file opened (the local index, a
    restored file) takes the free descriptor: what is then written to stderr would land in it."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)   # the lowest free: fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _drop_unwritten_output() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again
    over what could not be written."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code (usage errors,
    --help and --version exit through SystemExit, as argparse does)."""
    _fill_closed_standard_fds()
    args = build_parser().parse_args(argv)
    command = BY_NAME[args.command]
    out = Output(args)
    if args.command != "mount":
        _log_warnings_to_stderr()
    try:
        code = command.run(args, out)
        sys.stdout.flush()     # here, not at exit: a failure to write what was printed is one line too
        return code
    except errors.Interrupted as e:         # the command said what it leaves
        print(f"{PROG}: interrupted: {e}", file=sys.stderr)
        return errors.exit_code_of(e)
    except FsbackupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return errors.exit_code_of(e)
    except KeyboardInterrupt as e:
        print(f"{PROG}: interrupted: {command.interrupted}", file=sys.stderr)
        return errors.exit_code_of(e)
    except BrokenPipeError as e:
        return errors.exit_code_of(e)
    except Exception as e:  # a bug: still one line, with a way to see the traceback
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            # Output to a full disk (`versions > /dev/full`): no bug, and what was not written is lost.
            print(f"{PROG}: error: cannot write the output: {e.strerror}", file=sys.stderr)
            _drop_unwritten_output()
            return errors.EXIT_NO_SPACE
        if os.environ.get("FSBACKUP_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (set FSBACKUP_DEBUG=1 for a traceback, "
              "and please report it)", file=sys.stderr)
        return errors.exit_code_of(e)
