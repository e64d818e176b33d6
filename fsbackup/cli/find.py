"""`fsbackup find`: find entries by name (and place, time, size) across versions."""
from __future__ import annotations

import argparse
import datetime
import os
import time

from ..errors import UsageError
from ..progress import human_bytes
from .options import Command, size_type, version_filter, version_filter_options
from .output import Output, fmt_time
from .repo import opened

size_arg = size_type("size", 0, 1 << 60)


def moment_arg(text: str) -> int:
    """The argument type of --newer/--older: a duration back from now (30d, 2w, 1y6m, 12h: the
    units of --keep-within) or a local date and time (2026-05-01, 2026-05-01T14:30); ns since the epoch."""
    from ..retention import parse_within
    try:
        return int(datetime.datetime.fromisoformat(text.strip()).timestamp() * 1_000_000_000)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        span = parse_within(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration (e.g. 30d, 2w, 1y6m, 12h) or a date "
                                         "(e.g. 2026-05-01 or 2026-05-01T14:30)") from None
    return int(span.before(datetime.datetime.now().astimezone()).timestamp() * 1_000_000_000)


def add_arguments(p) -> None:
    p.add_argument("pattern", metavar="PATTERN",
                   help="a glob matched against each entry's name (not its path): *, ?, [abc], [^abc]; "
                        "case-sensitive")
    p.add_argument("--path", metavar="PATH", default="/", dest="under",
                   help="only entries at or below PATH (an absolute path inside the versions)")
    p.add_argument("--newer", metavar="WHEN", type=moment_arg, default=None,
                   help="only entries modified at or after WHEN: a duration back from now (7d, 2w, 12h) or a date")
    p.add_argument("--older", metavar="WHEN", type=moment_arg, default=None,
                   help="only entries modified before WHEN")
    p.add_argument("--larger", metavar="SIZE", type=size_arg, default=None,
                   help="only entries larger than SIZE (e.g. 100M)")
    p.add_argument("--smaller", metavar="SIZE", type=size_arg, default=None,
                   help="only entries smaller than SIZE")
    version_filter_options(p, paths=False)


def run(args, out: Output) -> int:
    from ..catalog.search import FindQuery, find
    from ..catalog.versions import list_versions
    if not args.pattern:
        raise UsageError("the pattern is empty; give a name or a glob such as '*.odt' (quote it)")
    if not args.under.startswith("/"):
        raise UsageError(f"--path {args.under} is not an absolute path; paths inside versions start with /")
    if args.smaller == 0:
        raise UsageError("--smaller 0 matches nothing; give a size above 0")
    query = FindQuery(args.pattern, os.fsencode(os.path.normpath(args.under)).replace(b"//", b"/"),
                      args.newer, args.older,
                      None if args.larger is None else args.larger + 1,
                      None if args.smaller is None else args.smaller - 1)
    chosen = version_filter(args)
    started = time.monotonic()
    with opened(args, out) as repo:
        versions = list_versions(repo.catalog, chosen)
        found = find(repo.catalog, versions, query)
    if out.json:
        out.emit_json([f.as_json() for f in found])
        return 0
    for f in found:
        out.info(f"{f.version.short_id}  {fmt_time(f.mtime_ns)}  {f.size:>12}  {os.fsdecode(f.path)}"
                 + ("/" if f.type == "d" else ""))
    shown = len({f.version.id for f in found})
    out.note(f"{len(found)} match(es) in {shown} of {len(versions)} version(s) searched, "
             f"{human_bytes(sum(f.size for f in found))} ({time.monotonic() - started:.1f} s)")
    return 0


COMMAND = Command(
    "find", "find files by name across versions",
    "List the entries whose name matches PATTERN in every version (or those --host and --tag\n"
    "choose): version, mtime, size and path, one line each, version by version, oldest first.\n"
    "Only the local index is read: nothing is downloaded. Here --path is a place inside the\n"
    "versions, not a version's backed-up paths.\n\n"
    "choosing versions: --host and --tag pick versions (each repeatable), as in 'fsbackup versions'\n"
    "(--tag a,b: both tags; --tag a --tag b: either).\n\n"
    "examples:\n"
    "  fsbackup find 'report*.odt'\n"
    "  fsbackup find '*.jpg' --path /home/alice/Pictures --newer 30d --larger 5M\n"
    "  fsbackup find core --host server --older 2026-01-01 --json",
    add_arguments, run)
