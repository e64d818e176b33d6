"""`fsbackup ls`: list the files of a version."""
from __future__ import annotations

import os
import stat

from ..errors import UsageError
from .options import FILTER_HELP, Command, version_filter, version_filter_options, version_spec_arg
from .output import Output, fmt_time
from .repo import opened


def add_arguments(p) -> None:
    p.add_argument("version", metavar="VERSION[:SUBPATH]", type=version_spec_arg,
                   help="the version; latest:/home/alice is the same as 'latest /home/alice'")
    p.add_argument("path", nargs="?", default=None, metavar="PATH")
    p.add_argument("-l", "--long", action="store_true", help="long format: mode, owner, size, time")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog.tree import VersionTree
    from ..catalog.versions import resolve_version
    spec = args.version
    if spec.subpath and args.path:
        raise UsageError("give the path to list once: as VERSION:SUBPATH or as PATH")
    with opened(args, out) as repo:
        tree = VersionTree(repo.catalog, resolve_version(repo.catalog, spec.version, version_filter(args)))
        top = tree.resolve(spec.subpath or args.path or "/")
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
    "List a version's tree, or the part below PATH. VERSION is an id, an unambiguous id prefix, or\n"
    "'latest': the newest version of this machine's host (of the --host given instead).\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup ls latest /home/alice -l\n"
    "  fsbackup ls latest --host desktop --path /home/alice     (the desktop's newest of /home/alice)\n"
    "  fsbackup ls 3f2a9c1e /etc",
    add_arguments, run)
