"""What the commands share on their command lines: the argument types (each refuses a bad value
with one line saying what it accepts), the global options, the option groups of several commands,
and `Command`, what each command module declares."""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Callable

PROG = "fsbackup"

# What an interruption (Ctrl-C) leaves when the command does not say more (docs/exit-codes.md).
UNCHANGED = "nothing in the repository was changed"


@dataclass(frozen=True)
class Command:
    """A command: its name and help, `add_arguments(parser)` (its own options), `run(args, out)`
    (its exit code), and what an interruption leaves. Nothing is ever half-written, but each
    command stops at a different point; a command that knows more at that moment (which versions
    forget removed, whether backup saved its version) raises errors.Interrupted saying it instead."""
    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., int]
    interrupted: str = UNCHANGED


# ---- argument types -------------------------------------------------------------------------

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _size_text(n: int) -> str:
    """`n` bytes as a size argument is written: the largest unit that divides it (32K, 4G, 0)."""
    unit = max((u for u, factor in SIZE_UNITS.items() if n % factor == 0), key=lambda u: SIZE_UNITS[u]) if n else ""
    return f"{n // SIZE_UNITS[unit]}{unit}"


def size_type(what: str, minimum: int, maximum: int) -> Callable[[str], int]:
    """The argument type of a size in bytes from `minimum` to `maximum`: a number (a fraction too)
    with an optional unit K, M, G, T or P, powers of 1024 (1M = 1MB = 1MiB)."""
    def parse(text: str) -> int:
        t = text.strip().upper().removesuffix("IB").removesuffix("B")
        unit = t[-1] if t and t[-1] in SIZE_UNITS else ""
        try:
            value = float(t[:-1] if unit else t) * SIZE_UNITS[unit]
        except ValueError:
            value = math.nan
        if not minimum <= value <= maximum:     # also false for nan
            raise argparse.ArgumentTypeError(f"'{text}' is not a {what} from {_size_text(minimum)} "
                                             f"to {_size_text(maximum)} (e.g. 32M, 1G)")
        return int(value)
    return parse


# Volumes below the smallest block cut from a large file (256K) hold one block each; below 32K
# the objects and tables cost more than the data. Above 4G the volumes a backup holds in memory
# (about 2 x (uploads in flight + 1) of them) outgrow any machine's memory.
volume_size_arg = size_type("volume size", 32 << 10, 4 << 30)
# 0 turns the mount's block cache off; 1P is beyond any disk it could fill.
cache_size_arg = size_type("cache size", 0, 1 << 50)


def whole_number(minimum: int) -> Callable[[str], int]:
    """The argument type of a whole number of at least `minimum` (a count)."""
    kind = "positive whole number" if minimum == 1 else "whole number"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {kind} ({minimum} or more)")
        return value
    return parse


positive_int = whole_number(1)
count_arg = whole_number(0)


