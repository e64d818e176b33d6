"""The command line: parses arguments, calls the engine, prints results, maps errors to exit codes.

It holds no backup logic. Every FsbackupError becomes one line on stderr and its exit code
(docs/exit-codes.md); nothing else leaves as a traceback unless FSBACKUP_DEBUG is set.
"""
from __future__ import annotations

import argparse
import datetime
import getpass
import json
import logging
import math
import os
import stat
import subprocess
import sys
from typing import Callable

from . import errors, repository
from .errors import FsbackupError, UsageError
from .progress import Progress, human_bytes, human_duration
from .index import Index
from .repository import Kind, Repository, index_object, parse_object_name

PROG = "fsbackup"

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
  XDG_CACHE_HOME            where the local index lives (default ~/.cache/fsbackup/<repository id>/)

examples:
  export FSBACKUP_REPOSITORY=/mnt/nas/backups
  fsbackup init
  fsbackup backup ~/Documents ~/Pictures --exclude '*.tmp' --exclude-caches
  fsbackup versions
  fsbackup ls latest /home/alice/Documents -l
  fsbackup restore latest /home/alice/Documents/report.odt --target /tmp/restored
  fsbackup key passwd
  fsbackup forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune
  fsbackup check --read-data-subset 1/7

exit codes: 0 ok, 1 error, 2 usage, 3 backup saved but some files could not be read,
  4 restore would overwrite files, 10 no repository, 11 wrong passphrase, 12 corrupt or missing
  data, 13 version, path or key not found, 14 repository locked by another process, 15 disk
  full, 16 permission denied or storage credentials rejected, 17 storage failure, 130 interrupted
  (see docs/exit-codes.md)
"""


# ---- argument types: each refuses a bad value with one line saying what it accepts -----------

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _size_text(n: int) -> str:
    """`n` bytes as a size argument is written: the largest unit that divides it (32K, 4G, 0)."""
    unit = max((u for u, factor in SIZE_UNITS.items() if n % factor == 0), key=SIZE_UNITS.get) if n else ""
    return f"{n // SIZE_UNITS[unit]}{unit}"


def size_type(what: str, minimum: int, maximum: int) -> Callable[[str], int]:
    """The argument type of a size in bytes from `minimum` to `maximum`: a number (a fraction too)
    with an optional unit K, M, G, T or P, powers of 1024 (1M = 1MB = 1MiB)."""
    def parse(text: str) -> int:
        t = text.strip().upper().removesuffix("IB").removesuffix("B")
        unit = t[-1] if t and t[-1] in SIZE_UNITS else ""
        try:
            value = float(t[:-1] if unit else t) * SIZE_UNITS[unit]
        except ValueError:
            value = math.nan
        if not minimum <= value <= maximum:     # also false for nan
            raise argparse.ArgumentTypeError(f"'{text}' is not a {what} from {_size_text(minimum)} "
                                             f"to {_size_text(maximum)} (e.g. 32M, 1G)")
        return int(value)
    return parse


# Volumes below the smallest block cut from a large file (256K) hold one block each; below 32K
# the objects and tables cost more than the data. Above 4G the volumes a backup holds in memory
# (about 2 x (uploads in flight + 1) of them) outgrow any machine's memory.
volume_size_arg = size_type("volume size", 32 << 10, 4 << 30)
# 0 turns the mount's block cache off; 1P is beyond any disk it could fill.
cache_size_arg = size_type("cache size", 0, 1 << 50)


def whole_number(minimum: int) -> Callable[[str], int]:
    """The argument type of a whole number of at least `minimum` (a count)."""
    kind = "positive whole number" if minimum == 1 else "whole number"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind} ({minimum} or more)")
        return value
    return parse


positive_int = whole_number(1)
count_arg = whole_number(0)


def percent_arg(text: str) -> float:
    """The argument type of a percentage from 0 to 100, with or without '%'."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:                   # also false for nan
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage from 0 to 100")
    return value


def parse_share(text: str) -> float:
    """A percentage as a fraction from 0 to 1 (prune's --max-unused)."""
    return percent_arg(text) / 100


def compression_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"'{text}' is not a compression level from 0 (none) to 19")
    return value


# ---- argument parsing -----------------------------------------------------------------------

