"""`fsbackup check`: verify the repository."""
from __future__ import annotations

from .. import errors
from ..progress import human_bytes
from .options import Command, read_data_options
from .output import Output, print_report
from .repo import opened


def add_arguments(p) -> None:
    read_data_options(p)


def run(args, out: Output) -> int:
    from ..engine.check import check
    with opened(args, out, lock="shared", sync_catalog=False) as repo:
        report = check(repo, args.read_data, args.read_data_subset, out)
    if out.json:
        out.emit_json(report.as_json())
    elif report.ok:
        read = (f"; read {report.volumes_read} volume(s), {human_bytes(report.bytes_read)}"
                if report.volumes_read else "")
        out.info(f"no damage found: {report.versions} versions, {report.volumes} volumes{read}")
    if not report.ok:
        if not out.json:
            print_report(report)
        raise errors.DamageFound(f"{len(report.problems)} damaged or missing object(s) (listed above); "
                                 "see 'fsbackup repair' (docs/maintenance.md)")
    return 0


COMMAND = Command(
    "check", "verify the repository",
    "Verify the repository's structure: every version and index object reads, every volume they\n"
    "name exists with the right size, and the local index agrees. With --read-data (or a subset)\n"
    "volumes are downloaded and every block is verified. Damage is reported with the versions and\n"
    "files it affects.\n\n"
    "Exit code 12: something is damaged or missing (see docs/maintenance.md).",
    add_arguments, run)
