"""`fsbackup restore`: restore files from a version."""
from __future__ import annotations

import argparse
import os

from .. import errors
from ..catalog import Catalog
from ..errors import UsageError
from ..fsutil import GlobMatcher, not_a_folder
from ..progress import human_bytes
from .options import FILTER_HELP, Command, version_filter, version_filter_options, version_spec_arg
from .output import Output
from .repo import opened

INTERRUPTED = ("the files restored so far are complete, and the file being written was not left half-written; "
               "run the restore again with --overwrite=if-changed to finish")

def overwrite_mode(text: str) -> str:
    """The argument type of --overwrite's MODE (engine.restore.OVERWRITE_MODES)."""
    from ..engine.restore import OVERWRITE_MODES
    if text not in OVERWRITE_MODES:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not always, if-changed or never (a bare --overwrite means always: write it after "
            "VERSION and the PATHs, or as --overwrite=always)")
    return text


def restore_glob(text: str) -> str:
    """The argument type of --include/--exclude: a GLOB that can match (fsutil.GlobMatcher)."""
    pattern = text.rstrip("/")
    if not pattern:
        raise argparse.ArgumentTypeError(f"'{text}' is an empty pattern (e.g. '*.odt' or '/home/*/Documents')")
    if "/" in pattern and pattern[0] not in "/*?[":
        raise argparse.ArgumentTypeError(
            f"'{text}' has a '/', so it matches whole paths in the version, which start with '/' (also "
            f"below a VERSION:SUBPATH): write '*/{pattern}', or the whole path, e.g. '/home/alice/{pattern}'")
    return text


def add_arguments(p) -> None:
    p.add_argument("version", metavar="VERSION[:SUBPATH]", type=version_spec_arg,
                   help="the version ('latest', an id or an id prefix); with :SUBPATH, the contents of that path "
                        "in it land directly in --target (latest:/home/alice/Documents)")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="restore only these paths of the version (relative ones are taken inside SUBPATH)")
    p.add_argument("--target", required=True, metavar="DIR", help="where to restore (created if missing)")
    p.add_argument("--overwrite", nargs="?", const="always", default=None, metavar="MODE", type=overwrite_mode,
                   help="what to do with entries the target already holds: always (replace them; a bare "
                        "--overwrite), if-changed (replace them unless of the same type, size and modification "
                        "time: contents are not compared; a symlink to the same target stays), never (keep them "
                        "and restore the rest). Without --overwrite, a restore into a target holding any of the "
                        "entries stops before writing anything (exit 4). A directory is always used as it is")
    p.add_argument("--include", metavar="GLOB", action="append", default=[], type=restore_glob,
                   help="restore only matching entries (with all below a matching folder, and the folders on the "
                        "way to them); a GLOB with '/' matches whole paths in the version, else names (repeatable; "
                        "e.g. --include '*.odt' --include '/home/alice/Mail')")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[], type=restore_glob,
                   help="leave out matching entries and all below them, as backup --exclude (repeatable; "
                        "wins over --include)")
    p.add_argument("--iinclude", metavar="GLOB", action="append", default=[], type=restore_glob,
                   help="as --include, whatever the case of letters (--iinclude '*.JPG' takes photo.jpg)")
    p.add_argument("--iexclude", metavar="GLOB", action="append", default=[], type=restore_glob,
                   help="as --exclude, whatever the case of letters")
    p.add_argument("--delete", action="store_true",
                   help="afterwards, remove from the restored folders what the version does not hold there (only "
                        "below the restored paths; symlinks are removed, never followed); the target must exist. "
                        "Try it with --dry-run -v first")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing (not even the target): count what would be restored, replaced, left and "
                        "deleted (-v: each path; --json: the counts)")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog.tree import VersionTree
    from ..catalog.versions import resolve_version
    from ..engine.restore import Restore
    blocker = not_a_folder(args.target)
    if blocker:
        why = "is not a directory" if blocker == os.path.abspath(args.target) else \
            f"cannot be made: {blocker} is a file, not a directory"
        raise UsageError(f"restore target {args.target} {why}; choose another --target")
    with opened(args, out) as repo:
        # The tree is read in one read transaction of a connection of its own: a forget or backup
        # running meanwhile cannot change it under the restore. Where blocks lie is looked up live
        # (repo.catalog), so blocks a prune moves meanwhile are found at their new place.
        tree_index = Catalog(repo.catalog_path)
        try:
            with tree_index.snapshot():
                spec = args.version
                tree = VersionTree(tree_index, resolve_version(tree_index, spec.version, version_filter(args)))
                restore = Restore(repo, tree, args.target, overwrite=args.overwrite or False, reporter=out,
                                  include=GlobMatcher(args.include, args.iinclude),
                                  exclude=GlobMatcher(args.exclude, args.iexclude), delete=args.delete,
                                  dry_run=args.dry_run, list_each=args.verbose > 0)
                s = restore.run(args.paths, spec.subpath)
        finally:
            tree_index.close()
    if out.json:
        out.emit_json(s.as_json())
    elif s.dry_run:
        out.info(f"would restore {s.files} files, {s.dirs} dirs, {s.others} other ({human_bytes(s.would_write)}) "
                 f"to {args.target}; of those, {s.replaced} replace what the target holds; would leave "
                 f"{s.unchanged} unchanged, keep {s.kept}, delete {s.deleted}; nothing was written")
    else:
        rate = s.bytes_written / s.duration if s.duration else 0
        out.info(f"restored {s.files} files, {s.dirs} dirs, {s.others} other; {human_bytes(s.bytes_written)} "
                 f"in {s.duration:.1f} s ({human_bytes(rate)}/s) to {args.target}")
        if s.replaced or s.unchanged or s.kept or s.deleted:
            out.info(f"replaced {s.replaced}, left {s.unchanged} unchanged, kept {s.kept}, deleted {s.deleted}")
    if s.damaged:
        raise errors.DamageFound(f"{len(s.damaged)} file(s) could not be restored because their data is "
                                 "damaged (listed above)")
    return 0


COMMAND = Command(
    "restore", "restore files from a version",
    "Restore all of a version, or the given paths, below --target (paths keep their absolute\n"
    "place: /home/a/f restores to TARGET/home/a/f), or with VERSION:SUBPATH the contents of\n"
    "SUBPATH directly into --target (a file: into --target by its name). Existing files are never\n"
    "touched unless --overwrite is given. Every block is authenticated and every file's content\n"
    "hash checked. VERSION is an id, an unambiguous id prefix, or 'latest': the newest version of\n"
    "this machine's host (of the --host given instead). More in docs/restore.md.\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup restore latest /home/alice/report.odt --target /tmp/restored\n"
    "  fsbackup restore latest:/home/alice/Documents --target ~/Documents-back\n"
    "  fsbackup restore latest --include '*.odt' --exclude '/home/*/.cache' --target /tmp/odt\n"
    "  fsbackup restore latest:/etc --target /etc --overwrite=if-changed --delete --dry-run -v\n"
    "  fsbackup restore latest --host desktop --target /tmp/desktop     (the desktop's newest)\n"
    "  fsbackup restore 3f2a9c1e --target /srv/restore --overwrite",
    add_arguments, run, INTERRUPTED)