def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("global options")
    g.add_argument("--repo", metavar="URL", default=d(None),
                   help="repository: a directory path or b2://BUCKET/PREFIX (default: $FSBACKUP_REPOSITORY)")
    g.add_argument("--password-file", metavar="FILE", default=d(None), help="read the passphrase from FILE")
    g.add_argument("--connections", metavar="N", type=positive_int, default=d(None),
                   help="concurrent uploads/downloads to the repository (default: 2 local, 4 B2)")
    g.add_argument("--index", metavar="PATH", default=d(None),
                   help="local index file (default: $XDG_CACHE_HOME/fsbackup/<repository id>/index.sqlite)")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print only errors")
    g.add_argument("-v", "--verbose", action="count", default=d(0), help="say more (the mount logs each retry)")
    g.add_argument("--json", action="store_true", default=d(False), help="print results as JSON for scripts")
    g.add_argument("--accept-missing", action="store_true", default=d(False),
                   help="accept that more than half of the versions or volumes this machine's index knows are "
                        "gone from the repository (refused otherwise: check the repository's folders first)")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error (docs/exit-codes.md), naming the help to
    read instead of printing the usage. Sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(errors.EXIT_USAGE, f"{PROG}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Deduplicated, compressed, encrypted backups of directories, browsable as a read-only filesystem.")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _global_options(p, suppress=True)
        return p

    command("init", "create a new repository",
            "Create a repository at --repo. Asks for a new passphrase twice (or takes it from the environment).\n"
            "Refuses a folder that has other files in it. Keep the passphrase safe: without it the backups\n"
            "cannot be read, by you or anyone.")

    p = command("backup", "back up paths as a new version",
                "Back up one or more paths as one new version. Unchanged files (same size, mtime, ctime and inode\n"
                "as in the previous version of the same paths) are not read again; new data is cut into blocks,\n"
                "and only blocks the repository lacks are compressed, encrypted and uploaded.\n\n"
                "Exit code 3: the version was saved, but some files could not be read (they are listed).")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[],
                   help="leave out matching paths; a GLOB with '/' matches whole paths, else names (repeatable)")
    p.add_argument("--exclude-file", metavar="FILE", action="append", default=[],
                   help="read --exclude patterns from FILE, one per line ('#' comments)")
    p.add_argument("--exclude-if-present", metavar="NAME", action="append", default=[],
                   help="leave out the contents of directories holding a file NAME (repeatable)")
    p.add_argument("--exclude-caches", action="store_true",
                   help="leave out the contents of directories with a valid CACHEDIR.TAG")
    p.add_argument("--one-file-system", action="store_true", help="do not cross file system boundaries")
    p.add_argument("--tag", metavar="TAG", action="append", default=[], help="tag the version (repeatable)")
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
    _keep_options(p, "after a successful backup, forget the versions these rules do not keep "
                     "(docs/maintenance.md); nothing is forgotten without a keep option")

    p = command("forget", "remove versions by retention rules, or by id",
                "Remove the versions that no keep rule keeps (rules apply to each host and set of paths\n"
                "on its own; a version is kept when any rule keeps it; the newest of each is always kept),\n"
                "or the versions named by id. Their data stays until 'fsbackup prune' (or --prune).\n\n"
                "examples:\n"
                "  fsbackup forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run\n"
                "  fsbackup forget --retention-policy 1W:1D,4W:1W,12M:1M --prune\n"
                "  fsbackup forget 3f2a9c1e")
    p.add_argument("versions", nargs="*", metavar="VERSION", help="remove these versions (ids or id prefixes)")
    _keep_options(p, "keep rules")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed and why the rest stays")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="prune: size of the volumes repacking writes, 32K to 4G (default 32M)")
    _no_lock_option(p)

    p = command("prune", "reclaim the space of data no version uses",
                "Delete volumes that hold no block of any remaining version, and repack volumes whose unused\n"
                "share exceeds --max-unused: their live blocks are copied into new volumes, then they are\n"
                "deleted. Safe to interrupt at any point; run it again to finish.")
    p.add_argument("--max-unused", metavar="PERCENT", type=parse_share, default=None,
                   help="repack volumes with more than this share unused (default 25%%)")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="size of the volumes repacking writes, 32K to 4G (default 32M)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted and repacked")
    _no_lock_option(p)

    p = command("versions", "list backup versions", "One line per version: id, time, paths, files, size, bytes added.")

    p = command("ls", "list the files of a version",
                "List a version's tree, or the part below PATH. VERSION is an id, an unambiguous id prefix, or 'latest'.")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("-l", "--long", action="store_true", help="long format: mode, owner, size, time")

    p = command("restore", "restore files from a version",
                "Restore all of a version, or the given paths, below --target (paths keep their absolute\n"
                "place: /home/a/f restores to TARGET/home/a/f). Existing files are never touched unless\n"
                "--overwrite is given. Every block is authenticated and every file's content hash checked.")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--target", required=True, metavar="DIR", help="where to restore (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist in the target")

    p = command("mount", "browse every version as a read-only filesystem",
                "Mount the repository at MOUNTPOINT (an empty directory): MOUNTPOINT/versions/<time>/ holds\n"
                "each version's files at their absolute paths, MOUNTPOINT/latest points to the newest one.\n"
                "Browse with any file manager; restore with 'cp -a'. Only the bytes you read are fetched and\n"
                "decrypted. Backups may run while mounted: new versions appear within seconds.\n\n"
                "Stop with Ctrl-C, 'fsbackup umount MOUNTPOINT' or 'fusermount3 -u MOUNTPOINT'.\n\n"
                "Permissions are the backed-up ones, POSIX ACLs included; trusted.* xattrs are shown to root\n"
                "only. Once the repository is open, the mount removes FSBACKUP_PASSWORD from its environment\n"
                "(docs/mount.md says what that does and does not clear).")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--daemon", action="store_true",
                   help="go to the background once the mount is ready (messages go to logs/mount.log next to "
                        "the local index)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users (and Samba/NFS servers) see the mount (needs user_allow_other in "
                        "/etc/fuse.conf when not root)")
    p.add_argument("--xattrs", choices=("auto", "on", "off"), default="auto",
                   help="whether the mount answers requests for extended attributes and ACLs. 'on': always. "
                        "'off': never; the kernel then stops asking, which makes 'ls -l' of a big directory "
                        "several times faster, but no version shows its xattrs, and ACLs are not enforced "
                        "(refused with --allow-other). 'auto' (default): 'off' when no version holds any xattr "
                        "as the mount starts and the mount is not --allow-other, else 'on'")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where fetched blocks are cached, encrypted: a new or empty folder, which fsbackup tags "
                        "and makes owner-only (default: next to the local index)")
    p.add_argument("--cache-size", metavar="SIZE", type=cache_size_arg, default=None,
                   help="bound of the block cache on disk, up to 1P (default: 1G for remote storage, 0 for a local "
                        "directory, which is its own cache)")

    p = command("umount", "unmount a mounted repository", "Unmount MOUNTPOINT (same as fusermount3 -u).")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")

    p = command("unlock", "remove stale locks",
                "Remove the locks left by fsbackup processes that are gone: a lock whose process ran on this\n"
                "host and no longer exists, or that has not been refreshed for 30 minutes. Live locks stay.")
    p.add_argument("--all", action="store_true",
                   help="remove every lock, live ones too: only when you know no other fsbackup process "
                        "uses the repository (on any machine)")

    p = command("key", "manage the passphrases that open the repository",
                "Each passphrase is a key object holding the repository's master secret. Changing or adding\n"
                "a passphrase rewrites no data. New passphrases come from --new-password-file, from\n"
                "FSBACKUP_NEW_PASSWORD, or are asked for twice.")
    keys = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def key_action(name: str, help: str) -> argparse.ArgumentParser:
        a = keys.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        _global_options(a, suppress=True)
        return a

    for name, help in (("passwd", "change the passphrase you open the repository with"),
                       ("add", "add another passphrase (e.g. for a second person)")):
        a = key_action(name, help)
        a.add_argument("--new-password-file", metavar="FILE", help="read the new passphrase from FILE")
    key_action("list", "list the keys: id, when and where made, KDF cost; * marks the one in use")
    a = key_action("remove", "remove a key (not the one in use, nor the last)")
    a.add_argument("key_id", metavar="ID", help="the key's id or an unambiguous prefix (see 'key list')")

    p = command("check", "verify the repository",
                "Verify the repository's structure: every version and index object reads, every volume they\n"
                "name exists with the right size, and the local index agrees. With --read-data (or a subset)\n"
                "volumes are downloaded and every block is verified. Damage is reported with the versions and\n"
                "files it affects.\n\n"
                "Exit code 12: something is damaged or missing (see docs/maintenance.md).")
    _read_data_options(p)

    p = command("repair", "rebuild the local index; re-create missing index objects; remove damaged files",
                "Rebuild the local index from the repository's index and version objects, re-create missing or\n"
                "damaged index objects from their volumes, and list versions that use damaged or missing data.\n"
                "With --remove-damaged, those files are removed from the versions (every removed path is\n"
                "printed). --read-data finds damage inside volumes first, as for check.\n\n"
                "Exit code 12: damage remains that repair did not remove.")
    _read_data_options(p)
    p.add_argument("--remove-damaged", action="store_true",
                   help="write each affected version again without its damaged files, then delete the old one")
    return parser


