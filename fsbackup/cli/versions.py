"""`fsbackup versions`: list the versions, in groups."""
from __future__ import annotations

from ..progress import human_bytes
from .options import FILTER_HELP, Command, group_by_arg, positive_int, version_filter, version_filter_options
from .output import Output, fmt_time
from .repo import opened


def add_arguments(p) -> None:
    version_filter_options(p)
    p.add_argument("--group-by", metavar="FIELDS", type=group_by_arg, default=("host", "paths"),
                   help="group versions with the same FIELDS: a comma-separated subset of host, paths, tags, or "
                        "none (default host,paths)")
    p.add_argument("--latest", metavar="N", type=positive_int, default=None,
                   help="only the newest N versions of each group")


def run(args, out: Output) -> int:
    from ..catalog.versions import group_versions, list_versions
    chosen = version_filter(args)
    with opened(args, out) as repo:
        versions = list_versions(repo.catalog, chosen)
    groups = group_versions(versions, args.group_by)
    if args.latest:
        shown = {v.id for g in groups for v in g.versions[-args.latest:]}
        versions = [v for v in versions if v.id in shown]
        groups = group_versions(versions, args.group_by)
    if out.json:
        # One list, oldest first, as without groups; each version names its group.
        group_of = {v.id: g.key_json() for g in groups for v in g.versions}
        out.emit_json([{**v.as_json(), "group": group_of[v.id]} for v in versions])
        return 0
    if not versions:
        out.info("no versions yet" if chosen.is_empty() else f"no version matches {chosen.describe()}")
    for g in groups:
        if len(groups) > 1:
            out.info(f"{g.title()}:")
        for v in g.versions:
            tags = f"  [{', '.join(v.tags)}]" if v.tags else ""
            description = f"  {v.description}" if v.description else ""
            out.info(f"{'  ' if len(groups) > 1 else ''}{v.short_id}  {fmt_time(v.time_ns)}  {v.host}  "
                     f"{v.file_count} files  {human_bytes(v.total_size)}  +{human_bytes(v.bytes_added)}  "
                     f"{' '.join(v.paths)}{tags}{description}")
    return 0


COMMAND = Command(
    "versions", "list backup versions",
    "One line per version: id, time, host, files, size, bytes added, paths, [tags] and its\n"
    "description, oldest first, in groups of the same host and paths (--group-by) under a line\n"
    "naming the group when there is more than one. --json lists the versions alone, oldest first,\n"
    "each with a \"group\" naming the fields of its group.\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup versions --host laptop --latest 1     (the newest version of each set of paths)\n"
    "  fsbackup versions --tag monthly,keep           (versions with both tags)\n"
    "  fsbackup versions --group-by host --json",
    add_arguments, run)
