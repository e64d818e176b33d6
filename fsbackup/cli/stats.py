"""`fsbackup stats`: how big versions are, how much dedup and compression save, and the
repository's totals, from the local index alone."""
from __future__ import annotations

from ..progress import human_bytes
from .options import FILTER_HELP, Command, version_filter, version_filter_options
from .output import Output, fmt_time
from .repo import opened


def add_arguments(p) -> None:
    p.add_argument("version", nargs="?", metavar="VERSION",
                   help="only this version (default: every version the options below choose)")
    version_filter_options(p)


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def _ratio_text(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def _stats_json(s) -> dict:
    return {"files": s.files, "folders": s.folders, "logical_bytes": s.logical_bytes, "blocks": s.blocks,
            "unique_bytes": s.unique_bytes, "stored_bytes": s.stored_bytes,
            "dedup_ratio": _ratio(s.logical_bytes, s.unique_bytes),
            "compression_ratio": _ratio(s.unique_bytes, s.stored_bytes)}


def run(args, out: Output) -> int:
    from ..catalog.stats import repository_stats, version_stats
    from ..catalog.versions import list_versions, resolve_version
    chosen = version_filter(args)
    with opened(args, out) as repo:
        catalog = repo.catalog
        with catalog.snapshot():          # every number from one state of the index
            versions = ([resolve_version(catalog, args.version, chosen)] if args.version
                        else list_versions(catalog, chosen))
            each = [(v, version_stats(catalog, [v.id])) for v in versions]
            together = version_stats(catalog, [v.id for v in versions])
            storage = repository_stats(catalog)
    repository = {"versions": storage.versions, "blocks": storage.blocks, "plain_bytes": storage.plain_bytes,
                  "stored_bytes": storage.stored_bytes, "volumes": storage.volumes,
                  "volume_bytes": storage.volume_bytes, "logical_bytes": storage.logical_bytes,
                  "dedup_ratio": _ratio(storage.logical_bytes, storage.plain_bytes),
                  "compression_ratio": _ratio(storage.plain_bytes, storage.stored_bytes)}
    if out.json:
        out.emit_json({"versions": [{"id": v.name, "time_ns": v.time_ns, "host": v.host, **_stats_json(s)}
                                    for v, s in each],
                       "chosen": {"versions": len(versions), **_stats_json(together)},
                       "repository": repository})
        return 0
    for v, s in each:
        d = _stats_json(s)
        out.info(f"{v.short_id}  {fmt_time(v.time_ns)}  {v.host}  {s.files} files, {s.folders} folders, "
                 f"{human_bytes(s.logical_bytes)}; unique {human_bytes(s.unique_bytes)}, stored "
                 f"{human_bytes(s.stored_bytes)} (dedup {_ratio_text(d['dedup_ratio'])}, "
                 f"compression {_ratio_text(d['compression_ratio'])})")
    if len(versions) > 1:
        d = _stats_json(together)
        out.info(f"these {len(versions)} versions: {together.files} files, {human_bytes(together.logical_bytes)}; "
                 f"unique {human_bytes(together.unique_bytes)}, stored {human_bytes(together.stored_bytes)} "
                 f"(dedup {_ratio_text(d['dedup_ratio'])}, compression {_ratio_text(d['compression_ratio'])})")
    out.info(f"repository: {storage.versions} versions, {storage.blocks} blocks, {human_bytes(storage.plain_bytes)} "
             f"plain, {human_bytes(storage.stored_bytes)} stored, {storage.volumes} volumes of "
             f"{human_bytes(storage.volume_bytes)} (dedup {_ratio_text(repository['dedup_ratio'])}, "
             f"compression {_ratio_text(repository['compression_ratio'])})")
    return 0


COMMAND = Command(
    "stats", "show sizes, dedup and compression of versions and the repository",
    "For each version (or VERSION alone): its files, folders and logical size (the sum of its\n"
    "files' sizes), its unique data (the plain bytes of the distinct blocks its files use), the\n"
    "bytes those blocks take stored (compressed and encrypted), its dedup ratio (logical over\n"
    "unique) and compression ratio (unique over stored); then the same for the chosen versions\n"
    "together (a block shared by several counts once), and the repository's totals: versions,\n"
    "blocks, their plain and stored bytes, volumes and their bytes, dedup ratio (the logical size\n"
    "of every version over the plain bytes of every block) and compression ratio (plain over\n"
    "stored). Everything comes from the local index (no volume is read). Blocks no version uses\n"
    "any more count in the repository's totals until 'fsbackup prune' removes them.\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup stats latest\n"
    "  fsbackup stats --host laptop\n"
    "  fsbackup stats --json | jq .repository.dedup_ratio",
    add_arguments, run)
