"""`fsbackup forget`: remove versions by keep rules or by id (also backup's retention step)."""
from __future__ import annotations

from .. import errors
from ..errors import FsbackupError, UsageError
from ..repository import Kind, Repository
from .options import (
    FILTER_HELP,
    Command,
    group_by_arg,
    keep_options,
    no_lock_option,
    version_filter,
    version_filter_options,
    volume_size_arg,
)
from .output import Output, fmt_time
from .prune import prune_now
from .repo import opened

INTERRUPTED = ("the versions removed so far are gone, the others remain ('fsbackup versions' lists them); "
               "run forget again to finish")


def add_arguments(p) -> None:
    p.add_argument("versions", nargs="*", metavar="VERSION",
                   help="remove these versions (ids, id prefixes, or 'latest')")
    keep_options(p, "keep rules")
    version_filter_options(p)
    p.add_argument("--group-by", metavar="FIELDS", type=group_by_arg, default=("host", "paths"),
                   help="apply the keep rules to each group of versions with the same FIELDS on its own: a "
                        "comma-separated subset of host, paths, tags, or none (default host,paths)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed and why the rest stays")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="prune: size of the volumes repacking writes, 32K to 4G (default 32M)")
    no_lock_option(p)


def policy_from_args(args):
    """The retention.Policy of the keep options (keep_options)."""
    from ..retention import Policy, parse_retention_policy, parse_within
    frames, frames_text = parse_retention_policy(args.retention_policy) if args.retention_policy else ((), ())
    return Policy(last=args.keep_last, hourly=args.keep_hourly, daily=args.keep_daily, weekly=args.keep_weekly,
                  monthly=args.keep_monthly, yearly=args.keep_yearly,
                  within=parse_within(args.keep_within) if args.keep_within else None,
                  tags=tuple(args.keep_tag), frames=frames, frames_text=frames_text)


def _short_ids(names: list[str], most: int = 8) -> str:
    shown = ", ".join(name[:8] for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _forget_versions(repo: Repository, names: list[str]) -> None:
    """Remove the versions `names`. Interrupted, it says which of them are gone and which remain,
    as the repository lists them then (the local index catches up at the next command)."""
    from ..engine.prune import forget_versions
    try:
        forget_versions(repo, names)
    except KeyboardInterrupt:
        try:
            stored = repo.list_objects(Kind.VERSION)
        except FsbackupError:
            raise errors.Interrupted(INTERRUPTED) from None
        gone = [name for name in names if name not in stored]
        left = [name for name in names if name in stored]
        said = f"forget removed {len(gone)} of {len(names)} versions" + (f" ({_short_ids(gone)})" if gone else "")
        if left:
            said += f"; not removed: {_short_ids(left)} (run forget again for them)"
        raise errors.Interrupted(said) from None


def forget_by_policy(repo: Repository, policy, dry_run: bool, out: Output, chosen=None,
                     group_by: tuple[str, ...] = ("host", "paths")) -> dict:
    """Remove the versions `policy` does not keep among those `chosen` matches (a
    catalog.versions.VersionFilter; None: every version), each group of `group_by` on its own (or
    only say which, `dry_run`), under the caller's exclusive lock; returns what --json prints."""
    from ..catalog.versions import EVERY_VERSION, list_versions
    from ..engine.prune import plan_forget
    groups = plan_forget(list_versions(repo.catalog, chosen or EVERY_VERSION), policy, group_by=group_by)
    removed = [v.id for g in groups for v in g.decision.remove]
    for g in groups:
        out.info(f"{g.group.title()}: keeping {len(g.decision.keep)}, "
                 f"{'would remove' if dry_run else 'removing'} {len(g.decision.remove)}")
        for v, why in g.decision.keep:
            out.info(f"  keep    {v.id[:8]}  {fmt_time(v.time_ns)}  ({', '.join(why)})")
        for v in g.decision.remove:
            out.info(f"  remove  {v.id[:8]}  {fmt_time(v.time_ns)}")
    if not dry_run:
        _forget_versions(repo, removed)
    return {"dry_run": dry_run, "removed": removed, "groups": [g.as_json() for g in groups]}


def _forget_named(repo: Repository, specs: list[str], dry_run: bool, out: Output, chosen) -> dict:
    from ..catalog.versions import resolve_version
    names = list(dict.fromkeys(resolve_version(repo.catalog, spec, chosen).name for spec in specs))
    for name in names:
        out.info(f"{'would remove' if dry_run else 'removing'} {name[:8]}")
    if not dry_run:
        _forget_versions(repo, names)
    return {"dry_run": dry_run, "removed": names}


def run(args, out: Output) -> int:
    policy = policy_from_args(args)
    if args.versions and not policy.is_empty():
        raise UsageError("give either version ids or keep rules to forget, not both")
    if not args.versions and policy.is_empty():
        raise UsageError("forget needs at least one keep rule (e.g. --keep-daily 7) or version ids; "
                         "it never removes every version")
    with opened(args, out, lock="exclusive", no_lock=args.no_lock) as repo:
        repo.sync_catalog()
        if args.versions:
            doc = _forget_named(repo, args.versions, args.dry_run, out, version_filter(args))
        else:
            doc = forget_by_policy(repo, policy, args.dry_run, out, version_filter(args), args.group_by)
        if args.prune:
            if args.dry_run:
                out.info("then prune (its plan depends on what is forgotten; see 'fsbackup prune --dry-run' after)")
            else:
                doc["prune"] = prune_now(repo, args, out, dry_run=False)
    if out.json:
        out.emit_json(doc)
    return 0


COMMAND = Command(
    "forget", "remove versions by retention rules, or by id",
    "Remove the versions that no keep rule keeps (rules apply to each group of versions, by\n"
    "default each host and set of paths, on its own, as restic's --group-by host,paths; a\n"
    "version is kept when any rule keeps it; the newest of each group is always kept), or the\n"
    "versions named by id. --host, --tag and --path limit the keep rules to the versions they\n"
    "choose; the others are left alone. Their data stays until 'fsbackup prune' (or --prune).\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run\n"
    "  fsbackup forget --host laptop --keep-last 10\n"
    "  fsbackup forget --keep-daily 7 --group-by host          (all paths of a host together)\n"
    "  fsbackup forget --retention-policy 1W:1D,4W:1W,12M:1M --prune\n"
    "  fsbackup forget 3f2a9c1e",
    add_arguments, run, INTERRUPTED)
