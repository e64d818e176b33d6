"""What the commands print: `Output`, the Reporter the engines are handed, and the formats
several commands share."""
from __future__ import annotations

import argparse
import datetime
import json
import sys

from ..progress import Progress


class Output:
    """The command line's Reporter (progress.Reporter): results on stdout, warnings and notes on
    stderr, progress bars on a terminal. --quiet leaves only warnings and errors; --json leaves
    stdout to the one JSON document (`emit_json`)."""

    def __init__(self, args):
        self.quiet, self.verbose, self.json = args.quiet, args.verbose, args.json

    @classmethod
    def silent(cls) -> "Output":
        return cls(argparse.Namespace(quiet=True, verbose=0, json=True))

    def info(self, msg: str) -> None:
        if not self.quiet and not self.json:
            print(msg)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    def note(self, msg: str) -> None:
        if not self.quiet:
            print(f"note: {msg}", file=sys.stderr)

    def progress(self) -> Progress:
        return Progress(enabled=sys.stderr.isatty() and not self.quiet and not self.json)

    def emit_json(self, doc) -> None:
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")


def fmt_time(ns: int) -> str:
    """Local date and time, or "@<seconds since the epoch>" for a time outside years 1-9999."""
    try:
        return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"@{ns // 1_000_000_000}"


def print_report(report) -> None:
    """Every problem of a check.Report on stderr: the object, what is wrong, and the versions and
    files it affects (check, repair, verify after backup)."""
    for p in report.problems:
        print(f"damaged: {p.object}: {p.what}", file=sys.stderr)
        for version, hit in sorted(p.affected.items()):
            count = hit["count"]
            print(f"  version {version[:8]}" + (f": {count} file(s)" if count is not None else ""), file=sys.stderr)
            for path in hit["paths"]:
                print(f"    {path}", file=sys.stderr)
            if count is not None and count > len(hit["paths"]):
                print(f"    ... and {count - len(hit['paths'])} more", file=sys.stderr)
