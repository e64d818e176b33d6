"""`fsbackup repair`: rebuild the local index, re-create index objects, remove damaged files."""
from __future__ import annotations

from .. import errors
from .options import Command, read_data_options
from .output import Output, print_report
from .repo import opened


def add_arguments(p) -> None:
    read_data_options(p)
    p.add_argument("--remove-damaged", action="store_true",
                   help="write each affected version again without its damaged files, then delete the old one")


def run(args, out: Output) -> int:
    from ..engine.check import repair, summary
    with opened(args, out, lock="exclusive", sync_catalog=False) as repo:
        result = repair(repo, args.read_data, args.read_data_subset, args.remove_damaged, out)
    report = result.report
    if out.json:
        out.emit_json(result.as_json())
    elif not result.removed:
        for line in summary(report):
            out.warn(line)
    if report.ok:
        out.info("no damage found")
        return 0
    if args.remove_damaged:
        out.info(f"removed damaged files from {len(result.removed)} version(s); run 'fsbackup check' to confirm")
        return 0
    if not out.json:
        print_report(report)
    raise errors.DamageFound(f"{len(report.problems)} damaged or missing object(s) (listed above); "
                             "'fsbackup repair --remove-damaged' removes the affected files from their versions")


COMMAND = Command(
    "repair", "rebuild the local index; re-create missing index objects; remove damaged files",
    "Rebuild the local index from the repository's index and version objects, re-create missing or\n"
    "damaged index objects from their volumes, and list versions that use damaged or missing data.\n"
    "With --remove-damaged, those files are removed from the versions (every removed path is\n"
    "printed). --read-data finds damage inside volumes first, as for check.\n\n"
    "Exit code 12: damage remains that repair did not remove.",
    add_arguments, run,
    interrupted="the repairs reported so far are done, and nothing else changed; run 'fsbackup repair' again")