def _keep_options(p: argparse.ArgumentParser, title: str) -> None:
    g = p.add_argument_group("retention", title)
    g.add_argument("--keep-last", metavar="N", type=positive_int, default=0, help="keep the N newest versions")
    for period, unit in (("hourly", "hours"), ("daily", "days"), ("weekly", "ISO weeks"), ("monthly", "months"),
                         ("yearly", "years")):
        g.add_argument(f"--keep-{period}", metavar="N", type=positive_int, default=0,
                       help=f"keep the newest version of each of the last N {unit} that have versions (local time)")
    g.add_argument("--keep-within", metavar="DURATION", default=None,
                   help="keep every version within DURATION of the newest (e.g. 30d, 2w, 1y6m, 12h)")
    g.add_argument("--keep-tag", metavar="TAG", action="append", default=[], help="keep versions with TAG (repeatable)")
    g.add_argument("--retention-policy", metavar="POLICY", default=None,
                   help="Duplicati-style FRAME:INTERVAL,... e.g. 1W:1D,4W:1W,12M:1M (U = unlimited)")
    g.add_argument("--prune", action="store_true", help="prune after forgetting (see 'fsbackup prune')")
    g.add_argument("--max-unused", metavar="PERCENT", type=parse_share, default=None,
                   help="prune: repack volumes with more than this share unused (default 25%%)")


def _no_lock_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-lock", action="store_true",
                   help="write no lock: only to free space on a full repository disk, and only when no other "
                        "fsbackup process uses the repository (a live lock still stops it; docs/maintenance.md)")