def percent_arg(text: str) -> float:
    """The argument type of a percentage from 0 to 100, with or without '%'."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:                   # also false for nan
        raise argparse.ArgumentTypeError(f"'{text}' is not a percentage from 0 to 100")
    return value


def parse_share(text: str) -> float:
    """A percentage as a fraction from 0 to 1 (prune's --max-unused)."""
    return percent_arg(text) / 100


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_arg(text: str) -> float:
    """The argument type of a duration in seconds: numbers with units s, m (minutes), h and d,
    one after the other (30s, 5m, 2h, 1h30m; 0 for none)."""
    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", t)
    if t == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != t:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration (e.g. 30s, 5m, 2h, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def kib_per_second(text: str) -> int:
    """The argument type of a bandwidth limit in KiB/s: a whole number, 0 for none."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a rate in KiB/s (a whole number, e.g. 512; 0 for no limit)")
    return value


def compression_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"'{text}' is not a compression level from 0 (none) to 19")
    return value


def subset_arg(text: str) -> str:
    """The argument type of --read-data-subset: n/m or a percentage (check.parse_subset)."""
    from ..engine.check import parse_subset
    try:
        parse_subset(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not n/m (e.g. 1/5) or a percentage (e.g. 10%)") from None
    return text


# ---- options of every command, and of several ------------------------------------------------

def host_name(text: str) -> str:
    """A host name for --host: what versions are grouped by, and a folder name in the mount
    (`hosts/<host>`), so it is one path component of printable text."""
    if not text or len(text.encode()) > 255 or text in (".", "..") or "/" in text \
            or any(not ch.isprintable() for ch in text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a host name (printable text, no '/', at most 255 bytes)")
    return text


FILTER_HELP = """\
choosing versions: --host, --tag and --path pick versions (each repeatable). A version matches
when its host is one of the --hosts, it has every tag of one --tag (--tag a,b: both; --tag a
--tag b: either), and it was made of exactly the --paths. 'latest' is the newest matching
version of this machine's host unless --host names others (docs/machines.md)."""


def version_filter_options(p: argparse.ArgumentParser, paths: bool = True) -> None:
    """--host, --tag and --path: which versions a command works on, and which one 'latest' is
    (`version_filter` reads them). `paths`: False for a command whose --path means something else
    (find)."""
    g = p.add_argument_group("choosing versions (docs/machines.md)")
    g.add_argument("--host", metavar="NAME", type=host_name, action="append", default=[],
                   help="versions of host NAME (repeatable: any of them); 'latest' then means the newest of these "
                        "hosts instead of this machine's")
    g.add_argument("--tag", metavar="TAG[,TAG...]", action="append", default=[],
                   help="versions with all these tags (repeatable: any of the lists)")
    if paths:
        g.add_argument("--path", metavar="PATH", action="append", default=[], dest="version_path",
                       help="versions made of exactly these paths (repeat it for each path of a version)")


def version_spec_arg(text: str):
    """The argument type of VERSION[:SUBPATH] (catalog.versions.split_version_spec): a VersionSpec."""
    from ..catalog.versions import split_version_spec
    try:
        return split_version_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def version_filter(args):
    """The catalog.versions.VersionFilter of the options `version_filter_options` added."""
    from ..catalog.versions import VersionFilter
    return VersionFilter.of(args.host, args.tag, getattr(args, "version_path", ()))


def group_by_arg(text: str) -> tuple[str, ...]:
    """The argument type of --group-by: a comma-separated subset of host, paths and tags ('' or
    'none': one group)."""
    fields = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip() and f.strip() != "none"))
    if any(f not in GROUP_FIELDS for f in fields):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of host, paths and tags (e.g. host,paths), "
                                         "or none")
    return fields


GROUP_FIELDS = ("host", "paths", "tags")


def global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after its name. `suppress`: on a command's
    parser, an option not given there leaves what the main parser found."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("global options")
    g.add_argument("--repo", metavar="URL", default=d(None),
                   help="repository: a directory path, b2://BUCKET/PREFIX, s3://BUCKET/PREFIX or "
                        "sftp://USER@HOST[:PORT]/PATH (default: $FSBACKUP_REPOSITORY)")
    g.add_argument("--password-file", metavar="FILE", default=d(None), help="read the passphrase from FILE")
    g.add_argument("--connections", metavar="N", type=positive_int, default=d(None),
                   help="concurrent uploads/downloads to the repository (default: 2 local, 4 B2 and SFTP, 8 S3)")
    g.add_argument("--limit-upload", metavar="KIB", type=kib_per_second, default=d(0),
                   help="upload at most KIB KiB/s, over all connections (default 0: no limit)")
    g.add_argument("--limit-download", metavar="KIB", type=kib_per_second, default=d(0),
                   help="download at most KIB KiB/s, over all connections (default 0: no limit)")
    g.add_argument("--index", metavar="PATH", default=d(None),
                   help="local index file (default: $XDG_CACHE_HOME/fsbackup/<repository id>/index.sqlite)")
    g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print only errors")
    g.add_argument("-v", "--verbose", action="count", default=d(0), help="say more (the mount logs each retry)")
    g.add_argument("--json", action="store_true", default=d(False), help="print results as JSON for scripts")
    g.add_argument("--retry-lock", metavar="DURATION", type=duration_arg, default=d(None),
                   help="wait up to DURATION (e.g. 30s, 5m, 2h) for other commands' locks to go before giving up "
                        "(default 1h; docs/machines.md)")
    g.add_argument("--no-wait", action="store_true", default=d(False),
                   help="do not wait for other commands' locks: fail at once (exit 14)")
    g.add_argument("--accept-missing", action="store_true", default=d(False),
                   help="accept that more than half of the versions or volumes this machine's index knows are "
                        "gone from the repository (refused otherwise: check the repository's folders first)")
    s3_options(parser, d)
    sftp_options(parser, d)


