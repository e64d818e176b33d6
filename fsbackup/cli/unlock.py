"""`fsbackup unlock`: remove stale locks (or every lock)."""
from __future__ import annotations

from .options import Command
from .output import Output
from .repo import opened


def add_arguments(p) -> None:
    p.add_argument("--all", action="store_true",
                   help="remove every lock, live ones too: only when you know no other fsbackup process "
                        "uses the repository (on any machine)")


def run(args, out: Output) -> int:
    from ..repository.locks import remove_all_locks, remove_stale_locks
    with opened(args, out, sync_catalog=False) as repo:
        removed = remove_all_locks(repo) if args.all else remove_stale_locks(repo)
    if out.json:
        out.emit_json([lock.as_json() for lock in removed])
    elif not removed:
        out.info("no stale locks" if not args.all else "no locks")
    for lock in removed:
        out.info(f"removed the lock of {lock.describe()}")
    return 0


COMMAND = Command(
    "unlock", "remove stale locks",
    "Remove the locks left by fsbackup processes that are gone: a lock whose process ran on this\n"
    "host and no longer exists, or that has not been refreshed for 30 minutes. Live locks stay.",
    add_arguments, run, interrupted="the locks reported removed are gone, the others remain")