def subset_arg(text: str) -> str:
    from .check import parse_subset
    try:
        parse_subset(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not n/m (e.g. 1/5) or a percentage (e.g. 10%)") from None
    return text


def _read_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--read-data", action="store_true", help="download and verify every volume")
    g.add_argument("--read-data-subset", metavar="n/m|P%", type=subset_arg, default=None,
                   help="download and verify part n of m (the same volumes each time), or a random P percent")


# ---- helpers --------------------------------------------------------------------------------

class Output:
    def __init__(self, args):
        self.quiet, self.verbose, self.json = args.quiet, args.verbose, args.json

    @classmethod
    def silent(cls) -> "Output":
        return cls(argparse.Namespace(quiet=True, verbose=0, json=True))

    def info(self, msg: str) -> None:
        if not self.quiet and not self.json:
            print(msg)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    def note(self, msg: str) -> None:
        if not self.quiet:
            print(f"note: {msg}", file=sys.stderr)

    def progress(self) -> Progress:
        return Progress(enabled=sys.stderr.isatty() and not self.quiet and not self.json)

    def emit_json(self, doc) -> None:
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")


def _not_empty(passphrase: bytes) -> bytes:
    """A new passphrase, refused when empty: an empty one protects nothing."""
    if not passphrase:
        raise UsageError("an empty passphrase is not allowed; choose one that protects the repository")
    return passphrase


def get_passphrase(args, new: bool = False) -> bytes:
    """The passphrase from --password-file, FSBACKUP_PASSWORD, FSBACKUP_PASSWORD_COMMAND (a shell
    command line, run by /bin/sh -c; its stdout is the passphrase) or the terminal (asked twice
    when `new`). A `new` one (init) must not be empty; opening a repository
    with an empty one is only a wrong passphrase."""
    if args.password_file:
        try:
            with open(args.password_file, "rb") as f:
                passphrase = f.read().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read password file {args.password_file}: {e.strerror}") from None
    elif "FSBACKUP_PASSWORD" in os.environ:
        passphrase = os.fsencode(os.environ["FSBACKUP_PASSWORD"])
    elif os.environ.get("FSBACKUP_PASSWORD_COMMAND"):
        cmd = os.environ["FSBACKUP_PASSWORD_COMMAND"]
        res = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE)
        if res.returncode != 0:
            raise UsageError(f"FSBACKUP_PASSWORD_COMMAND failed with exit code {res.returncode}")
        passphrase = res.stdout.rstrip(b"\r\n")
    elif not sys.stdin.isatty():
        raise UsageError("no passphrase: set FSBACKUP_PASSWORD or FSBACKUP_PASSWORD_COMMAND, or use --password-file")
    else:
        passphrase = os.fsencode(getpass.getpass("new passphrase: " if new else "passphrase: "))
        if new and os.fsencode(getpass.getpass("repeat passphrase: ")) != passphrase:
            raise UsageError("the passphrases do not match")
    return _not_empty(passphrase) if new else passphrase


def get_new_passphrase(args) -> bytes:
    """The new passphrase of 'key passwd' and 'key add' (never empty)."""
    if getattr(args, "new_password_file", None):
        try:
            with open(args.new_password_file, "rb") as f:
                passphrase = f.read().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read password file {args.new_password_file}: {e.strerror}") from None
    elif "FSBACKUP_NEW_PASSWORD" in os.environ:
        passphrase = os.fsencode(os.environ["FSBACKUP_NEW_PASSWORD"])
    elif sys.stdin.isatty():
        passphrase = os.fsencode(getpass.getpass("new passphrase: "))
        if os.fsencode(getpass.getpass("repeat new passphrase: ")) != passphrase:
            raise UsageError("the passphrases do not match")
    else:
        raise UsageError("no new passphrase: set FSBACKUP_NEW_PASSWORD or use --new-password-file")
    return _not_empty(passphrase)


def repo_url(args) -> str:
    url = args.repo or os.environ.get("FSBACKUP_REPOSITORY")
    if not url:
        raise UsageError("no repository given: use --repo URL or set FSBACKUP_REPOSITORY")
    return url