def s3_options(parser: argparse.ArgumentParser, d: Callable) -> None:
    """Where an s3:// repository's store is (cli/repo.py hands them to the S3 backend; docs/s3.md)."""
    g = parser.add_argument_group("S3 options (s3:// repositories)")
    g.add_argument("--s3-endpoint", metavar="URL", default=d(None),
                   help="the S3-compatible store's endpoint, e.g. https://s3.eu-central-003.backblazeb2.com "
                        "(default: $FSBACKUP_S3_ENDPOINT, else AWS)")
    g.add_argument("--s3-region", metavar="REGION", default=d(None),
                   help="the bucket's region (default: $FSBACKUP_S3_REGION, $AWS_REGION, $AWS_DEFAULT_REGION "
                        "or the AWS profile's)")
    g.add_argument("--s3-path-style", action="store_true", default=d(False),
                   help="address buckets by path (http://HOST/BUCKET), as MinIO and many other stores need "
                        "(default: $FSBACKUP_S3_PATH_STYLE)")


def sftp_options(parser: argparse.ArgumentParser, d: Callable) -> None:
    """The keys and known hosts of sftp:// repositories (cli/repo.py hands them to the SFTP backend;
    docs/sftp.md)."""
    g = parser.add_argument_group("SFTP options (sftp:// repositories)")
    g.add_argument("--sftp-identity", metavar="FILE", default=d(None),
                   help="sftp://: log in with this SSH private key only (default: $FSBACKUP_SFTP_IDENTITY, else "
                        "the SSH agent's keys and ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
    g.add_argument("--sftp-known-hosts", metavar="FILE", default=d(None),
                   help="sftp://: the known_hosts file that must hold the server's host key "
                        "(default: $FSBACKUP_SFTP_KNOWN_HOSTS, else ~/.ssh/known_hosts)")


def keep_options(p: argparse.ArgumentParser, title: str) -> None:
    """The keep rules of forget, and of backup's retention step."""
    g = p.add_argument_group("retention", title)
    g.add_argument("--keep-last", metavar="N", type=positive_int, default=0, help="keep the N newest versions")
    for period, unit in (("hourly", "hours"), ("daily", "days"), ("weekly", "ISO weeks"), ("monthly", "months"),
                         ("yearly", "years")):
        g.add_argument(f"--keep-{period}", metavar="N", type=positive_int, default=0,
                       help=f"keep the newest version of each of the last N {unit} that have versions (local time)")
    g.add_argument("--keep-within", metavar="DURATION", default=None,
                   help="keep every version within DURATION of the newest (e.g. 30d, 2w, 1y6m, 12h)")
    g.add_argument("--keep-tag", metavar="TAG", action="append", default=[], help="keep versions with TAG (repeatable)")
    g.add_argument("--retention-policy", metavar="POLICY", default=None,
                   help="Duplicati-style FRAME:INTERVAL,... e.g. 1W:1D,4W:1W,12M:1M (U = unlimited)")
    g.add_argument("--prune", action="store_true", help="prune after forgetting (see 'fsbackup prune')")
    g.add_argument("--max-unused", metavar="PERCENT", type=parse_share, default=None,
                   help="prune: repack volumes with more than this share unused (default 25%%)")


def no_lock_option(p: argparse.ArgumentParser) -> None:
    """--no-lock of forget and prune (locks.no_lock_written)."""
    p.add_argument("--no-lock", action="store_true",
                   help="write no lock: only to free space on a full repository disk, and only when no other "
                        "fsbackup process uses the repository (a live lock still stops it; docs/maintenance.md)")


def read_data_options(p: argparse.ArgumentParser) -> None:
    """How much data check and repair download and verify."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--read-data", action="store_true", help="download and verify every volume")
    g.add_argument("--read-data-subset", metavar="n/m|P%", type=subset_arg, default=None,
                   help="download and verify part n of m (the same volumes each time), or a random P percent")


def source_repository_options(p: argparse.ArgumentParser) -> None:
    """The repository `copy` reads from, and its own passphrase (cli/repo.py `open_source_repo`),
    as the global --repo and --password-file give the destination's."""
    g = p.add_argument_group("source repository")
    g.add_argument("--from-repo", metavar="URL", required=True,
                   help="the repository to copy versions from: a directory path or b2://BUCKET/PREFIX")
    g.add_argument("--from-password-file", metavar="FILE", default=None,
                   help="read the source repository's passphrase from FILE (else $FSBACKUP_FROM_PASSWORD)")
    g.add_argument("--from-password-command", metavar="CMD", default=None,
                   help="a command that prints the source repository's passphrase, run through /bin/sh -c")
