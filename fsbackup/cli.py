"""The command line: parses arguments, calls the engine, prints results, maps errors to exit codes.

It holds no backup logic. Every FsbackupError becomes one line on stderr and its exit code
(docs/exit-codes.md); nothing else leaves as a traceback unless FSBACKUP_DEBUG is set.
"""
from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import stat
import subprocess
import sys

from . import errors
from .backends import Backend, open_backend
from .errors import FsbackupError, UsageError
from .progress import Progress, human_bytes, human_duration
from .repository import Repository

PROG = "fsbackup"

EPILOG = """\
environment:
  FSBACKUP_REPOSITORY       repository URL (a directory path or b2://BUCKET/PREFIX), instead of --repo
  B2_APPLICATION_KEY_ID     Backblaze B2 application key id, for b2:// repositories (docs/b2.md)
  B2_APPLICATION_KEY        Backblaze B2 application key
  FSBACKUP_PASSWORD         the passphrase
  FSBACKUP_PASSWORD_COMMAND a command that prints the passphrase (e.g. 'pass show backup')
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

exit codes: 0 ok, 1 error, 2 usage, 3 backup saved but some files could not be read,
  4 restore would overwrite files, 10 no repository, 11 wrong passphrase, 12 corrupt or missing
  data, 13 version, path or key not found, 14 repository locked by another process, 15 disk
  full, 16 permission denied or storage credentials rejected, 17 storage failure, 130 interrupted
  (see docs/exit-codes.md)
"""


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 32M, 1G)") from None
    return int(value * units[unit])


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.add_argument("--volume-size", metavar="SIZE", type=parse_size, default=None,
                   help="close volumes at about this size (default 32M)")

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
                "Stop with Ctrl-C, 'fsbackup umount MOUNTPOINT' or 'fusermount3 -u MOUNTPOINT'.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--daemon", action="store_true", help="go to the background once the mount is ready")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users (and Samba/NFS servers) see the mount (needs user_allow_other in "
                        "/etc/fuse.conf when not root)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where fetched blocks are cached, encrypted (default: next to the local index)")
    p.add_argument("--cache-size", metavar="SIZE", type=parse_size, default=None,
                   help="bound of the block cache on disk (default: 1G for remote storage, 0 for a local "
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

    command("repair", "rebuild the local index from the repository",
            "Rebuild the local index from the repository's index and version objects (no volume is downloaded).")
    return parser


# ---- helpers --------------------------------------------------------------------------------

class Output:
    def __init__(self, args):
        self.quiet, self.verbose, self.json = args.quiet, args.verbose, args.json

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


def get_passphrase(args, confirm: bool = False) -> bytes:
    if args.password_file:
        try:
            with open(args.password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read password file {args.password_file}: {e.strerror}") from None
    if "FSBACKUP_PASSWORD" in os.environ:
        return os.fsencode(os.environ["FSBACKUP_PASSWORD"])
    if os.environ.get("FSBACKUP_PASSWORD_COMMAND"):
        cmd = os.environ["FSBACKUP_PASSWORD_COMMAND"]
        res = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE)
        if res.returncode != 0:
            raise UsageError(f"FSBACKUP_PASSWORD_COMMAND failed with exit code {res.returncode}")
        return res.stdout.rstrip(b"\r\n")
    if not sys.stdin.isatty():
        raise UsageError("no passphrase: set FSBACKUP_PASSWORD or FSBACKUP_PASSWORD_COMMAND, or use --password-file")
    first = getpass.getpass("new passphrase: " if confirm else "passphrase: ")
    if confirm:
        if getpass.getpass("repeat passphrase: ") != first:
            raise UsageError("the passphrases do not match")
        if not first:
            raise UsageError("an empty passphrase is not allowed")
    return os.fsencode(first)


def get_new_passphrase(args) -> bytes:
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
    if not passphrase:
        raise UsageError("an empty passphrase is not allowed")
    return passphrase


def repo_url(args) -> str:
    url = args.repo or os.environ.get("FSBACKUP_REPOSITORY")
    if not url:
        raise UsageError("no repository given: use --repo URL or set FSBACKUP_REPOSITORY")
    return url


def open_storage(args) -> Backend:
    """The backend for --repo, with --connections applied when given."""
    backend = open_backend(repo_url(args))
    if args.connections:
        backend.connections = args.connections
    return backend


def open_repo(args, out: Output, sync_index: bool = True) -> Repository:
    backend = open_storage(args)
    repo = Repository.open(backend, get_passphrase(args), args.index)
    if sync_index:
        repo.ensure_index(out.progress())
    return repo


def fmt_time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


# ---- commands -------------------------------------------------------------------------------

def cmd_init(args, out: Output) -> int:
    backend = open_storage(args)
    repo = Repository.create(backend, get_passphrase(args, confirm=True), args.index)
    repo.index.set_meta("repository_id", repo.id)
    if out.json:
        out.emit_json({"repository": backend.url, "id": repo.id})
    else:
        out.info(f"created repository {repo.id[:8]} at {backend.url}")
        out.info("keep the passphrase safe: without it the backups cannot be read")
    repo.close()
    return 0


def cmd_backup(args, out: Output) -> int:
    from .backup import Backup, BackupOptions
    excludes = list(args.exclude)
    for path in args.exclude_file:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                excludes += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read exclude file {path}: {e.strerror}") from None
    options = BackupOptions(excludes=excludes, exclude_if_present=args.exclude_if_present,
                            exclude_caches=args.exclude_caches, one_file_system=args.one_file_system,
                            tags=args.tag, dry_run=args.dry_run)
    if args.volume_size:
        options.volume_size = args.volume_size
    repo = open_repo(args, out, sync_index=False)
    job = Backup(repo, options, out.progress(), warn=out.warn, note=out.note)
    name = job.run_locked(args.paths, out.progress())
    s = job.stats
    summary = {"version": name, "dry_run": args.dry_run, "files_new": s.files_new, "files_changed": s.files_changed,
               "files_unchanged": s.files_unchanged, "dirs": s.dirs, "others": s.others,
               "bytes_read": s.bytes_read, "total_size": s.total_size, "blocks_new": s.blocks_new,
               "bytes_new": s.bytes_new_plain, "bytes_added": s.bytes_added, "volumes": s.volumes,
               "duration": round(s.duration, 3), "warnings": s.warnings}
    if out.json:
        out.emit_json(summary)
    else:
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
    repo.close()
    return errors.EXIT_PARTIAL if s.warnings else 0


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
    repo = open_repo(args, out)
    tree = VersionTree(repo.index, resolve_version(repo.index, args.version))
    job = Restore(repo, tree, args.target, overwrite=args.overwrite, progress=out.progress(), warn=out.warn)
    s = job.run(args.paths or None)
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
    backend = open_storage(args)
    repo = Repository.open(backend, get_passphrase(args), args.index)
    result = repo.rebuild_index(out.progress())
    if out.json:
        out.emit_json(result)
    else:
        out.info(f"rebuilt the local index: {result['versions']} versions, {result['volumes']} volumes")
        for obj in result["skipped"]:
            out.warn(f"{obj} names a volume that is missing; its blocks are unavailable")
    repo.close()
    return 0


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
    return name.split("/", 1)[1]


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
            "damaged": doc.get("damaged")}


def _key_line(row: dict) -> str:
    """'* 3f9a1c2e  2026-11-24 10:00:00  host  argon2id 65536 KiB, 3 passes, 4 lanes' (* = in use)."""
    created = fmt_time(row["created_ns"]) if isinstance(row["created_ns"], int) else "-" * 19
    kdf = row["kdf"]
    cost = (f"{kdf.get('name')} {kdf.get('memory_kib')} KiB, {kdf.get('iterations')} passes, "
            f"{kdf.get('lanes')} lanes") if kdf else row["damaged"] or "?"
    return f"{'*' if row['in_use'] else ' '} {row['id'][:8]}  {created}  {row['host'] or '-'}  {cost}"


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
    return umount(args.mountpoint)


COMMANDS = {"init": cmd_init, "backup": cmd_backup, "versions": cmd_versions, "ls": cmd_ls,
            "restore": cmd_restore, "repair": cmd_repair, "mount": cmd_mount, "umount": cmd_umount,
            "unlock": cmd_unlock, "key": cmd_key}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args)
    try:
        return COMMANDS[args.command](args, out)
    except FsbackupError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the repository is unchanged since the last saved version", file=sys.stderr)
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
