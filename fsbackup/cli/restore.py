"""`fsbackup restore`: restore files from a version."""
from __future__ import annotations

import os

from .. import errors
from ..catalog import Catalog
from ..errors import UsageError
from ..fsutil import not_a_folder
from ..progress import human_bytes
from .options import FILTER_HELP, Command, version_filter, version_filter_options
from .output import Output
from .repo import opened

INTERRUPTED = ("the files restored so far are complete, and the file being written was not left half-written; "
               "run the restore again with --overwrite to finish")


def add_arguments(p) -> None:
    p.add_argument("version", metavar="VERSION")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--target", required=True, metavar="DIR", help="where to restore (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist in the target")
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
                tree = VersionTree(tree_index, resolve_version(tree_index, args.version, version_filter(args)))
                s = Restore(repo, tree, args.target, overwrite=args.overwrite, reporter=out).run(args.paths or None)
        finally:
            tree_index.close()
    if out.json:
        out.emit_json(s.as_json())
    else:
        rate = s.bytes_written / s.duration if s.duration else 0
        out.info(f"restored {s.files} files, {s.dirs} dirs, {s.others} other; {human_bytes(s.bytes_written)} "
                 f"in {s.duration:.1f} s ({human_bytes(rate)}/s) to {args.target}")
    if s.damaged:
        raise errors.DamageFound(f"{len(s.damaged)} file(s) could not be restored because their data is "
                                 "damaged (listed above)")
    return 0


COMMAND = Command(
    "restore", "restore files from a version",
    "Restore all of a version, or the given paths, below --target (paths keep their absolute\n"
    "place: /home/a/f restores to TARGET/home/a/f). Existing files are never touched unless\n"
    "--overwrite is given. Every block is authenticated and every file's content hash checked.\n"
    "VERSION is an id, an unambiguous id prefix, or 'latest': the newest version of this\n"
    "machine's host (of the --host given instead).\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup restore latest /home/alice/report.odt --target /tmp/restored\n"
    "  fsbackup restore latest --host desktop --target /tmp/desktop     (the desktop's newest)\n"
    "  fsbackup restore 3f2a9c1e --target /srv/restore --overwrite",
    add_arguments, run, INTERRUPTED)
