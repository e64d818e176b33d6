"""`fsbackup copy`: copy versions from another repository, with its own passphrase, into this one."""
from __future__ import annotations

from ..progress import human_bytes, human_duration
from .options import (
    FILTER_HELP,
    Command,
    compression_level,
    source_repository_options,
    version_filter,
    version_filter_options,
    volume_size_arg,
)
from .output import Output
from .repo import hold, lock_wait, open_source_repo, opened

INTERRUPTED = ("the versions copied so far are complete in the destination and the one being copied was not "
               "stored; the next copy reuses the data already uploaded")


def add_arguments(p) -> None:
    p.add_argument("versions", nargs="*", metavar="VERSION",
                   help="source versions to copy (ids, id prefixes or 'latest'); default: every version the "
                        "filters choose that the destination lacks")
    source_repository_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="read what would be copied and count what would be uploaded, but store nothing")
    p.add_argument("--volume-size", metavar="SIZE", type=volume_size_arg, default=None,
                   help="close volumes at about this size, 32K to 4G (default 32M)")
    p.add_argument("--compression", metavar="LEVEL", type=compression_level, default=None,
                   help="zstd level of the blocks uploaded: 1 (fastest) to 19 (smallest), 0 for none (default 2)")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog.versions import list_versions, resolve_version
    from ..engine.copy import Copy, CopyOptions, missing_versions
    from ..errors import UsageError
    options = CopyOptions(dry_run=args.dry_run)
    if args.volume_size:
        options.volume_size = args.volume_size
    if args.compression is not None:
        options.compression = args.compression
    chosen = version_filter(args)
    lock_wait(args)                     # (a usage error before anything is opened)
    with opened(args, out, sync_catalog=False) as dest:
        source = open_source_repo(args)
        try:
            if source.id == dest.id:
                raise UsageError(f"--from-repo {args.from_repo} is the destination repository itself; "
                                 "copy between two repositories")
            source.sync_catalog(out.progress())
            if args.versions:
                candidates = [resolve_version(source.catalog, spec, chosen) for spec in args.versions]
            else:
                candidates = list_versions(source.catalog, chosen)
            # A dry run stores nothing and needs no lock; a copy appends, as a backup does.
            with hold(dest, args, out, "none" if args.dry_run else "append") as lock:
                # As a backup: blocks stored since (by other machines, or by a copy that stopped)
                # are known, and volumes the destination lost are forgotten; nothing is deleted.
                dest.sync_catalog(out.progress())
                if not args.dry_run:
                    for note in dest.forget_lost_volumes():
                        out.note(note)
                to_copy = missing_versions(candidates, dest)
                job = Copy(source, dest, options, out)
                if lock is not None:
                    job.before_commit = lock.ensure_held
                stats = job.run(to_copy)
        finally:
            source.close()
    present = len({v.name for v in candidates}) - len(to_copy)
    if out.json:
        out.emit_json({"dry_run": args.dry_run, "versions_present": present, **stats.as_json()})
        return 0
    for copied in stats.versions:
        dest_name = copied["destination"]
        out.info(f"copied version {copied['source'][:8]}" + (f" as {dest_name[:8]}" if dest_name else ""))
    if args.dry_run:
        out.info(f"dry run: {len(stats.versions)} version(s) would be copied ({present} already in the "
                 f"destination); {stats.blocks_uploaded} block(s) of {human_bytes(stats.bytes_new)} would be "
                 f"uploaded, {human_bytes(stats.bytes_skipped)} the destination holds already")
    else:
        out.info(f"{len(stats.versions)} version(s) copied, {present} already in the destination; uploaded "
                 f"{stats.blocks_uploaded} block(s), {human_bytes(stats.bytes_uploaded)} after compression; "
                 f"skipped {human_bytes(stats.bytes_skipped)} the destination holds already, in "
                 f"{human_duration(stats.duration)}")
    return 0


COMMAND = Command(
    "copy", "copy versions from another repository",
    "Copy versions from the repository --from-repo, which has its own passphrase, into this one\n"
    "(--repo), uploading only the blocks this one lacks: a second copy of your backups elsewhere\n"
    "(a NAS and B2) without reading the backed-up files twice. Every version the destination lacks\n"
    "is copied (the same start time, host and paths: running it again copies nothing), or only the\n"
    "VERSIONs given. The source is only read, and takes no lock (docs/copy.md).\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup copy --repo b2://bucket/laptop --from-repo /mnt/nas/backups --from-password-file ~/.nas-pass\n"
    "  fsbackup copy --repo b2://bucket/laptop --from-repo /mnt/nas/backups --host laptop --tag daily",
    add_arguments, run, INTERRUPTED)
