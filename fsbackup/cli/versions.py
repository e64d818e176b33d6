"""`fsbackup versions`: list the versions."""
from __future__ import annotations

from ..progress import human_bytes
from .options import Command
from .output import Output, fmt_time
from .repo import opened


def add_arguments(p) -> None:
    pass


def run(args, out: Output) -> int:
    from ..catalog.versions import list_versions
    with opened(args, out) as repo:
        versions = list_versions(repo.catalog)
    if out.json:
        out.emit_json([v.as_json() for v in versions])
        return 0
    if not versions:
        out.info("no versions yet")
    for v in versions:
        tags = f"  [{', '.join(v.tags)}]" if v.tags else ""
        out.info(f"{v.short_id}  {fmt_time(v.time_ns)}  {v.host}  {v.file_count} files  "
                 f"{human_bytes(v.total_size)}  +{human_bytes(v.bytes_added)}  {' '.join(v.paths)}{tags}")
    return 0


COMMAND = Command("versions", "list backup versions",
                  "One line per version: id, time, paths, files, size, bytes added.", add_arguments, run)
