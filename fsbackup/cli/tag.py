"""`fsbackup tag`: change the tags of stored versions."""
from __future__ import annotations

from ..errors import UsageError
from .options import FILTER_HELP, Command, version_filter, version_filter_options
from .output import Output
from .repo import opened

INTERRUPTED = ("each version's tags are either changed or as they were ('fsbackup versions' shows them); "
               "run the command again to finish")


def add_arguments(p) -> None:
    p.add_argument("versions", nargs="*", metavar="VERSION",
                   help="the versions to change (ids, id prefixes, or 'latest'); none: every version the "
                        "--host, --tag and --path options choose")
    g = p.add_argument_group("changes")
    g.add_argument("--add", metavar="TAG", action="append", default=[], help="add TAG (repeatable)")
    g.add_argument("--remove", metavar="TAG", action="append", default=[], help="remove TAG (repeatable)")
    g.add_argument("--set", metavar="TAG", action="append", default=None,
                   help="replace every tag by these (repeatable; --set '' removes them all)")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog.versions import list_versions, resolve_version
    from ..engine.tags import TagChange, change_tags
    if not (args.add or args.remove or args.set is not None):
        raise UsageError("tag needs --add, --remove or --set")
    if args.set is not None and (args.add or args.remove):
        raise UsageError("give either --set or --add/--remove, not both")
    for tag in [*args.add, *args.remove, *(args.set or [])]:
        if "," in tag:
            raise UsageError(f"'{tag}' holds a comma, which --tag takes as a list: give one tag per option")
    chosen = version_filter(args)
    if not args.versions and chosen.is_empty():
        raise UsageError("name the versions to tag, or choose them with --host, --tag or --path; tag never "
                         "changes every version unasked")
    change = TagChange(tuple(args.add), tuple(args.remove),
                       tuple(t for t in args.set if t) if args.set is not None else None)
    # Appending objects, as a backup does: a forget (which deletes versions) waits for it.
    with opened(args, out, lock="append") as repo:
        if args.versions:
            versions = list({v.id: v for v in (resolve_version(repo.catalog, spec, chosen)
                                               for spec in args.versions)}.values())
        else:
            versions = list_versions(repo.catalog, chosen)
            if not versions:
                out.info(f"no version matches {chosen.describe()}")
        results = change_tags(repo, versions, change, args.dry_run)
    for r in results:
        if r.changed:
            out.info(f"{r.version.short_id}: {'would tag' if args.dry_run else 'tagged'} "
                     f"[{', '.join(r.after)}] (was [{', '.join(r.before)}])")
        else:
            out.info(f"{r.version.short_id}: unchanged [{', '.join(r.after)}]")
    if out.json:
        out.emit_json({"dry_run": args.dry_run, "versions": [r.as_json() for r in results]})
    return 0


COMMAND = Command(
    "tag", "change the tags of versions",
    "Add, remove or set the tags of stored versions. A version object is never rewritten: the\n"
    "new tags are a small record beside it (docs/format.md \"Tag records\"), which every machine\n"
    "reads at its next command. Two machines changing one version's tags at the same moment:\n"
    "the later change wins whole.\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup tag --add keep 3f2a9c1e\n"
    "  fsbackup tag --add before-upgrade latest\n"
    "  fsbackup tag --host laptop --tag daily --remove daily --add weekly\n"
    "  fsbackup tag --set '' 3f2a9c1e               (remove every tag)",
    add_arguments, run, INTERRUPTED)