def _not_a_folder(path: str) -> str | None:
    """What keeps `path` from being a folder: the path itself, or the nearest one above it that
    exists, when that is not a folder (a file); None when `path` is a folder or can be made one."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return None if os.path.isdir(path) else path


def open_storage(args):
    """The storage for --repo, with --connections applied when given."""
    return repository.open_storage(repo_url(args), args.connections)


def open_repo(args, out: Output, sync_index: bool = True) -> Repository:
    backend = open_storage(args)
    repo = Repository.open(backend, get_passphrase(args), args.index)
    repo.accept_missing = args.accept_missing
    if sync_index:
        repo.ensure_index(out.progress())
    return repo


def fmt_time(ns: int) -> str:
    """Local date and time, or "@<seconds since the epoch>" for a time outside years 1-9999."""
    try:
        return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"@{ns // 1_000_000_000}"


# ---- commands -------------------------------------------------------------------------------

def cmd_init(args, out: Output) -> int:
    backend = open_storage(args)
    repo = Repository.create(backend, get_passphrase(args, new=True), args.index)
    repo.index.set_meta("repository_id", repo.id)
    if out.json:
        out.emit_json({"repository": repo.storage_url, "id": repo.id})
    else:
        out.info(f"created repository {repo.id[:8]} at {repo.storage_url}")
        out.info("keep the passphrase safe: without it the backups cannot be read")
    repo.close()
    return 0


def cmd_backup(args, out: Output) -> int:
    from .backup import Backup, BackupOptions
    from .check import verify_backup
    excludes = list(args.exclude)
    for path in args.exclude_file:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                excludes += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read exclude file {path}: {e.strerror}") from None
    policy = policy_from_args(args)
    if args.prune and policy.is_empty():
        raise UsageError("backup --prune needs at least one keep rule (e.g. --keep-daily 7)")
    options = BackupOptions(excludes=excludes, exclude_if_present=args.exclude_if_present,
                            exclude_caches=args.exclude_caches, one_file_system=args.one_file_system,
                            tags=args.tag, dry_run=args.dry_run)
    if args.volume_size:
        options.volume_size = args.volume_size
    if args.compression is not None:
        options.compression = args.compression
    repo = open_repo(args, out, sync_index=False)
    job = Backup(repo, options, out.progress(), warn=out.warn, note=out.note)
    verification = []     # verify after backup runs under the backup's lock; reported after its summary
    saved = []            # the new version, once stored: an interruption then leaves it saved

    def after_commit(name: str) -> None:
        saved.append(name)
        if not args.no_verify:
            verification.append(verify_backup(repo, name, job.written, args.verify_samples, args.verify_percent,
                                              out.progress()))
    job.after_commit = after_commit
    try:
        name = job.run_locked(args.paths, out.progress())
    except KeyboardInterrupt:
        if not saved:
            raise
        unverified = "" if args.no_verify else \
            ", but verifying it was cut short; 'fsbackup check --read-data' verifies it"
        raise errors.Interrupted(f"version {saved[0][:8]} is saved{unverified}") from None
    s = job.stats
    summary = {"version": name, "dry_run": args.dry_run, "files_new": s.files_new, "files_changed": s.files_changed,
               "files_unchanged": s.files_unchanged, "dirs": s.dirs, "others": s.others,
               "bytes_read": s.bytes_read, "total_size": s.total_size, "blocks_new": s.blocks_new,
               "bytes_new": s.bytes_new_plain, "bytes_added": s.bytes_added, "volumes": s.volumes,
               "duration": round(s.duration, 3), "warnings": s.warnings}
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
            out.warn(f"{len(s.warnings)} file(s) could not be read and are missing from this version (listed above)")
    verified = report_verification(out, name, job.written, verification[0]) if verification else True
    summary["verified"] = verified
    if name and not policy.is_empty():      # retention only after a version was saved
        if not verified:                    # never thin out older versions while the new one is in doubt
            out.warn("retention skipped: the new version's data did not verify; no version was forgotten")
        else:
            try:
                with maintenance_lock(repo, "backup"):
                    repo.ensure_index()
                    summary["forget"] = _forget_by_policy(repo, policy, False, Output.silent() if out.json else out)
                    if args.prune:
                        summary["prune"] = _prune(repo, args, Output.silent() if out.json else out, dry_run=False)
            except (KeyboardInterrupt, errors.Interrupted) as e:
                left = str(e) or INTERRUPTED["prune" if "forget" in summary else "forget"]
                raise errors.Interrupted(f"version {name[:8]} is saved; {left}") from None
    if out.json:
        out.emit_json(summary)
    repo.close()
    if not verified:
        return errors.EXIT_CORRUPT
    return errors.EXIT_PARTIAL if s.warnings else 0


# ---- forget and prune ------------------------------------------------------------------------

def maintenance_lock(repo: Repository, command: str, no_lock: bool = False):
    """The one place where forget, prune and backup's retention step take the repository's
    exclusive lock: nothing may back up (or prune) while versions and volumes are deleted.
    `no_lock` (--no-lock, for a full repository disk) writes none and only refuses a live one."""
    from .locks import no_lock_written, repository_lock
    return no_lock_written(repo) if no_lock else repository_lock(repo, exclusive=True, command=command)


def policy_from_args(args):
    from .retention import Policy, parse_retention_policy, parse_within
    frames, frames_text = parse_retention_policy(args.retention_policy) if args.retention_policy else ((), ())
    return Policy(last=args.keep_last, hourly=args.keep_hourly, daily=args.keep_daily, weekly=args.keep_weekly,
                  monthly=args.keep_monthly, yearly=args.keep_yearly,
                  within=parse_within(args.keep_within) if args.keep_within else None,
                  tags=tuple(args.keep_tag), frames=frames, frames_text=frames_text)


def _short_ids(names: list[str], most: int = 8) -> str:
    shown = ", ".join(name[:8] for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _forget_versions(repo: Repository, names: list[str]) -> None:
    """Remove the versions `names`. Interrupted, it says which of them are gone and which remain,
    as the repository lists them then (the local index catches up at the next command)."""
    from .prune import forget_versions
    try:
        forget_versions(repo, names)
    except KeyboardInterrupt:
        try:
            stored = repo.list_objects(Kind.VERSION)
        except FsbackupError:
            raise errors.Interrupted(INTERRUPTED["forget"]) from None
        gone = [name for name in names if name not in stored]
        left = [name for name in names if name in stored]
        said = f"forget removed {len(gone)} of {len(names)} versions" + (f" ({_short_ids(gone)})" if gone else "")
        if left:
            said += f"; not removed: {_short_ids(left)} (run forget again for them)"
        raise errors.Interrupted(said) from None


def _forget_by_policy(repo: Repository, policy, dry_run: bool, out: Output) -> dict:
    from .prune import plan_forget
    from .tree import list_versions
    groups = plan_forget(list_versions(repo.index), policy)
    removed = [v.id for g in groups for v in g.decision.remove]
    for g in groups:
        out.info(f"{g.host} {' '.join(g.paths)}: keeping {len(g.decision.keep)}, "
                 f"{'would remove' if dry_run else 'removing'} {len(g.decision.remove)}")
        for v, why in g.decision.keep:
            out.info(f"  keep    {v.id[:8]}  {fmt_time(v.time_ns)}  ({', '.join(why)})")
        for v in g.decision.remove:
            out.info(f"  remove  {v.id[:8]}  {fmt_time(v.time_ns)}")
    if not dry_run:
        _forget_versions(repo, removed)
    return {"dry_run": dry_run, "removed": removed,
            "groups": [{"host": g.host, "paths": g.paths, "remove": [v.id for v in g.decision.remove],
                        "keep": [{"id": v.id, "reasons": why} for v, why in g.decision.keep]} for g in groups]}


def _forget_named(repo: Repository, specs: list[str], dry_run: bool, out: Output) -> dict:
    from .tree import resolve_version
    names = list(dict.fromkeys(resolve_version(repo.index, spec).name for spec in specs))
    for name in names:
        out.info(f"{'would remove' if dry_run else 'removing'} {name[:8]}")
    if not dry_run:
        _forget_versions(repo, names)
    return {"dry_run": dry_run, "removed": names}


def _prune(repo: Repository, args, out: Output, dry_run: bool) -> dict:
    from .prune import DEFAULT_MAX_UNUSED, Prune, plan_prune
    max_unused = DEFAULT_MAX_UNUSED if args.max_unused is None else args.max_unused
    plan = plan_prune(repo, max_unused)
    if dry_run:
        out.info(f"prune would delete {len(plan.delete)} unused volume(s) and {len(plan.orphans) + len(plan.unindexed)} leftover "
                 f"object(s), repack {len(plan.repack)} volume(s) ({human_bytes(plan.bytes_to_move)} of live data "
                 f"to copy), keep {plan.kept}; about {human_bytes(plan.bytes_freed)} freed")
        return {"dry_run": True, **plan.as_json()}
    from .backup import DEFAULT_VOLUME_SIZE
    again = "fsbackup prune --no-lock" if getattr(args, "no_lock", False) else "fsbackup prune"
    job = Prune(repo, getattr(args, "volume_size", None) or DEFAULT_VOLUME_SIZE, out.progress(), again)
    s = job.run(plan)
    out.info(f"pruned: deleted {s.volumes_deleted} unused volume(s) and {s.orphans_deleted} leftover object(s), "
             f"repacked {s.volumes_repacked} volume(s) into {s.volumes_written} ({s.blocks_moved} blocks moved); "
             f"freed {human_bytes(s.bytes_deleted - s.bytes_written)} in {human_duration(s.duration)}")
    if s.partial_uploads_deleted:
        out.info(f"removed {s.partial_uploads_deleted} partial upload(s) of runs that stopped midway "
                 f"({human_bytes(s.partial_upload_bytes)})")
    return {"dry_run": False, **s.as_json()}


def cmd_forget(args, out: Output) -> int:
    policy = policy_from_args(args)
    if args.versions and not policy.is_empty():
        raise UsageError("give either version ids or keep rules to forget, not both")
    if not args.versions and policy.is_empty():
        raise UsageError("forget needs at least one keep rule (e.g. --keep-daily 7) or version ids; "
                         "it never removes every version")
    repo = open_repo(args, out)
    with maintenance_lock(repo, "forget", args.no_lock):
        repo.ensure_index()
        if args.versions:
            doc = _forget_named(repo, args.versions, args.dry_run, out)
        else:
            doc = _forget_by_policy(repo, policy, args.dry_run, out)
        if args.prune:
            if args.dry_run:
                out.info("then prune (its plan depends on what is forgotten; see 'fsbackup prune --dry-run' after)")
            else:
                doc["prune"] = _prune(repo, args, out, dry_run=False)
    if out.json:
        out.emit_json(doc)
    repo.close()
    return 0


def cmd_prune(args, out: Output) -> int:
    repo = open_repo(args, out)
    with maintenance_lock(repo, "prune", args.no_lock):
        repo.ensure_index()
        doc = _prune(repo, args, out, args.dry_run)
    if out.json:
        out.emit_json(doc)
    repo.close()
    return 0


def report_verification(out: Output, name: str, written: dict[str, int], report) -> bool:
    if report.ok:
        out.info(f"verified: {len(written)} new volume(s) listed with their sizes, "
                 f"{report.volumes_read} volume(s) downloaded and verified")
        return True
    print_report(out, report)
    print(f"{PROG}: error: verification after backup found damage (listed above); version {name[:8]} is saved, "
          f"but the objects named are damaged: run 'fsbackup check --read-data', then 'fsbackup repair'",
          file=sys.stderr)
    return False


def print_report(out: Output, report) -> None:
    """Every problem on stderr: the object, what is wrong, and the versions and files it affects."""
    for p in report.problems:
        print(f"damaged: {p.object}: {p.what}", file=sys.stderr)
        for version, hit in sorted(p.affected.items()):
            count = hit["count"]
            print(f"  version {version[:8]}" + (f": {count} file(s)" if count is not None else ""), file=sys.stderr)
            for path in hit["paths"]:
                print(f"    {path}", file=sys.stderr)
            if count is not None and count > len(hit["paths"]):
                print(f"    ... and {count - len(hit['paths'])} more", file=sys.stderr)


def cmd_check(args, out: Output) -> int:
    from .check import check
    from .locks import repository_lock
    repo = open_repo(args, out, sync_index=False)
    with repository_lock(repo, exclusive=False, command="check"):
        report = check(repo, args.read_data, args.read_data_subset, out.progress())
    repo.close()
    if out.json:
        out.emit_json(report.as_json())
    elif report.ok:
        read = f"; read {report.volumes_read} volume(s), {human_bytes(report.bytes_read)}" if report.volumes_read else ""
        out.info(f"no damage found: {report.versions} versions, {report.volumes} volumes{read}")
    if not report.ok:
        if not out.json:
            print_report(out, report)
        print(f"{PROG}: error: {len(report.problems)} damaged or missing object(s) (listed above); "
              f"see 'fsbackup repair' (docs/maintenance.md)", file=sys.stderr)
        return errors.EXIT_CORRUPT
    return 0


def cmd_versions(args, out: Output) -> int:
    from .tree import list_versions
    repo = open_repo(args, out)
    versions = list_versions(repo.index)
    if out.json:
        out.emit_json([v.as_json() for v in versions])
    else:
        if not versions:
            out.info("no versions yet")
        for v in versions:
            tags = f"  [{', '.join(v.tags)}]" if v.tags else ""
            out.info(f"{v.short_id}  {fmt_time(v.time_ns)}  {v.host}  {v.file_count} files  "
                     f"{human_bytes(v.total_size)}  +{human_bytes(v.bytes_added)}  {' '.join(v.paths)}{tags}")
    repo.close()
    return 0


def _mode_string(mode: int) -> str:
    return stat.filemode(mode)


def cmd_ls(args, out: Output) -> int:
    from .tree import VersionTree, resolve_version
    repo = open_repo(args, out)
    tree = VersionTree(repo.index, resolve_version(repo.index, args.version))
    top = tree.resolve(args.path)
    top_path = tree.path_of(top)
    rows = []
    for path, node in tree.walk(top, top_path):
        name = os.fsdecode(path)
        if out.json:
            rows.append({"path": name, "type": node.type, "mode": node.mode, "uid": node.uid, "gid": node.gid,
                         "user": node.user, "group": node.grp, "size": node.size, "mtime_ns": node.mtime_ns,
                         "target": os.fsdecode(node.target) if node.target is not None else None})
        elif args.long:
            owner = f"{node.user or node.uid}/{node.grp or node.gid}"
            link = f" -> {os.fsdecode(node.target)}" if node.type == "l" else ""
            print(f"{_mode_string(node.mode)} {owner:>17} {node.size:>12} {fmt_time(node.mtime_ns)} {name}{link}")
        else:
            print(name)
    if out.json:
        out.emit_json(rows)
    repo.close()
    return 0


def cmd_restore(args, out: Output) -> int:
    from .restore import Restore
    from .tree import VersionTree, resolve_version
    blocker = _not_a_folder(args.target)
    if blocker:
        why = "is not a directory" if blocker == os.path.abspath(args.target) else \
            f"cannot be made: {blocker} is a file, not a directory"
        raise UsageError(f"restore target {args.target} {why}; choose another --target")
    repo = open_repo(args, out)
    # The tree is read in one read transaction of a connection of its own: a forget or backup
    # running meanwhile cannot change it under the restore. Where blocks lie is looked up live
    # (repo.index), so blocks a prune moves meanwhile are found at their new place.
    tree_index = Index(repo.index_path)
    try:
        with tree_index.snapshot():
            tree = VersionTree(tree_index, resolve_version(tree_index, args.version))
            job = Restore(repo, tree, args.target, overwrite=args.overwrite, progress=out.progress(),
                          warn=out.warn)
            s = job.run(args.paths or None)
    finally:
        tree_index.close()
    if out.json:
        out.emit_json({"files": s.files, "dirs": s.dirs, "others": s.others, "bytes_written": s.bytes_written,
                       "duration": round(s.duration, 3), "damaged": s.damaged, "warnings": s.warnings})
    else:
        rate = s.bytes_written / s.duration if s.duration else 0
        out.info(f"restored {s.files} files, {s.dirs} dirs, {s.others} other; {human_bytes(s.bytes_written)} "
                 f"in {s.duration:.1f} s ({human_bytes(rate)}/s) to {args.target}")
    repo.close()
    if s.damaged:
        print(f"fsbackup: error: {len(s.damaged)} file(s) could not be restored because their data is damaged "
              f"(listed above)", file=sys.stderr)
        return errors.EXIT_CORRUPT
    return 0


def cmd_repair(args, out: Output) -> int:
    from .locks import repository_lock
    from .repair import repair, summary
    repo = open_repo(args, out, sync_index=False)
    with repository_lock(repo, exclusive=True, command="repair"):
        result, recreated, report, removed = repair(repo, args.read_data, args.read_data_subset,
                                                    args.remove_damaged, out.progress, out.info, out.warn)
    repo.close()
    if out.json:
        out.emit_json({**result, "recreated_index_objects": [index_object(n) for n in recreated],
                       "report": report.as_json(), "removed": removed})
    elif not removed:
        for line in summary(report):
            out.warn(line)
    if report.ok:
        out.info("no damage found")
        return 0
    if args.remove_damaged:
        out.info(f"removed damaged files from {len(removed)} version(s); run 'fsbackup check' to confirm")
        return 0
    if not out.json:
        print_report(out, report)
    print(f"{PROG}: error: {len(report.problems)} damaged or missing object(s) (listed above); "
          f"'fsbackup repair --remove-damaged' removes the affected files from their versions", file=sys.stderr)
    return errors.EXIT_CORRUPT


def cmd_unlock(args, out: Output) -> int:
    from .locks import remove_all_locks, remove_stale_locks
    repo = open_repo(args, out, sync_index=False)
    removed = remove_all_locks(repo) if args.all else remove_stale_locks(repo)
    if out.json:
        out.emit_json([lock.as_json() for lock in removed])
    elif not removed:
        out.info("no stale locks" if not args.all else "no locks")
    for lock in removed:
        out.info(f"removed the lock of {lock.describe()}")
    repo.close()
    return 0


def _key_id(name: str) -> str:
    return parse_object_name(name)[1]


def _find_key(repo: Repository, prefix: str) -> str:
    names = [name for name, _ in repo.key_objects() if _key_id(name).startswith(prefix.lower())]
    if not prefix or not names:
        raise errors.KeyNotFound(f"no key with id {prefix!r}; see 'fsbackup key list'")
    if len(names) > 1:
        raise UsageError(f"key id {prefix!r} is ambiguous; give more of it")
    return names[0]


def _key_row(repo: Repository, name: str, doc: dict) -> dict:
    kdf = doc.get("kdf") if isinstance(doc.get("kdf"), dict) else {}
    return {"id": _key_id(name), "created_ns": doc.get("created"), "host": doc.get("host"),
            "kdf": {k: v for k, v in kdf.items() if k != "salt"}, "in_use": name == repo.key_name,
            "version": doc.get("version", 1) if not doc.get("damaged") else None, "damaged": doc.get("damaged")}


def _key_line(row: dict) -> str:
    """'* 3f9a1c2e  2026-11-24 10:00:00  host  argon2id 65536 KiB, 3 passes, 4 lanes' (* = in use)."""
    created = fmt_time(row["created_ns"]) if isinstance(row["created_ns"], int) else "-" * 19
    kdf = row["kdf"]
    cost = (f"{kdf.get('name')} {kdf.get('memory_kib')} KiB, {kdf.get('iterations')} passes, "
            f"{kdf.get('lanes')} lanes") if kdf else row["damaged"] or "?"
    # A version 1 key (format 1) does not bind the config, and shows the storage its host and
    # time: 'key passwd' replaces it with a version 2 key.
    old = "  (old key: 'fsbackup key passwd' replaces it)" if row["version"] == 1 else ""
    return f"{'*' if row['in_use'] else ' '} {row['id'][:8]}  {created}  {row['host'] or '-'}  {cost}{old}"


def cmd_key(args, out: Output) -> int:
    repo = open_repo(args, out, sync_index=False)
    action = args.key_command
    if action == "list":
        rows = [_key_row(repo, name, doc) for name, doc in repo.key_objects()]
        if out.json:
            out.emit_json(rows)
        else:
            for row in rows:
                print(_key_line(row))
    elif action == "passwd":
        name = repo.change_passphrase(get_new_passphrase(args))
        out.info(f"changed the passphrase: key {_key_id(name)[:8]} replaces the old one")
    elif action == "add":
        name = repo.add_key(get_new_passphrase(args))
        out.info(f"added key {_key_id(name)[:8]}")
    elif action == "remove":
        name = _find_key(repo, args.key_id)
        repo.remove_key(name)
        out.info(f"removed key {_key_id(name)[:8]}")
    if out.json and action != "list":
        out.emit_json({"key": _key_id(name), "action": action})
    repo.close()
    return 0


def cmd_mount(args, out: Output) -> int:
    from .mount import mount
    return mount(args, out, open_repo)


def cmd_umount(args, out: Output) -> int:
    from .mount import umount
    return umount(args.mountpoint, out)


# What an interruption (Ctrl-C) leaves, by command (docs/exit-codes.md). Nothing is ever
# half-written, but each command stops at a different point; a command that knows more at that
# moment (which versions forget removed, whether backup saved its version) raises
# errors.Interrupted saying it instead.
UNCHANGED = "nothing in the repository was changed"
INTERRUPTED = {
    "init": "no repository is made before its config object is stored; if the folder holds only keys/, "
            "empty it and run 'fsbackup init' again",
    "backup": "the backup stopped before saving its version (had it been storing it just then, 'fsbackup "
              "versions' lists it); earlier versions are intact, and the next backup reuses the data already "
              "uploaded and cleans up the rest",
    "forget": "the versions removed so far are gone, the others remain ('fsbackup versions' lists them); "
              "run forget again to finish",
    "prune": "no version lost data (prune can stop at any point); run 'fsbackup prune' again to finish",
    "restore": "the files restored so far are complete, and the file being written was not left half-written; "
               "run the restore again with --overwrite to finish",
    "repair": "the repairs reported so far are done, and nothing else changed; run 'fsbackup repair' again",
    "key": "the change was made or not ('key passwd' stores the new key before it deletes the old one, so both "
           "may remain); 'fsbackup key list' shows the keys",
    "unlock": "the locks reported removed are gone, the others remain",
}

COMMANDS = {"init": cmd_init, "backup": cmd_backup, "forget": cmd_forget, "prune": cmd_prune,
            "check": cmd_check, "versions": cmd_versions, "ls": cmd_ls, "restore": cmd_restore,
            "repair": cmd_repair, "mount": cmd_mount, "umount": cmd_umount, "unlock": cmd_unlock, "key": cmd_key}


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


def main(argv: list[str] | None = None) -> int:
    _fill_closed_standard_fds()
    args = build_parser().parse_args(argv)
    out = Output(args)
    if args.command != "mount":
        _log_warnings_to_stderr()
    try:
        return COMMANDS[args.command](args, out)
    except errors.Interrupted as e:         # the command said what it leaves
        print(f"{PROG}: interrupted: {e}", file=sys.stderr)
        return e.exit_code
    except FsbackupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: {INTERRUPTED.get(args.command, UNCHANGED)}", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line, with a way to see the traceback
        if os.environ.get("FSBACKUP_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (set FSBACKUP_DEBUG=1 for a traceback, "
              "and please report it)", file=sys.stderr)
        return errors.EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
