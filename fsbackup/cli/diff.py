"""`fsbackup diff`: what changed between two versions."""
from __future__ import annotations

import os

from ..errors import PathNotFound, UsageError
from .options import FILTER_HELP, Command, version_filter, version_filter_options
from .output import Output

MARKS = {"added": "+", "removed": "-", "modified": "M", "metadata": "U"}


def add_arguments(p) -> None:
    p.add_argument("first", metavar="VERSION1")
    p.add_argument("second", metavar="VERSION2")
    p.add_argument("path", nargs="?", default="/", metavar="PATH", help="compare only PATH and what is below it")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog import Catalog
    from ..catalog.search import diff
    from ..catalog.tree import VersionTree
    from ..catalog.versions import resolve_version
    from .repo import opened
    if not args.path.startswith("/"):
        raise UsageError(f"{args.path} is not an absolute path; paths inside versions start with /")
    top = os.fsencode(os.path.normpath(args.path)).replace(b"//", b"/")
    chosen = version_filter(args)
    with opened(args, out) as repo:
        # Both trees are read in one read transaction: a backup or forget meanwhile changes neither.
        catalog = Catalog(repo.catalog_path)
        try:
            with catalog.snapshot():
                before = resolve_version(catalog, args.first, chosen)
                after = resolve_version(catalog, args.second, chosen)
                tops = [_node_id(VersionTree(catalog, v), top) for v in (before, after)]
                if tops == [None, None]:
                    raise PathNotFound(f"{args.path} is in neither version {before.short_id} nor {after.short_id}")
                changes = diff(catalog, before, tops[0], after, tops[1], top)
        finally:
            catalog.close()
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in MARKS}
    if out.json:
        out.emit_json({"before": before.name, "after": after.name, "path": args.path,
                       **{kind: [c.as_json() for c in changes if c.kind == kind] for kind in MARKS}})
        return 0
    for c in changes:
        what = f"  ({', '.join(c.changed)})" if c.changed else ""
        node = c.after or c.before
        slash = "/" if node is not None and node.type == "d" and c.path != b"/" else ""
        out.info(f"{MARKS[c.kind]} {os.fsdecode(c.path)}{slash}{what}")
    out.note(f"{before.short_id} -> {after.short_id}: {counts['added']} added, {counts['removed']} removed, "
             f"{counts['modified']} modified, {counts['metadata']} with metadata changes only")
    return 0


def _node_id(tree, path: bytes) -> int | None:
    try:
        return tree.resolve(path).id
    except PathNotFound:
        return None


COMMAND = Command(
    "diff", "show what changed between two versions",
    "List the paths that differ between VERSION1 and VERSION2 (or below PATH), one a line:\n"
    "  + added      - removed      M modified: another type, content, symlink target or device\n"
    "  U metadata only (mode, owner, mtime or xattrs; the line says which)\n"
    "then a count of each. Only the local index is read: nothing is downloaded. Contents are\n"
    "compared by their keyed hash, so a file rewritten with the same bytes is not modified.\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup diff 3f2a9c1e latest\n"
    "  fsbackup diff 3f2a9c1e 8b0d44a2 /home/alice/Documents --json",
    add_arguments, run)
