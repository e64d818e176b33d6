"""`fsbackup ls`: list the files of a version."""
from __future__ import annotations

import os
import stat

from .options import Command
from .output import Output, fmt_time
from .repo import opened


def add_arguments(p) -> None:
    p.add_argument("version", metavar="VERSION")
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("-l", "--long", action="store_true", help="long format: mode, owner, size, time")


def run(args, out: Output) -> int:
    from ..catalog.tree import VersionTree
    from ..catalog.versions import resolve_version
    with opened(args, out) as repo:
        tree = VersionTree(repo.catalog, resolve_version(repo.catalog, args.version))
        top = tree.resolve(args.path)
        rows = []
        for path, node in tree.walk(top, tree.path_of(top)):
            name = os.fsdecode(path)
            if out.json:
                rows.append(node.as_json(name))
            elif args.long:
                owner = f"{node.user or node.uid}/{node.grp or node.gid}"
                link = f" -> {os.fsdecode(node.target or b'')}" if node.type == "l" else ""
                print(f"{stat.filemode(node.mode)} {owner:>17} {node.size:>12} {fmt_time(node.mtime_ns)} {name}{link}")
            else:
                print(name)
    if out.json:
        out.emit_json(rows)
    return 0


COMMAND = Command(
    "ls", "list the files of a version",
    "List a version's tree, or the part below PATH. VERSION is an id, an unambiguous id prefix, or 'latest'.",
    add_arguments, run)
