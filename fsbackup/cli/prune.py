"""`fsbackup prune`: reclaim the space of data no version uses (also run by forget --prune and
backup --prune)."""
from __future__ import annotations

from ..progress import human_bytes, human_duration
from ..repository import Repository, unfinished_forget
from .options import Command, no_lock_option, parse_share, volume_size_arg
from .output import Output
from .repo import opened

INTERRUPTED = "no version lost data (prune can stop at any point); run 'fsbackup prune' again to finish"


def add_arguments(p) -> None:
    p.add_argument("--max-unused", metavar="PERCENT", type=parse_share, default=None,
                   help="repack volumes with more than this share unused (default 25%%)")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="size of the volumes repacking writes, 32K to 4G (default 32M)")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted and repacked")
    no_lock_option(p)


def _say_young(plan, out: Output) -> None:
    """What prune left for later: objects too young to judge, and versions it keeps though
    recorded as forgotten."""
    from ..repository.locks import duration_text, leftover_age
    for name in plan.unfinished_forgets:
        out.warn(unfinished_forget(name))
    if plan.young:
        out.info(f"left {plan.young} unused or leftover object(s) written less than {duration_text(leftover_age())} "
                 "ago: a backup may still be storing them, or the next backup reuses them; a later prune "
                 "deletes them")


def prune_now(repo: Repository, args, out: Output, dry_run: bool) -> dict:
    """Plan a prune and carry it out (or only say what it would do), under the caller's exclusive
    lock; returns what --json prints. `args` gives --max-unused, --volume-size and --no-lock."""
    from ..engine.prune import DEFAULT_MAX_UNUSED, Prune, plan_prune
    max_unused = DEFAULT_MAX_UNUSED if args.max_unused is None else args.max_unused
    plan = plan_prune(repo, max_unused)
    if dry_run:
        leftovers = len(plan.orphans) + len(plan.unindexed)
        out.info(f"prune would delete {len(plan.delete)} unused volume(s) and {leftovers} leftover "
                 f"object(s), repack {len(plan.repack)} volume(s) ({human_bytes(plan.bytes_to_move)} of live data "
                 f"to copy), keep {plan.kept}; about {human_bytes(plan.bytes_freed)} freed")
        _say_young(plan, out)
        return {"dry_run": True, **plan.as_json()}
    from ..repository.volumes import DEFAULT_VOLUME_SIZE
    again = "fsbackup prune --no-lock" if getattr(args, "no_lock", False) else "fsbackup prune"
    job = Prune(repo, getattr(args, "volume_size", None) or DEFAULT_VOLUME_SIZE, out, again)
    s = job.run(plan)
    out.info(f"pruned: deleted {s.volumes_deleted} unused volume(s) and {s.orphans_deleted} leftover object(s), "
             f"repacked {s.volumes_repacked} volume(s) into {s.volumes_written} ({s.blocks_moved} blocks moved); "
             f"freed {human_bytes(s.bytes_deleted - s.bytes_written)} in {human_duration(s.duration)}")
    _say_young(plan, out)
    if s.partial_uploads_deleted:
        out.info(f"removed {s.partial_uploads_deleted} partial upload(s) of runs that stopped midway "
                 f"({human_bytes(s.partial_upload_bytes)})")
    return {"dry_run": False, **s.as_json(), "too_young": plan.young}


def run(args, out: Output) -> int:
    with opened(args, out, lock="exclusive", no_lock=args.no_lock) as repo:
        repo.sync_catalog()
        doc = prune_now(repo, args, out, args.dry_run)
    if out.json:
        out.emit_json(doc)
    return 0


COMMAND = Command(
    "prune", "reclaim the space of data no version uses",
    "Delete volumes that hold no block of any remaining version, and repack volumes whose unused\n"
    "share exceeds --max-unused: their live blocks are copied into new volumes, then they are\n"
    "deleted. Safe to interrupt at any point; run it again to finish.",
    add_arguments, run, INTERRUPTED)
