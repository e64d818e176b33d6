"""`fsbackup backup`: back up paths as a new version, verify it, and apply keep rules."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from contextlib import contextmanager

from .. import errors
from ..errors import CommandFailed, UsageError
from ..private import PASSPHRASE_VARIABLE
from ..progress import human_bytes, human_duration
from ..snapshot import MODES
from . import forget, prune
from .options import (
    PROG,
    Command,
    compression_level,
    count_arg,
    host_name,
    keep_options,
    percent_arg,
    size_type,
    volume_size_arg,
)
from .output import Output, print_report
from .repo import hold, lock_wait, opened

INTERRUPTED = ("the backup stopped before saving its version (had it been storing it just then, 'fsbackup "
               "versions' lists it); earlier versions are intact, and the next backup reuses the data already "
               "uploaded and cleans up the rest")


# --exclude-larger-than: 0 leaves out every file that is not empty; 1P is beyond any file.
file_size_arg = size_type("file size", 0, 1 << 50)


def stdin_filename(text: str) -> str:
    """The argument type of --stdin-filename: where the stream's file is in the version, as an
    absolute path (a relative one lies below /, as restic places it); no '..', no NUL, no name
    longer than a file system takes."""
    names = [n for n in text.split("/") if n not in ("", ".")]
    if not names or "\0" in text or ".." in names or any(len(os.fsencode(n)) > 255 for n in names):
        raise argparse.ArgumentTypeError(f"'{text}' is not a file name for --stdin (a name or a path such as "
                                         "/var/backups/db.sql: no '..', no NUL, names of at most 255 bytes)")
    return "/" + "/".join(names)


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files and folders to back up; with --stdin-from-command, the command and its arguments "
                        "(after --)")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                   help="leave out matching paths; a GLOB with '/' matches whole paths, else names (repeatable)")
    p.add_argument("--exclude-file", metavar="FILE", action="append", default=[],
                   help="read --exclude patterns from FILE, one per line ('#' comments)")
    p.add_argument("--exclude-if-present", metavar="NAME", action="append", default=[],
                   help="leave out the contents of directories holding a file NAME (repeatable)")
    p.add_argument("--exclude-caches", action="store_true",
                   help="leave out the contents of directories with a valid CACHEDIR.TAG")
    p.add_argument("--iexclude", metavar="GLOB", action="append", default=[],
                   help="as --exclude, whatever the case of letters: --iexclude '*.jpg' leaves out photo.JPG too")
    p.add_argument("--iexclude-file", metavar="FILE", action="append", default=[],
                   help="read --iexclude patterns from FILE, one per line ('#' comments)")
    p.add_argument("--exclude-larger-than", metavar="SIZE", type=file_size_arg, default=None,
                   help="leave out files larger than SIZE (e.g. 100M, 2G; a file of exactly SIZE is kept)")
    inputs = p.add_argument_group("lists of paths and streams (docs/backup.md)")
    inputs.add_argument("--files-from", metavar="FILE", action="append", default=[],
                        help="also back up the paths listed in FILE, one per line ('#' comments, blank lines "
                             "skipped), '-' for stdin; a listed path that does not exist is a warning (exit 3) "
                             "(repeatable)")
    inputs.add_argument("-0", "--null", action="store_true",
                        help="the --files-from lists separate paths by NUL bytes, not lines, e.g. "
                             "find ~/Documents -name '*.odt' -print0 | fsbackup backup --files-from - -0")
    inputs.add_argument("--stdin", action="store_true",
                        help="back up what stdin holds as one file, read to its end: pg_dump mydb | "
                             "fsbackup backup --stdin --stdin-filename /var/backups/db.sql")
    inputs.add_argument("--stdin-filename", metavar="NAME", type=stdin_filename, default=None,
                        help="the path of the --stdin file in the version (default /stdin; a relative NAME "
                             "lies below /); it is recorded with mode 0600, owned by you, modified now")
    inputs.add_argument("--stdin-from-command", action="store_true",
                        help="back up the output of the command given after -- as with --stdin; if the command "
                             "fails (exit status not 0), no version is stored (exit 1): fsbackup backup "
                             "--stdin-from-command --stdin-filename db.sql -- pg_dump mydb")
    p.add_argument("--one-file-system", action="store_true", help="do not cross file system boundaries")
    p.add_argument("--tag", metavar="TAG", action="append", default=[], help="tag the version (repeatable)")
    p.add_argument("--description", metavar="TEXT", default=None,
                   help="a description of the version, shown by 'fsbackup versions'")
    p.add_argument("--host", metavar="NAME", type=host_name, default=None,
                   help="record the version as made on host NAME (default: this machine's host name); the "
                        "unchanged files of the last version of this host and these paths are not read again")
    p.add_argument("--dry-run", action="store_true", help="scan and chunk, but store nothing")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="close volumes at about this size, 32K to 4G (default 32M)")
    p.add_argument("--compression", metavar="LEVEL", type=compression_level, default=None,
                   help="zstd level for new blocks: 1 (fastest) to 19 (smallest), 0 for none (default 2)")
    v = p.add_argument_group("verify after backup (docs/maintenance.md)")
    v.add_argument("--verify-samples", metavar="N", type=count_arg, default=1,
                   help="download and verify N volumes after the backup, its own first (default 1; 0 for none)")
    v.add_argument("--verify-percent", metavar="P", type=percent_arg, default=0.0,
                   help="verify at least P percent (0 to 100) of all volumes instead")
    v.add_argument("--no-verify", action="store_true", help="skip the verification after the backup")
    s = p.add_argument_group("snapshots and commands around the backup (docs/snapshots.md)")
    s.add_argument("--snapshot", choices=MODES, default="auto",
                   help="read the paths from an operating system snapshot, one consistent moment: auto (the "
                        "default) snapshots paths on btrfs when running as root and reads the rest as they are "
                        "(-v says why); btrfs or lvm insist (a path that cannot be snapshotted is an error, exit 1; "
                        "lvm takes 10%% of the volume's size from the volume group's free space); none never "
                        "snapshots. Snapshots are deleted afterwards, a killed run's by the next run")
    s.add_argument("--pre-command", metavar="CMD", default=None,
                   help="run CMD before the backup (through /bin/sh -c, as FSBACKUP_PASSWORD_COMMAND is: shell "
                        "syntax applies), e.g. "
                        "'pg_dump -f /var/backups/db.sql mydb'; if it fails (exit 1), nothing is backed up")
    s.add_argument("--post-command", metavar="CMD", default=None,
                   help="run CMD after the backup whatever happened (through /bin/sh -c), e.g. "
                        "'systemctl start myapp'; it finds FSBACKUP_OUTCOME (success, partial, failed or "
                        "interrupted), FSBACKUP_VERSION (the new version's id, or empty) and "
                        "FSBACKUP_EXIT_CODE in its environment")
    keep_options(p, "after a successful backup, forget the versions these rules do not keep "
                    "(docs/maintenance.md); nothing is forgotten without a keep option")


def _excludes(patterns: list[str], files: list[str]) -> list[str]:
    """--exclude (or --iexclude) patterns, and those of every --exclude-file (--iexclude-file)."""
    excludes = list(patterns)
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                excludes += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read exclude file {path}: {e.strerror}") from None
    return excludes


def _listed_paths(args) -> list[str]:
    """The paths of every --files-from list ('-': stdin), as written (no glob expansion: restic's
    --files-from-verbatim): one a line (a CR before the newline dropped, blank lines and lines
    starting with '#' skipped), or with --null separated by NUL bytes (restic's --files-from-raw),
    which alone can hold names with newlines."""
    paths: list[str] = []
    for source in args.files_from:
        try:
            if source == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(source, "rb") as f:
                    data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --files-from {source}: {e.strerror}") from None
        if args.null:
            names = [n for n in data.split(b"\0") if n]
        else:
            lines = (ln.removesuffix(b"\r") for ln in data.split(b"\n"))
            names = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith(b"#")]
        paths += [os.fsdecode(n) for n in names]
    return paths


def _input_problem(args) -> str | None:
    """What is wrong with what to back up, if anything: PATHs and --files-from lists, or a stream
    (--stdin, --stdin-from-command) alone."""
    if args.stdin and args.stdin_from_command:
        return "--stdin and --stdin-from-command both name the stream to back up: give one"
    if args.stdin_from_command and not args.paths:
        return ("--stdin-from-command needs the command after --, e.g. "
                "fsbackup backup --stdin-from-command --stdin-filename db.sql -- pg_dump mydb")
    if args.stdin or args.stdin_from_command:
        if "-" in args.files_from:
            return "--files-from - reads its list from stdin, which --stdin reads as data: give one of them"
        if args.files_from:
            return "a backup of a stream takes no other paths: --files-from cannot go with it"
        if args.stdin and args.paths:
            return "a backup of --stdin takes no PATH (name its file with --stdin-filename)"
    elif args.stdin_filename is not None:
        return "--stdin-filename names the file of --stdin or --stdin-from-command: give one of them"
    elif not args.paths and not args.files_from:
        return "nothing to back up: give PATHs, --files-from FILE, --stdin or --stdin-from-command"
    if args.null and not args.files_from:
        return "--null says how --files-from lists are separated: give --files-from"
    return None


@contextmanager
def _stream(args):
    """The StreamFile of --stdin or --stdin-from-command (None for neither). The command runs
    with this process's stdin and stderr; its output is the stream. If the backup stops before
    the command ends, the command is killed."""
    from ..engine.backup import StreamFile
    path = args.stdin_filename or "/stdin"
    if args.stdin:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--stdin backs up data piped in, not a terminal: e.g. pg_dump mydb | "
                             "fsbackup backup --stdin --stdin-filename db.sql")
        yield StreamFile(path, sys.stdin.buffer)
        return
    if not args.stdin_from_command:
        yield None
        return
    command = shlex.join(args.paths)
    try:
        proc = subprocess.Popen(args.paths, stdout=subprocess.PIPE, env=_command_environment())
    except OSError as e:
        raise CommandFailed(f"cannot run --stdin-from-command {command}: {e.strerror}; no version was stored") \
            from None

    def finished() -> None:
        status = proc.wait()
        if status != 0:
            raise CommandFailed(f"--stdin-from-command {command} failed with {_status(status)}; no version was stored")
    try:
        assert proc.stdout is not None              # (stdout=PIPE)
        yield StreamFile(path, proc.stdout, finished)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _report_verification(out: Output, name: str, written: dict[str, int], report) -> bool:
    if report.ok:
        out.info(f"verified: {len(written)} new volume(s) listed with their sizes, "
                 f"{report.volumes_read} volume(s) downloaded and verified")
        return True
    print_report(report)
    print(f"{PROG}: error: verification after backup found damage (listed above); version {name[:8]} is saved, "
          f"but the objects named are damaged: run 'fsbackup check --read-data', then 'fsbackup repair'",
          file=sys.stderr)
    return False


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (a service stopped, a shutdown) stops the backup as Ctrl-C does, so that its
    snapshots are deleted and the post-command runs; the handler of before is put back after."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt()
    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:           # not the main thread (a library caller): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _status(returncode: int) -> str:
    """How a command ended, for an error line: "exit status N" or "signal N"."""
    return f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def _command_environment(**extra: str) -> dict[str, str]:
    """The environment of a command backup runs (--stdin-from-command, --pre-command,
    --post-command): fsbackup's, with `extra`, without the passphrase (the command has no need
    of it, and should not hand it on)."""
    env = dict(os.environ, **extra)
    env.pop(PASSPHRASE_VARIABLE, None)
    return env


def _pre_command(cmd: str) -> None:
    """Run --pre-command; its failure stops the backup before anything is stored."""
    status = subprocess.run(cmd, shell=True, env=_command_environment()).returncode
    if status != 0:
        raise CommandFailed(f"--pre-command '{cmd}' failed with {_status(status)}; nothing was backed up")


def _post_command(cmd: str, code: int, version: str | None) -> int:
    """Run --post-command with the outcome in its environment; its exit status."""
    if code == 0:
        outcome = "success"
    elif code == errors.EXIT_INTERRUPTED:
        outcome = "interrupted"
    else:
        outcome = "partial" if version else "failed"
    env = _command_environment(FSBACKUP_OUTCOME=outcome, FSBACKUP_VERSION=version or "",
                               FSBACKUP_EXIT_CODE=str(code))
    return subprocess.run(cmd, shell=True, env=env).returncode


def run(args, out: Output) -> int:
    """The backup, between --pre-command and --post-command, SIGTERM stopping it as Ctrl-C does."""
    saved: list[str] = []
    _check_command_line(args)        # (before the pre-command, which may stop a service)
    with _sigterm_interrupts():
        try:
            if args.pre_command:
                _pre_command(args.pre_command)
            code = _backup(args, out, saved)
        except BaseException as e:
            if args.post_command:
                status = _post_command(args.post_command, errors.exit_code_of(e), saved[0] if saved else None)
                if status != 0:
                    out.warn(f"--post-command '{args.post_command}' failed with {_status(status)}")
            raise
        if args.post_command:
            status = _post_command(args.post_command, code, saved[0] if saved else None)
            if status != 0 and code == 0:
                raise CommandFailed(f"--post-command '{args.post_command}' failed with {_status(status)}; "
                                           "the backup itself succeeded")
            if status != 0:
                out.warn(f"--post-command '{args.post_command}' failed with {_status(status)}")
    return code


def _check_command_line(args) -> None:
    """UsageError for a command line that cannot work, found without reading any file (the
    --files-from lists and exclude files are read after --pre-command, which may write them)."""
    problem = _input_problem(args)
    if problem:          # (said as argparse says what it refuses)
        raise UsageError(f"{problem}; see '{PROG} backup --help'")
    policy = forget.policy_from_args(args)           # (a bad --keep-within is a UsageError too)
    if args.prune and policy.is_empty():
        raise UsageError("backup --prune needs at least one keep rule (e.g. --keep-daily 7)")


def _backup(args, out: Output, saved: list[str]) -> int:
    """The backup itself; `saved` gets the new version's name once it is stored."""
    from ..engine.backup import Backup, BackupOptions
    from ..engine.check import verify_backup
    excludes = _excludes(args.exclude, args.exclude_file)
    policy = forget.policy_from_args(args)
    options = BackupOptions(excludes=excludes, exclude_if_present=args.exclude_if_present,
                            exclude_caches=args.exclude_caches, one_file_system=args.one_file_system,
                            tags=args.tag, dry_run=args.dry_run, host=args.host,
                            description=args.description, snapshot=args.snapshot,
                            explain_snapshot=bool(args.verbose))
    options.iexcludes = _excludes(args.iexclude, args.iexclude_file)
    options.exclude_larger_than = args.exclude_larger_than
    options.listed_paths = _listed_paths(args)
    if args.files_from and not args.paths and not options.listed_paths:
        raise UsageError("nothing to back up: the --files-from lists name no path, and no PATH is given")
    if args.volume_size:
        options.volume_size = args.volume_size
    if args.compression is not None:
        options.compression = args.compression
    # Two locks in turn: the backup's own (a dry run stores nothing and needs none), then, for the
    # keep rules, an exclusive one, as forget takes.
    lock_wait(args)
    with opened(args, out, sync_catalog=False) as repo:
        job = Backup(repo, options, out)
        verification = []     # verify after backup runs under the backup's lock; reported after its summary

        def after_commit(name: str) -> None:
            saved.append(name)
            if not args.no_verify:
                verification.append(verify_backup(repo, name, job.written, args.verify_samples,
                                                  args.verify_percent, out))
        job.after_commit = after_commit
        try:
            with hold(repo, args, out, "none" if args.dry_run else "append") as lock, _stream(args) as stream:
                name = job.run_locked([] if stream else args.paths, lock, stream)
        except KeyboardInterrupt:
            if not saved:
                raise
            unverified = "" if args.no_verify else \
                ", but verifying it was cut short; 'fsbackup check --read-data' verifies it"
            raise errors.Interrupted(f"version {saved[0][:8]} is saved{unverified}") from None
        s = job.stats
        summary = {"version": name, "dry_run": args.dry_run, **s.as_json()}
        if not out.json:
            out.info(f"files: {s.files_new} new, {s.files_changed} changed, {s.files_unchanged} unchanged"
                     f" ({s.dirs} dirs, {s.others} other)")
            out.info(f"read {human_bytes(s.bytes_read)} of {human_bytes(s.total_size)}; "
                     f"new data {human_bytes(s.bytes_new_plain)}, added {human_bytes(s.bytes_added)} "
                     f"after dedup and compression, in {human_duration(s.duration)} ({s.duration:.1f} s)")
            if name:
                out.info(f"saved version {name[:8]}")
            else:
                out.info("dry run: nothing was stored")
            if s.warnings:
                out.warn(f"{len(s.warnings)} file(s) could not be read and are missing from this version "
                         "(listed above)")
        verified = _report_verification(out, name, job.written, verification[0]) if verification and name else True
        summary["verified"] = verified
        if name and not policy.is_empty():      # retention only after a version was saved
            if not verified:                    # never thin out older versions while the new one is in doubt
                out.warn("retention skipped: the new version's data did not verify; no version was forgotten")
            else:
                quiet = Output.silent() if out.json else out
                try:
                    with hold(repo, args, out, "exclusive"):
                        repo.sync_catalog()
                        summary["forget"] = forget.forget_by_policy(repo, policy, False, quiet)
                        if args.prune:
                            summary["prune"] = prune.prune_now(repo, args, quiet, dry_run=False)
                except (KeyboardInterrupt, errors.Interrupted) as e:
                    left = str(e) or (prune.INTERRUPTED if "forget" in summary else forget.INTERRUPTED)
                    raise errors.Interrupted(f"version {name[:8]} is saved; {left}") from None
                except errors.FsbackupError:
                    # e.g. backup-only credentials, which may not delete: the error says why,
                    # this line that the backup itself is not lost
                    out.warn(f"version {name[:8]} is saved; the keep rules were not applied")
                    raise
        if out.json:
            out.emit_json(summary)
    if not verified:
        return errors.EXIT_CORRUPT
    return errors.EXIT_PARTIAL if s.warnings else 0


COMMAND = Command(
    "backup", "back up paths as a new version",
    "Back up one or more paths as one new version. Unchanged files (same size, mtime, ctime and inode\n"
    "as in the previous version of the same paths) are not read again; new data is cut into blocks,\n"
    "and only blocks the repository lacks are compressed, encrypted and uploaded.\n\n"
    "What a backup reads (PATHs, --files-from lists, --stdin, --stdin-from-command) and what it\n"
    "leaves out: docs/backup.md.\n\n"
    "Exit code 3: the version was saved, but some files could not be read (they are listed).",
    add_arguments, run, INTERRUPTED)
