"""Benchmark fsbackup against restic and borg (and its mount against a floor) on the same data.

Run it through scripts/bench, which installs the tools first. Every tool goes through the
same cycle on a fresh repository, --runs times, and the table reports medians:

    init (not timed) -> (as root) first backup with a cold page cache, into a repository then
    thrown away -> first backup -> unchanged re-backup -> small edits + backup
    -> repository size -> restore of the newest version into an empty directory

Each timed backup starts with the dataset read once (a warm page cache, the same for every tool
whatever the machine evicted meanwhile); the cold first backup measures reading from the disk.

then, where FUSE is available (/dev/fuse and fusermount3), the mount scenario on the same
repository: a fourth backup adds one big file (--big-file-mb) and two directories of 10,000
and 5,000 small files (a few hundred bytes to a few KiB: source code, text, logs, binary
formats' magic numbers, some names without an extension). Then fresh mounts (fsbackup mount /
restic mount / borg mount -f / floorfs) measure: the time from starting the mount to the first
listings, the first byte of a file in the oldest version, find and cp -a over the third version
(the one the restore step restored; MB/s and seconds, to set against the restore), and on a
mount of their own each: find | xargs cat of every file of that version (files/s), ls -l of the
10,000-file directory, GNOME's `gio list` with content types (as a file manager lists) of the
5,000-file one, with gio on the original directory as the baseline, and cat of the big file
with cold and warm caches; and the mount processes' peak RSS. "Cold" means a fresh mount, an
empty fsbackup --cache-dir and, when the benchmark may (as root), the kernel's page cache
dropped after sync before each measured step. --mount-only still makes the backups (untimed);
--no-mount skips the mount scenario.

The floor is scripts/floorfs.py: the same versions (tar snapshots, made untimed) served from
memory by pyfuse3 on trio alone, what a Python FUSE mount costs on this machine at the least.
It takes part in the mount scenario only. The ratio columns divide fsbackup's median by each
peer's (the floor included): where lower is better, below 1x means fsbackup is better; where
higher is better, above 1x does.

--fleet instead backs up 4 machines (each --size-mb: a tree common to all, 60% of it, plus a
tree of its own) into one repository per tool, all at once and then one after another, fsbackup
and restic (borg's exclusive lock makes its machines queue): wall and CPU time, and the
repository's size before and after a prune that keeps one copy of every block (untimed).

--backend s3 instead starts a local S3 server (moto's server mode, a test dependency) and puts
fsbackup's and restic's repositories in fresh buckets on it each run: the first backup's MB/s
(--size-mb of data plus the --big-file-mb file), the restore's, and a cold `cat` of the big file
through a fresh mount of each.

Tools are interleaved run by run (fsbackup, restic, borg, floor, fsbackup, ...) so that a slow
phase of the machine does not land on one tool only. Everything happens below one
temporary directory that is removed at the end. Only the standard library is used (and boto3,
fsbackup's own dependency, for --backend s3).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

PASSWORD = "bench-password"  # the same secret for every tool; key derivation is part of each timed step
MIB = 1 << 20
MB = 1_000_000  # throughputs are in MB/s (10^6 bytes), the unit restic and borg users are used to
SMALL_FILE_LIMIT = 64 * 1024  # with --data, files below this size count as "small" for the edits
EDIT_FRACTION = 0.01  # share of small files touched or modified before the third backup
INSERT_SIZE = 100  # bytes inserted in the middle of the largest file before the third backup
# Tools may treat files changed within the last second as "racily clean" and re-read them;
# waiting this long after writing data keeps that effect out of every tool's timings.
SETTLE_SECONDS = 1.1
CLEANUP_SETTLE_SECONDS = 20.0
# Files in the two directories of small files the fourth backup adds: ls -l reads one through
# the mount, GNOME's gio (what file managers use) lists the other with sniffed content types.
WIDE_LS_FILES = 10_000
WIDE_GIO_FILES = 5_000
GIO_ATTRIBUTES = "standard::content-type,standard::size"


def log(message: str) -> None:
    """Progress goes to stderr so that --json output on stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Running one command and measuring it
# --------------------------------------------------------------------------------------

class Command(NamedTuple):
    argv: list[str]
    cwd: Path | None = None


@dataclass
class Measurement:
    seconds: float
    peak_rss_bytes: int | None  # None without GNU time


class StepFailed(Exception):
    """A tool's command failed; the message is what to show for that tool in the report."""


def last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return lines[-1][:200]
    return ""


# GNU time measures peak RSS. os.wait4 on our own child would be simpler but is wrong:
# Linux records the RSS high-water mark of the address space a child replaces at exec,
# and with vfork/posix_spawn that is the benchmark's own (after generating the dataset,
# hundreds of MiB). time forks the tool from its own tiny address space instead.
GNU_TIME = "/usr/bin/time"


def run_step(command: Command, env: dict[str, str], log_dir: Path, step: str) -> Measurement:
    """Runs one command to completion and returns its wall time and peak RSS.

    Output goes to files rather than pipes: nothing needs draining while the tool runs, and
    the error's last line is there to report afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = step.replace(" ", "-")
    out_path, err_path = log_dir / f"{stem}.out", log_dir / f"{stem}.err"
    rss_path = log_dir / f"{stem}.rss"
    argv = command.argv
    if os.access(GNU_TIME, os.X_OK):
        argv = [GNU_TIME, "-o", str(rss_path), "-f", "%M", *argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        try:
            returncode = subprocess.run(argv, cwd=command.cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err).returncode
        except OSError as e:
            raise StepFailed(f"{step}: cannot run {argv[0]}: {e.strerror}") from None
        seconds = time.perf_counter() - start
    if returncode != 0:
        reason = last_line(err_path) or last_line(out_path) or "no output"
        status = f"exit status {returncode}"
        with contextlib.suppress(OSError):  # time reports a crash, which leaves no message
            crash = [line for line in rss_path.read_text().splitlines() if "terminated by signal" in line]
            status = crash[0].replace("Command terminated", "killed") if crash else status
        raise StepFailed(f"{step}: {status}: {reason}")
    rss = last_line(rss_path)  # time writes "%M" (KiB) as its last line
    return Measurement(seconds, int(rss) * 1024 if rss.isdigit() else None)


def command_output(argv: list[str]) -> str:
    """First line of a quick informational command (versions), or '' if it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else ""


# --------------------------------------------------------------------------------------
# Tool adapters: only the command lines differ between tools
# --------------------------------------------------------------------------------------

@dataclass
class Sandbox:
    """The directories of one tool for one run; removed when the run is over."""
    root: Path

    @property
    def repo(self) -> Path:  # not created here: each tool's init creates it
        return self.root / "repo"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def restore(self) -> Path:
        return self.root / "restore"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


class Tool:
    """How to drive one backup program. Subclasses only say which commands to run.

    `label` names a backup; tools that can address "the newest version" directly ignore it.
    The mount methods say how to serve the repository as a filesystem in the foreground
    (until unmounted) and where its versions appear. A mount_only tool takes part in the
    mount scenario alone: its backups are made untimed, and measures() leaves out the
    metrics that would mean nothing for it.
    """
    name = ""
    executable = ""
    mount_only = False

    def measures(self, key: str) -> bool:
        """Whether this tool's numbers for the metric are reported."""
        return True

    def installed(self) -> bool:
        return shutil.which(self.executable) is not None

    def version(self) -> str:
        return command_output([self.executable, "--version"]) or "unknown"

    def environment(self, box: Sandbox) -> dict[str, str]:
        """Variables added to the benchmark's environment for every command of this tool."""
        raise NotImplementedError

    def init(self, box: Sandbox) -> Command:
        raise NotImplementedError

    def backup(self, box: Sandbox, source: Path, label: str) -> Command:
        raise NotImplementedError

    def restore(self, box: Sandbox, label: str) -> Command:
        """Restores the newest backup into box.restore, which exists and is empty."""
        raise NotImplementedError

    def mount(self, box: Sandbox, mountpoint: Path, cache_dir: Path) -> Command:
        """Serves the repository at mountpoint in the foreground until it is unmounted.
        cache_dir is a fresh empty directory for tools that keep fetched data on disk."""
        raise NotImplementedError

    def versions_dir(self, mountpoint: Path) -> Path:
        """The directory of the mount holding one directory per version."""
        raise NotImplementedError

    def order_versions(self, names: list[str], labels: list[str]) -> list[str]:
        """The version directories among names, oldest first. labels are the backups'
        labels in the order they were made. By default names are times, with a numbered
        suffix when two versions share a second."""
        def key(name: str) -> tuple[str, int]:
            base, sep, n = name.rpartition(self.duplicate_separator)
            if sep and n.isdigit() and base:
                return base, int(n)
            return name, 0
        return sorted((n for n in names if n != "latest"), key=key)

    duplicate_separator = "_"


class FsBackupTool(Tool):
    name = "fsbackup"
    executable = "fsbackup"

    def version(self) -> str:
        version = command_output([self.executable, "--version"])
        if not version:  # the CLI may have no --version: ask the installed package instead
            from importlib import metadata
            with contextlib.suppress(metadata.PackageNotFoundError):
                version = "fsbackup " + metadata.version("fsbackup")
        return version or "unknown"

    def environment(self, box: Sandbox) -> dict[str, str]:
        return {"FSBACKUP_REPOSITORY": str(box.repo), "FSBACKUP_PASSWORD": PASSWORD,
                "XDG_CACHE_HOME": str(box.cache)}

    def _cli(self, box: Sandbox, *args: str) -> list[str]:
        # A per-run index file: a leftover index from an earlier run would make backups look
        # faster than they are for a new user.
        return [self.executable, "-q", "--index", str(box.index), *args]

    def init(self, box: Sandbox) -> Command:
        return Command(self._cli(box, "init"))

    def backup(self, box: Sandbox, source: Path, label: str) -> Command:
        return Command(self._cli(box, "backup", str(source)))

    def restore(self, box: Sandbox, label: str) -> Command:
        return Command(self._cli(box, "restore", "latest", "--target", str(box.restore)))

    def mount(self, box: Sandbox, mountpoint: Path, cache_dir: Path) -> Command:
        return Command(self._cli(box, "mount", "--cache-dir", str(cache_dir), str(mountpoint)))

    def versions_dir(self, mountpoint: Path) -> Path:
        return mountpoint / "versions"  # versions/2024-05-01_10-11-12, _2 for the same second


class ResticTool(Tool):
    name = "restic"
    executable = "restic"

    def version(self) -> str:
        return command_output([self.executable, "version"]) or "unknown"

    def environment(self, box: Sandbox) -> dict[str, str]:
        return {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(box.cache)}

    def init(self, box: Sandbox) -> Command:
        return Command([self.executable, "init", "--repo", str(box.repo)])

    def backup(self, box: Sandbox, source: Path, label: str) -> Command:
        # --quiet matches fsbackup's -q: no progress output to produce.
        return Command([self.executable, "backup", "--quiet", "--repo", str(box.repo), str(source)])

    def restore(self, box: Sandbox, label: str) -> Command:
        return Command([self.executable, "restore", "latest", "--repo", str(box.repo),
                        "--target", str(box.restore)])

    def mount(self, box: Sandbox, mountpoint: Path, cache_dir: Path) -> Command:
        return Command([self.executable, "mount", "--repo", str(box.repo), str(mountpoint)])

    def versions_dir(self, mountpoint: Path) -> Path:
        return mountpoint / "snapshots"  # snapshots/2024-05-01T10:11:12Z, -1 for the same second

    duplicate_separator = "-"


class BorgTool(Tool):
    name = "borg"
    executable = "borg"

    def environment(self, box: Sandbox) -> dict[str, str]:
        # BORG_BASE_DIR moves borg's cache, config, keys and security dirs out of $HOME.
        return {"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": str(box.cache),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def init(self, box: Sandbox) -> Command:
        return Command([self.executable, "init", "--encryption=repokey-blake2", str(box.repo)])

    def backup(self, box: Sandbox, source: Path, label: str) -> Command:
        # zstd level 3: the same algorithm and level as fsbackup's default.
        return Command([self.executable, "create", "--compression", "zstd,3",
                        f"{box.repo}::{label}", str(source)])

    def restore(self, box: Sandbox, label: str) -> Command:
        # borg 1.2 has no "latest" alias, and extracts into the current directory.
        return Command([self.executable, "extract", f"{box.repo}::{label}"], cwd=box.restore)

    def mount(self, box: Sandbox, mountpoint: Path, cache_dir: Path) -> Command:
        return Command([self.executable, "mount", "-f", str(box.repo), str(mountpoint)])

    def versions_dir(self, mountpoint: Path) -> Path:
        return mountpoint  # one directory per archive, named by its label

    def order_versions(self, names: list[str], labels: list[str]) -> list[str]:
        return [label for label in labels if label in names]


FLOORFS = Path(__file__).with_name("floorfs.py")


class FloorTool(Tool):
    """The floor: scripts/floorfs.py serves the same versions from memory through pyfuse3
    alone, the lower bound of a Python FUSE mount. Its "backups" are tar snapshots, so it has
    no backup, restore or repository numbers; nor a meaningful mount RSS, since it holds every
    snapshot in memory by design."""
    name = "floor"
    executable = "tar"
    mount_only = True

    def installed(self) -> bool:
        from importlib.util import find_spec
        return (super().installed() and FLOORFS.exists()
                and all(find_spec(m) is not None for m in ("pyfuse3", "trio")))

    def version(self) -> str:
        from importlib import metadata
        try:
            return (f"floorfs.py on pyfuse3 {metadata.version('pyfuse3')}, "
                    f"trio {metadata.version('trio')}")
        except metadata.PackageNotFoundError:
            return "unknown"

    def measures(self, key: str) -> bool:
        return key != "mount_rss_mib" and any(m.key == key and m.group == "mount" for m in METRICS)

    def environment(self, box: Sandbox) -> dict[str, str]:
        return {}

    def init(self, box: Sandbox) -> Command:
        return Command(["mkdir", str(box.repo)])

    def backup(self, box: Sandbox, source: Path, label: str) -> Command:
        # POSIX tar keeps times to the nanosecond; the member names are the source's absolute
        # path without its leading slash, which floorfs shows below the label, as borg does.
        return Command([self.executable, "--format=posix", "-cf", str(box.repo / f"{label}.tar"),
                        "-C", "/", str(source.relative_to("/"))])

    def restore(self, box: Sandbox, label: str) -> Command:
        raise NotImplementedError("the floor takes part in the mount scenario only")

    def mount(self, box: Sandbox, mountpoint: Path, cache_dir: Path) -> Command:
        return Command([sys.executable, str(FLOORFS), str(box.repo), str(mountpoint)])

    versions_dir = BorgTool.versions_dir  # one directory per snapshot, named by its label
    order_versions = BorgTool.order_versions


ALL_TOOLS: list[Tool] = [FsBackupTool(), ResticTool(), BorgTool(), FloorTool()]
SUBJECT = "fsbackup"  # the tool the ratio columns divide by its peers


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------

@dataclass
class Dataset:
    root: Path
    description: str
    small_files: list[Path]
    large_files: list[Path]


def tree_totals(root: Path) -> tuple[int, int]:
    """(regular files, bytes) below root, not following symlinks."""
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                size += st.st_size
    return files, size


def repository_bytes(root: Path) -> int:
    """Apparent size of everything in the repository (du --apparent-size -b).

    Apparent size rather than allocated blocks, so the number does not depend on the block
    size of the filesystem the benchmark happens to run on."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# Vocabulary for synthetic source code and logs: repeated identifiers and keywords give
# text that zstd compresses about as well as real code and logs (3-5x).
WORDS = ("self value index buffer count result config request response handler error "
         "block chunk stream offset length version path name data item entry node tree "
         "cache table key hash size start stop status user client server session token").split()
KEYWORDS = ["def", "return", "if", "else", "for", "while", "import", "from", "class", "with"]
LOG_LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]


def _code_line(rng: random.Random) -> str:
    indent = "    " * rng.randint(0, 3)
    a, b, c = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
    shape = rng.randrange(5)
    if shape == 0:
        return f"{indent}{a}_{b} = {c}.{rng.choice(WORDS)}({a}, {rng.randint(0, 4096)})\n"
    if shape == 1:
        return f"{indent}{rng.choice(KEYWORDS)} {a}_{b} in {c}:\n"
    if shape == 2:
        return f"{indent}# {a} {b} {c} {rng.choice(WORDS)} {rng.choice(WORDS)}\n"
    if shape == 3:
        return f"{indent}return {a}({b}_{c}, key={rng.randint(0, 1 << 16):#x})\n"
    return "\n"


def _log_message(rng: random.Random) -> str:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    return (f"{a} {b} {rng.choice(WORDS)} id={{id}} {rng.choice(WORDS)}={{n}} "
            f"took {{ms}}ms")


def _write_text_files(root: Path, budget: int, rng: random.Random) -> list[Path]:
    """Thousands of small files in nested directories: a source tree and a log tree.

    Files pick lines from a shared pool, as real projects share idioms, plus unique numbers
    and timestamps, so no two files are identical except the deliberate boilerplate."""
    code_pool = [_code_line(rng) for _ in range(20000)]
    log_pool = [_log_message(rng) for _ in range(2000)]
    boilerplate = "".join(code_pool[:40]).encode()  # the same file in every package: dedupable
    files: list[Path] = []
    written = 0
    package = 0
    while written < budget:
        package += 1
        if package % 3:  # two packages of source code for each directory of logs
            pkg = root / "src" / f"pkg{package // 10:02d}" / f"module{package:03d}"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_bytes(boilerplate)
            files.append(pkg / "__init__.py")
            written += len(boilerplate)
            for i in range(rng.randint(10, 60)):
                lines = rng.choices(code_pool, k=int(rng.lognormvariate(4.5, 0.9)) + 5)
                path = pkg / f"{rng.choice(WORDS)}_{i:03d}.py"
                data = "".join(lines).encode()
                path.write_bytes(data)
                files.append(path)
                written += len(data)
        else:
            logs = root / "logs" / f"{2020 + package % 5}" / f"{package % 12 + 1:02d}"
            logs.mkdir(parents=True, exist_ok=True)
            for i in range(rng.randint(5, 20)):
                t = rng.randint(1_600_000_000, 1_700_000_000)
                out = []
                for _ in range(int(rng.lognormvariate(4.0, 1.0)) + 5):
                    t += rng.randint(0, 5)
                    message = rng.choice(log_pool).format(id=rng.randint(0, 99999),
                                                          n=rng.randint(0, 999),
                                                          ms=rng.randint(0, 3000))
                    out.append(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t))} "
                               f"{rng.choice(LOG_LEVELS):<7} {message}\n")
                path = logs / f"app{package:03d}-{i:02d}.log"
                data = "".join(out).encode()
                path.write_bytes(data)
                files.append(path)
                written += len(data)
    return files


# Low-entropy bytes: random bytes mapped onto a 16-symbol alphabet compress to about half.
_SIXTEEN_SYMBOLS = bytes(b"0123456789abcdef"[i % 16] for i in range(256))


def _write_large_file(path: Path, size: int, rng: random.Random, earlier: list[bytes]) -> None:
    """A partly compressible binary file made of variable-sized regions.

    Region kinds: random (incompressible), low-entropy (compresses ~2x), a short pattern
    repeated (compresses and deduplicates), zeros (sparse-like), and a copy of a region seen
    earlier in this or another file (cross-file deduplication, like VM images)."""
    written = 0
    with open(path, "wb") as f:
        while written < size:
            length = min(size - written, rng.randint(256 * 1024, 4 * MIB))
            kind = rng.choices(["random", "low", "pattern", "zeros", "copy"],
                               weights=[35, 30, 15, 8, 12])[0]
            if kind == "copy" and earlier:
                region = rng.choice(earlier)[:length]
            elif kind == "low":
                region = rng.randbytes(length).translate(_SIXTEEN_SYMBOLS)
            elif kind == "pattern":
                region = (rng.randbytes(rng.randint(64, 8192)) * (length // 64 + 1))[:length]
            elif kind == "zeros":
                region = bytes(length)
            else:
                region = rng.randbytes(length)
            if kind != "copy" and len(earlier) < 32:
                earlier.append(region)
            f.write(region)
            written += len(region)


# Common binary formats by their magic numbers: file managers sniff the first bytes of a file
# whose name says nothing. An empty extension is a file without one (executables, downloads).
BINARY_HEADERS = [
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ("", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("", b"\x7fELF\x02\x01\x01\x00"), ("so", b"\x7fELF\x02\x01\x01\x00"),
    ("jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), ("", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    ("gz", b"\x1f\x8b\x08\x00"), ("pdf", b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"),
    ("", b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n"), ("zip", b"PK\x03\x04\x14\x00\x00\x00"),
]


def _wide_file(rng: random.Random, code_pool: list[str], log_pool: list[str]) -> tuple[str, bytes]:
    """(extension, content) of one file of a few hundred bytes to a few KiB: source code,
    prose, JSON, logs, a shell script, or a binary format's header and random bytes."""
    size = min(max(int(rng.lognormvariate(7.0, 0.8)), 200), 8192)  # median about 1.1 KiB
    kind = rng.choices(["py", "c", "js", "prose", "json", "log", "script", "binary"],
                       weights=[20, 10, 10, 15, 8, 8, 5, 24])[0]
    if kind == "binary":
        ext, header = rng.choice(BINARY_HEADERS)
        return ext, header + rng.randbytes(size - len(header))
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    if kind == "py":
        ext, line = "py", lambda: rng.choice(code_pool)
    elif kind == "c":
        ext = rng.choice(["c", "h"])
        line = lambda: rng.choice([  # noqa: E731
            f"#include <{rng.choice(WORDS)}.h>\n",
            f"static int {rng.choice(WORDS)}_{rng.choice(WORDS)}(struct {rng.choice(WORDS)} *p) "
            f"{{ return p->{rng.choice(WORDS)} + {rng.randint(0, 999)}; }}\n",
            f"/* {words(6)} */\n", "}\n"])
    elif kind == "js":
        ext = "js"
        line = lambda: rng.choice([  # noqa: E731
            f"const {rng.choice(WORDS)} = require('./{rng.choice(WORDS)}');\n",
            f"function {rng.choice(WORDS)}({rng.choice(WORDS)}) {{ return {rng.randint(0, 99)}; }}\n",
            f"// {words(5)}\n"])
    elif kind == "prose":  # notes and READMEs, often without an extension
        ext = rng.choice(["md", "txt", "", ""])
        line = lambda: f"{words(rng.randint(5, 14)).capitalize()}.\n"  # noqa: E731
    elif kind == "json":
        ext = "json"
        line = lambda: f'  "{rng.choice(WORDS)}_{rng.randint(0, 99)}": "{words(2)}",\n'  # noqa: E731
    elif kind == "log":
        ext = rng.choice(["log", ""])
        line = lambda: rng.choice(log_pool).format(  # noqa: E731
            id=rng.randint(0, 99999), n=rng.randint(0, 999), ms=rng.randint(0, 3000)) + "\n"
    else:
        ext, line = rng.choice(["sh", ""]), lambda: f"{rng.choice(WORDS)} --{words(2).replace(' ', '-')}\n"
    out = ["#!/bin/sh\n" if kind == "script" else "{\n" if kind == "json" else ""]
    length = len(out[0])
    while length < size:
        out.append(line())
        length += len(out[-1])
    return ext, "".join(out).encode()[:size]


def write_wide_dir(path: Path, count: int, rng: random.Random) -> None:
    """One directory of count small files of varied kinds (see _wide_file), as a downloads
    folder or a flat project: what ls -l and a file manager list."""
    path.mkdir(parents=True)
    code_pool = [_code_line(rng) for _ in range(2000)]
    log_pool = [_log_message(rng) for _ in range(200)]
    for i in range(count):
        ext, data = _wide_file(rng, code_pool, log_pool)
        name = f"{rng.choice(WORDS)}_{i:05d}" + (f".{ext}" if ext else "")
        (path / name).write_bytes(data)


def generate_dataset(root: Path, size_mb: int, seed: int) -> Dataset:
    """The same files for the same (size, seed): about 30% small text, 70% large binary."""
    rng = random.Random(seed)
    total = size_mb * MIB
    small = _write_text_files(root / "text", int(total * 0.3), rng)
    small_bytes = sum(p.stat().st_size for p in small)
    large: list[Path] = []
    large_budget = max(total - small_bytes, MIB)
    weights = [0.4, 0.3, 0.2, 0.1]  # a few large files of different sizes
    (root / "images").mkdir()
    earlier: list[bytes] = []
    for i, w in enumerate(weights):
        path = root / "images" / f"disk{i}.img"
        _write_large_file(path, int(large_budget * w), rng, earlier)
        large.append(path)
    large_bytes = sum(p.stat().st_size for p in large)
    description = (f"generated (seed {seed}): {len(small):,} small text files "
                   f"({small_bytes / MIB:.1f} MiB) + {len(large)} large binary files "
                   f"({large_bytes / MIB:.1f} MiB)")
    return Dataset(root, description, small, large)


def copy_dataset(source: Path, root: Path) -> Dataset:
    """Benchmarks a copy of --data: the edits step must never modify the user's files."""
    source = source.resolve()
    if not source.is_dir():
        raise SystemExit(f"bench: --data {source} is not a directory")
    root.mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{source}/.", str(root)], check=True)
    small, sized = [], []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if st.st_mode & 0o170000 == 0o100000:
                sized.append((st.st_size, path))
                if st.st_size < SMALL_FILE_LIMIT:
                    small.append(path)
    small.sort()
    large = [max(sized)[1]] if sized else []
    files, size = tree_totals(root)
    return Dataset(root, f"copy of --data: {files:,} files ({size / MIB:.1f} MiB)", small, large)


class Edits:
    """The "small edits" between the second and third backup, and their undoing.

    Half of the chosen small files are only touched (new mtime, same content), half get a
    line inserted in the middle; the largest file gets INSERT_SIZE bytes inserted in its
    middle, which shifts everything after it (content-defined chunking should cope).
    Undoing restores contents and mtimes, so every tool and every run backs up the same data.
    """

    def __init__(self, dataset: Dataset, seed: int):
        rng = random.Random(seed + 1)
        count = math.ceil(len(dataset.small_files) * EDIT_FRACTION) if dataset.small_files else 0
        chosen = rng.sample(dataset.small_files, count)
        self.touched = chosen[: count // 2]
        self.modified = chosen[count // 2:]
        self.large = max(dataset.large_files, key=lambda p: p.stat().st_size, default=None)
        self.insert = rng.randbytes(INSERT_SIZE)
        self._saved_contents: dict[Path, bytes] = {}
        self._saved_mtimes: dict[Path, int] = {}
        self._offset = 0

    def describe(self) -> str:
        text = f"{len(self.touched)} files touched, {len(self.modified)} files modified"
        if self.large:
            text += f", {INSERT_SIZE} bytes inserted in the middle of {self.large.name}"
        return text

    def apply(self) -> None:
        now = time.time_ns()
        for path in self.touched + self.modified + ([self.large] if self.large else []):
            self._saved_mtimes[path] = path.stat().st_mtime_ns
        for path in self.touched:
            os.utime(path, ns=(now, now))
        for path in self.modified:
            data = path.read_bytes()
            self._saved_contents[path] = data
            middle = data.find(b"\n", len(data) // 2) + 1  # after a line break when there is one
            path.write_bytes(data[:middle] + b"# edited between backups\n" + data[middle:])
        if self.large:
            self._offset = self.large.stat().st_size // 2
            splice(self.large, self._offset, insert=self.insert)

    def revert(self) -> None:
        for path, data in self._saved_contents.items():
            path.write_bytes(data)
        if self.large and self._offset:
            splice(self.large, self._offset, remove=len(self.insert))
        for path, mtime in self._saved_mtimes.items():
            os.utime(path, ns=(mtime, mtime))
        self._saved_contents.clear()
        self._saved_mtimes.clear()
        self._offset = 0


def splice(path: Path, offset: int, remove: int = 0, insert: bytes = b"") -> None:
    """Removes and/or inserts bytes at offset by streaming into a new file (large files
    need not fit in memory), then renames it over the original, like an editor saving."""
    tmp = path.with_name(path.name + ".bench-tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        remaining = offset
        while remaining:
            chunk = src.read(min(remaining, 4 * MIB))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
        dst.write(insert)
        src.seek(offset + remove)
        shutil.copyfileobj(src, dst, 4 * MIB)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Metrics and scenarios
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str  # the unit of the stored value, also used in the table and the JSON
    better: str  # "lower" or "higher": how to read the ratio columns
    digits: int = 2
    group: str = "backup"  # the scenario that measures it: "backup" or "mount"
    compared: bool = True  # False for a baseline that does not depend on the tool: no ratios


METRICS = [
    Metric("first_backup_s", "first backup", "s", "lower"),
    Metric("first_backup_mbps", "first backup", "MB/s", "higher", 1),
    Metric("cold_backup_s", "first backup, cold page cache", "s", "lower"),
    Metric("unchanged_backup_s", "unchanged re-backup", "s", "lower"),
    Metric("edited_backup_s", "backup after small edits", "s", "lower"),
    Metric("repo_size_first_mib", "repository size after first backup", "MiB", "lower", 1),
    Metric("repo_size_mib", "repository size after 3 backups", "MiB", "lower", 1),
    Metric("repo_size_bytes", "repository size after 3 backups", "bytes", "lower", 0),
    Metric("restore_s", "restore latest", "s", "lower"),
    Metric("restore_mbps", "restore latest", "MB/s", "higher", 1),
    Metric("first_backup_rss_mib", "peak RSS during first backup", "MiB", "lower", 1),
    Metric("mount_versions_s", "mount: start to version list", "s", "lower", group="mount"),
    Metric("mount_listing_s", "mount: start to listing inside a version", "s", "lower",
           group="mount"),
    Metric("mount_first_byte_ms", "mount: first byte in oldest version, cold", "ms", "lower",
           1, group="mount"),
    Metric("mount_find_s", "mount: find over a version", "s", "lower", group="mount"),
    Metric("mount_cp_mbps", "mount: cp -a of a version", "MB/s", "higher", 1, group="mount"),
    Metric("mount_cp_s", "mount: cp -a of a version", "s", "lower", group="mount"),
    Metric("mount_small_files_fps", "mount: find | xargs cat of a version's files, fresh mount",
           "files/s", "higher", 0, group="mount"),
    Metric("mount_ls_wide_s", f"mount: ls -l of a {WIDE_LS_FILES:,}-file directory, fresh mount",
           "s", "lower", group="mount"),
    Metric("mount_gio_s", f"mount: gio list of a {WIDE_GIO_FILES:,}-file directory, fresh mount",
           "s", "lower", group="mount"),
    Metric("gio_original_s", "gio list of that directory, original (not mounted)", "s", "lower",
           group="mount", compared=False),
    Metric("mount_cat_cold_mbps", "mount: cat big file, cold", "MB/s", "higher", 1,
           group="mount"),
    Metric("mount_cat_warm_mbps", "mount: cat big file, warm", "MB/s", "higher", 1,
           group="mount"),
    Metric("mount_rss_mib", "mount: peak RSS of the mount process", "MiB", "lower", 1,
           group="mount"),
]


@dataclass
class MountPlan:
    """What the mount scenario needs besides the three backups."""
    big_file: Path  # generated outside the dataset; moved into it for the fourth backup only
    # Directories of many small files (WIDE_LS_FILES, WIDE_GIO_FILES files), likewise.
    wide_ls_dir: Path
    wide_gio_dir: Path
    holder_name: str  # the directory of the dataset that holds all three during that backup
    first_byte_file: Path  # relative to the dataset root: read in the oldest version
    gio: str | None  # GNOME's gio, or None when it is missing (its metrics are skipped)


@dataclass
class RunContext:
    """What a scenario gets: one tool, its fresh sandbox, and where to put its numbers."""
    tool: Tool
    box: Sandbox
    dataset: Dataset
    edits: Edits
    mount_plan: MountPlan | None = None
    samples: dict[str, float] = field(default_factory=dict)
    last_label: str = ""
    labels: list[str] = field(default_factory=list)  # every backup's label, oldest first
    edited_totals: tuple[int, int] | None = None  # (files, bytes) of the third backup

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.tool.environment(self.box)}

    def run(self, step: str, command: Command) -> Measurement:
        return run_step(command, self.env, self.box.logs, step)

    def backup(self, step: str, label: str) -> Measurement:
        measured = self.run(step, self.tool.backup(self.box, self.dataset.root, label))
        self.last_label = label
        self.labels.append(label)
        return measured


def warm_dataset(root: Path) -> None:
    """Read every file once, so that each tool's timed backups start from the same (warm) page
    cache, whatever the machine evicted while the previous tool ran."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def backup_restore_cycle(ctx: RunContext) -> None:
    """The backup scenario: a first backup with a cold page cache (as root) into a repository
    that is then thrown away; then three backups of changing data, warm, and a restore of the last."""
    _, data_bytes = tree_totals(ctx.dataset.root)
    ctx.run("init", ctx.tool.init(ctx.box))
    if drop_page_cache():
        cold = ctx.run("cold backup", ctx.tool.backup(ctx.box, ctx.dataset.root, "cold"))
        ctx.samples["cold_backup_s"] = cold.seconds
        for path in [ctx.box.repo, ctx.box.cache, *ctx.box.root.glob(ctx.box.index.name + "*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        ctx.run("init", ctx.tool.init(ctx.box))

    warm_dataset(ctx.dataset.root)
    first = ctx.backup("first backup", "first")
    ctx.samples["first_backup_s"] = first.seconds
    ctx.samples["first_backup_mbps"] = data_bytes / MB / first.seconds
    if first.peak_rss_bytes is not None:
        ctx.samples["first_backup_rss_mib"] = first.peak_rss_bytes / MIB
    ctx.samples["repo_size_first_mib"] = repository_bytes(ctx.box.repo) / MIB

    warm_dataset(ctx.dataset.root)
    ctx.samples["unchanged_backup_s"] = ctx.backup("unchanged backup", "unchanged").seconds

    ctx.edits.apply()
    try:
        time.sleep(SETTLE_SECONDS)
        warm_dataset(ctx.dataset.root)
        ctx.samples["edited_backup_s"] = ctx.backup("edited backup", "edited").seconds
        size = repository_bytes(ctx.box.repo)
        ctx.samples["repo_size_bytes"] = size
        ctx.samples["repo_size_mib"] = size / MIB

        # Restore before undoing the edits: the restored tree must match the edited data.
        ctx.box.restore.mkdir()
        expected_files, expected_bytes = tree_totals(ctx.dataset.root)
        ctx.edited_totals = (expected_files, expected_bytes)
        restored = ctx.run("restore", ctx.tool.restore(ctx.box, ctx.last_label))
        files, size = tree_totals(ctx.box.restore)
        if (files, size) != (expected_files, expected_bytes):
            # A fast restore of half the data is no result: fail loudly instead.
            raise StepFailed(f"restore: got {files} files / {size} bytes, "
                             f"expected {expected_files} / {expected_bytes}")
        ctx.samples["restore_s"] = restored.seconds
        ctx.samples["restore_mbps"] = expected_bytes / MB / restored.seconds
    finally:
        ctx.edits.revert()
        time.sleep(SETTLE_SECONDS)


def backups_only(ctx: RunContext) -> None:
    """The three backups of the backup scenario, untimed: what --mount-only mounts."""
    ctx.run("init", ctx.tool.init(ctx.box))
    ctx.backup("first backup", "first")
    ctx.backup("unchanged backup", "unchanged")
    ctx.edits.apply()
    try:
        time.sleep(SETTLE_SECONDS)
        ctx.edited_totals = tree_totals(ctx.dataset.root)
        ctx.backup("edited backup", "edited")
    finally:
        ctx.edits.revert()
        time.sleep(SETTLE_SECONDS)


# --------------------------------------------------------------------------------------
# Mounting
# --------------------------------------------------------------------------------------

MOUNT_READY_TIMEOUT = 300.0  # seconds a mount may take to show its versions
MOUNT_SESSION_TIMEOUT = 3600.0  # a mount still up after this is stuck: killed, unmounted
CLIENT_TIMEOUT = 1800.0  # find, cp -a, cat
POLL_SECONDS = 0.005  # resolution of the "start to listing" times
BROWSED_LABEL = "edited"  # find and cp -a walk the version the restore step restored
BIG_LABEL = "big"  # the fourth backup: the dataset plus the big file and the wide directories


def mount_unavailable() -> str:
    """Why mounting cannot work here, or '' when it can. (Unprivileged users reach
    /dev/fuse through the setuid fusermount3, so its mode says nothing.)"""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (in a container: --device /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    return ""


def mounted_paths() -> list[str]:
    """Mount points from /proc/mounts, whose fields escape blanks and backslashes as \\ooo."""
    paths = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1:
                paths.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    return paths


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


def unmount(path: Path, lazy: bool = False) -> bool:
    """Unmounts a FUSE mount; says whether path is unmounted now. fusermount3 first (what
    users do), then fusermount (FUSE 2 mounts), then umount (root)."""
    flag = "-uz" if lazy else "-u"
    umount = ["umount", "-l"] if lazy else ["umount"]
    for argv in (["fusermount3", flag], ["fusermount", flag], umount):
        if not is_mounted(path):
            return True
        if shutil.which(argv[0]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([*argv, str(path)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=60)
    return not is_mounted(path)


def unmount_all_under(root: Path) -> None:
    """Lazily unmounts whatever is still mounted below root, deepest first: no stale mount
    may outlive the benchmark, and removing root must not walk into a mount."""
    prefix = str(root).rstrip("/") + "/"
    for path in sorted((p for p in mounted_paths() if p.startswith(prefix)), key=len, reverse=True):
        log(f"bench: {path} is still mounted: unmounting it lazily")
        if not unmount(Path(path), lazy=True):
            log(f"bench: could not unmount {path}")


_page_cache_droppable: bool | None = None  # None until the first try


def drop_page_cache() -> bool:
    """sync, then drop the kernel's page, dentry and inode caches, so the next read comes
    from the disk (or the FUSE server). Needs root; says whether it happened (it is tried once)."""
    global _page_cache_droppable
    if _page_cache_droppable is False:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        _page_cache_droppable = False
        log(f"bench: cannot drop the page cache ({e.strerror}): cold mount numbers come from "
            "fresh mounts and caches only")
        return False
    _page_cache_droppable = True
    return True


def run_client(argv: list[str], log_dir: Path, step: str, stdout_path: Path | None = None
               ) -> float:
    """Runs a program that reads a mount (find, cp, cat) and returns its wall time. Its
    output goes to stdout_path, or nowhere: cat's gigabyte must not land in a log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    err_path = log_dir / f"{step.replace(' ', '-')}.err"
    with open(stdout_path or os.devnull, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        try:
            returncode = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        timeout=CLIENT_TIMEOUT).returncode
        except OSError as e:
            raise StepFailed(f"{step}: cannot run {argv[0]}: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{step}: not done after {CLIENT_TIMEOUT:.0f}s") from None
        seconds = time.perf_counter() - start
    if returncode != 0:
        raise StepFailed(f"{step}: exit status {returncode}: {last_line(err_path) or 'no output'}")
    return seconds


class MountSession:
    """One mount of the context's repository, from starting the tool (in the foreground,
    under GNU time for its peak RSS) to unmounting it. A context manager: leaving it always
    unmounts and reaps the process, and a watchdog kills a mount that hangs."""

    def __init__(self, ctx: RunContext, name: str):
        self.ctx = ctx
        self.name = name
        self.mountpoint = ctx.box.root / f"mnt-{name}"
        self.cache_dir = ctx.box.root / f"mount-cache-{name}"  # fresh: cold block cache
        stem = ctx.box.logs / f"mount-{name}"
        self.out_path, self.err_path, self.rss_path = (
            stem.with_suffix(suffix) for suffix in (".out", ".err", ".rss"))
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.peak_rss_bytes: int | None = None
        self._watchdog: threading.Timer | None = None
        self.versions: list[str] = []  # version directory names, oldest first

    def __enter__(self) -> MountSession:
        self.mountpoint.mkdir()
        self.cache_dir.mkdir()
        self.ctx.box.logs.mkdir(parents=True, exist_ok=True)
        command = self.ctx.tool.mount(self.ctx.box, self.mountpoint, self.cache_dir)
        argv = command.argv
        if os.access(GNU_TIME, os.X_OK):
            argv = [GNU_TIME, "-o", str(self.rss_path), "-f", "%M", *argv]
        env = self.ctx.env
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.started = time.perf_counter()
            try:
                # Its own process group: signals reach the tool, not only GNU time.
                self.proc = subprocess.Popen(argv, cwd=command.cwd, env=env,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                             start_new_session=True)
            except OSError as e:
                raise StepFailed(f"mount: cannot run {argv[0]}: {e.strerror}") from None
        self._watchdog = threading.Timer(MOUNT_SESSION_TIMEOUT, self._abort)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _abort(self) -> None:
        """Runs in the watchdog thread: whatever blocks on the mount then fails (ENOTCONN)."""
        log(f"bench: {self.ctx.tool.name} mount still up after {MOUNT_SESSION_TIMEOUT:.0f}s: "
            "killing it")
        self._signal(signal.SIGKILL)
        unmount(self.mountpoint, lazy=True)

    def _reason(self) -> str:
        return last_line(self.err_path) or last_line(self.out_path) or "no output"

    def wait_until(self, step: str, ready: Callable[[], bool]) -> float:
        """Polls ready() until it is true; returns the seconds since the mount was started.
        OSError from ready() means "not yet" (not mounted yet, or still starting)."""
        assert self.proc is not None
        while True:
            with contextlib.suppress(OSError):
                if ready():
                    return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                raise StepFailed(f"{step}: the mount process ended with status "
                                 f"{self.proc.returncode}: {self._reason()}")
            if time.perf_counter() - self.started > MOUNT_READY_TIMEOUT:
                raise StepFailed(f"{step}: nothing after {MOUNT_READY_TIMEOUT:.0f}s")
            time.sleep(POLL_SECONDS)

    def wait_for_versions(self, labels: list[str]) -> float:
        """Waits until the version directory lists one entry per backup; returns the time."""
        tool = self.ctx.tool

        def listed() -> bool:
            names = tool.order_versions(os.listdir(tool.versions_dir(self.mountpoint)), labels)
            self.versions = names if len(names) == len(labels) else []
            return bool(self.versions)
        return self.wait_until("mount: version list", listed)

    def version_root(self, labels: list[str], label: str) -> Path:
        return self.ctx.tool.versions_dir(self.mountpoint) / self.versions[labels.index(label)]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            for _ in range(20):  # busy for a moment after a reader exits: retry
                if self.proc.poll() is not None or unmount(self.mountpoint):
                    break
                time.sleep(0.25)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"bench: {self.ctx.tool.name} mount did not exit after unmounting: SIGINT")
                self._signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.proc.wait()
        finally:
            if self._watchdog:
                self._watchdog.cancel()
            if is_mounted(self.mountpoint):
                unmount(self.mountpoint, lazy=True)
        rss = last_line(self.rss_path)  # time writes "%M" (KiB) as its last line
        self.peak_rss_bytes = int(rss) * 1024 if rss.isdigit() else None
        if self.proc.returncode != 0:
            log(f"bench: {self.ctx.tool.name} mount ({self.name}) exited with status "
                f"{self.proc.returncode} after unmounting: {self._reason()}")


def count_entries(root: Path) -> int:
    """Directories, files and symlinks below root (root itself not counted)."""
    return sum(len(dirnames) + len(filenames) for _, dirnames, filenames in os.walk(root))


def back_up_big_file(ctx: RunContext) -> None:
    """The fourth backup: the dataset plus the big file and the two wide directories, which
    are moved in for it only, so that the other scenarios (and the other tools' runs) see the
    dataset unchanged."""
    plan = ctx.mount_plan
    assert plan is not None
    root = ctx.dataset.root
    root_stat = root.stat()
    holder = root / plan.holder_name
    moved: list[tuple[Path, Path]] = []  # (outside, inside)
    holder.mkdir()
    try:
        for outside in (plan.big_file, plan.wide_ls_dir, plan.wide_gio_dir):
            os.rename(outside, holder / outside.name)
            moved.append((outside, holder / outside.name))
        ctx.backup("big file backup", BIG_LABEL)
    finally:
        for outside, inside in moved:
            os.rename(inside, outside)
        holder.rmdir()
        os.utime(root, ns=(root_stat.st_atime_ns, root_stat.st_mtime_ns))


def mount_scenario(ctx: RunContext) -> None:
    """Fresh mounts of the repository holding the three backups plus a fourth with the big
    file and the wide directories: the first for the listings, first byte, find and cp -a,
    then one each for find | xargs cat, ls -l, gio list (when gio is there) and cat."""
    plan, logs = ctx.mount_plan, ctx.box.logs
    assert plan is not None
    if ctx.edited_totals is None:
        raise StepFailed("mount: the third backup was not made")
    back_up_big_file(ctx)
    labels = list(ctx.labels)
    rel = ctx.dataset.root.relative_to("/")  # every tool shows the source at its full path
    top = sorted(os.listdir(ctx.dataset.root))
    files, size = ctx.edited_totals
    rss: list[int] = []

    with MountSession(ctx, "browse") as m:
        ctx.samples["mount_versions_s"] = m.wait_for_versions(labels)
        browsed = m.version_root(labels, BROWSED_LABEL)

        def top_listed() -> bool:
            names = sorted(os.listdir(browsed / rel))
            if names != top:  # listed, but wrong: no point in waiting
                raise StepFailed(f"mount: {BROWSED_LABEL} version lists {names[:5]}, "
                                 f"expected {top[:5]}")
            return True
        ctx.samples["mount_listing_s"] = m.wait_until("mount: listing inside a version", top_listed)

        if plan.first_byte_file is not None:
            with open(ctx.dataset.root / plan.first_byte_file, "rb") as f:
                expected = f.read(1)
            path = m.version_root(labels, labels[0]) / rel / plan.first_byte_file
            drop_page_cache()
            start = time.perf_counter()
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    first = os.read(fd, 1)
                finally:
                    os.close(fd)
            except OSError as e:
                raise StepFailed(f"mount: first byte of {plan.first_byte_file}: {e}") from None
            ctx.samples["mount_first_byte_ms"] = (time.perf_counter() - start) * 1000
            if first != expected:
                raise StepFailed(f"mount: first byte of {plan.first_byte_file} in the oldest "
                                 f"version is {first!r}, expected {expected!r}")

        # find prints the version root, the directories of the source's path, and its tree.
        expected_lines = 1 + len(rel.parts) + count_entries(ctx.dataset.root)
        listing = logs / "mount-find.out"
        drop_page_cache()
        seconds = run_client(["find", str(browsed)], logs, "mount find", listing)
        with open(listing, "rb") as f:
            lines = sum(1 for _ in f)
        if lines != expected_lines:
            raise StepFailed(f"mount: find printed {lines} paths, expected {expected_lines}")
        ctx.samples["mount_find_s"] = seconds

        copy = ctx.box.root / "mount-copy"
        drop_page_cache()
        seconds = run_client(["cp", "-a", str(browsed), str(copy)], logs, "mount cp")
        copied = tree_totals(copy)
        remove_tree(copy)
        if copied != (files, size):
            raise StepFailed(f"mount: cp -a copied {copied[0]} files / {copied[1]} bytes, "
                             f"expected {files} / {size}")
        ctx.samples["mount_cp_mbps"] = size / MB / seconds
        ctx.samples["mount_cp_s"] = seconds
    if m.peak_rss_bytes is not None:
        rss.append(m.peak_rss_bytes)

    # Every file of the version read once, in find's order, as a backup of the mount or a
    # grep would: the cost per file (open, read, release) more than the bytes.
    with MountSession(ctx, "files") as m:
        m.wait_for_versions(labels)
        browsed = m.version_root(labels, BROWSED_LABEL)
        drop_page_cache()
        step = "mount find-cat"
        seconds = run_client(["sh", "-c", 'find "$1" -type f -print0 | xargs -0 cat > /dev/null',
                              "sh", str(browsed)], logs, step)
        # The pipeline's status is xargs's: a failure of find shows only on stderr.
        if complaint := last_line(logs / f"{step.replace(' ', '-')}.err"):
            raise StepFailed(f"{step}: {complaint}")
        ctx.samples["mount_small_files_fps"] = files / seconds
    if m.peak_rss_bytes is not None:
        rss.append(m.peak_rss_bytes)

    with MountSession(ctx, "ls") as m:
        m.wait_for_versions(labels)
        holder = m.version_root(labels, BIG_LABEL) / rel / plan.holder_name
        listing = logs / "mount-ls-wide.out"
        drop_page_cache()
        seconds = run_client(["ls", "-l", str(holder / plan.wide_ls_dir.name)], logs,
                             "mount ls wide", listing)
        with open(listing, "rb") as f:
            lines = sum(1 for _ in f)
        if lines != WIDE_LS_FILES + 1:  # one line per file and "total"
            raise StepFailed(f"mount: ls -l printed {lines} lines, expected {WIDE_LS_FILES + 1}")
        ctx.samples["mount_ls_wide_s"] = seconds
    if m.peak_rss_bytes is not None:
        rss.append(m.peak_rss_bytes)

    if plan.gio:
        def gio_list(directory: Path, step: str) -> float:
            out = logs / f"{step.replace(' ', '-')}.out"
            drop_page_cache()
            seconds = run_client([plan.gio, "list", "-a", GIO_ATTRIBUTES, str(directory)], logs,
                                 step, out)
            with open(out, "rb") as f:
                lines = sum(1 for _ in f)
            if lines != WIDE_GIO_FILES:
                raise StepFailed(f"{step}: printed {lines} lines, expected {WIDE_GIO_FILES}")
            return seconds

        with MountSession(ctx, "gio") as m:
            m.wait_for_versions(labels)
            holder = m.version_root(labels, BIG_LABEL) / rel / plan.holder_name
            ctx.samples["mount_gio_s"] = gio_list(holder / plan.wide_gio_dir.name, "mount gio")
        if m.peak_rss_bytes is not None:
            rss.append(m.peak_rss_bytes)
        ctx.samples["gio_original_s"] = gio_list(plan.wide_gio_dir, "gio original")

    big_size = plan.big_file.stat().st_size
    with MountSession(ctx, "cat") as m:
        m.wait_for_versions(labels)
        big = m.version_root(labels, BIG_LABEL) / rel / plan.holder_name / plan.big_file.name
        drop_page_cache()
        cold = run_client(["cat", str(big)], logs, "mount cat cold")
        warm = run_client(["cat", str(big)], logs, "mount cat warm")  # same mount, cached
        # cat to /dev/null proves nothing about the bytes: compare them once, untimed.
        try:
            check = subprocess.run(["cmp", str(big), str(plan.big_file)], capture_output=True,
                                   text=True, timeout=CLIENT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StepFailed(f"mount: cannot compare the big file: {e}") from None
        if check.returncode != 0:
            raise StepFailed(f"mount: the big file differs from the original: "
                             f"{(check.stdout or check.stderr).strip()[:200]}")
        ctx.samples["mount_cat_cold_mbps"] = big_size / MB / cold
        ctx.samples["mount_cat_warm_mbps"] = big_size / MB / warm
    if m.peak_rss_bytes is not None:
        rss.append(m.peak_rss_bytes)
    if rss:
        ctx.samples["mount_rss_mib"] = max(rss) / MIB


# Scenarios run in this order on the same sandbox, so later ones find a repository holding
# the three backups. main() picks the list: --no-mount drops mount_scenario, --mount-only
# replaces backup_restore_cycle with backups_only.
SCENARIOS: list[Callable[[RunContext], None]] = [backup_restore_cycle, mount_scenario]


# --------------------------------------------------------------------------------------
# Driving the runs
# --------------------------------------------------------------------------------------

@dataclass
class ToolResult:
    tool: Tool
    version: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # scenario name -> its failure

    @property
    def error(self) -> str:
        return "; ".join(self.errors.values())

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None


def remove_tree(path: Path) -> None:
    """rmtree that also removes read-only entries a restore may have created."""
    def make_writable_and_retry(func, failed_path, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
        with contextlib.suppress(OSError):
            func(failed_path)
    if path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def benchmark(tools: list[Tool], dataset: Dataset, edits: Edits, work: Path, runs: int,
              scenarios: list[Callable[[RunContext], None]], mount_plan: MountPlan | None
              ) -> list[ToolResult]:
    results = [ToolResult(tool, tool.version()) for tool in tools]
    for run in range(1, runs + 1):
        # Each run starts with the next tool: whatever the previous run's clean-up costs the
        # machine lands on every tool in turn, not always on the first.
        shift = (run - 1) % len(results)
        for result in results[shift:] + results[:shift]:
            # A mount-only tool makes the backups the mount scenario needs, untimed.
            steps = [backups_only if s is backup_restore_cycle and result.tool.mount_only else s
                     for s in scenarios]
            # A scenario that failed once would most likely fail again: it and the ones after
            # it (which need its repository) are skipped; the ones before still run.
            if steps[0].__name__ in result.errors:
                continue
            ctx = RunContext(result.tool, Sandbox(work / f"{result.tool.name}-run{run}"),
                             dataset, edits, mount_plan)
            ctx.box.root.mkdir()
            try:
                for scenario in steps:
                    if scenario.__name__ in result.errors:
                        break
                    try:
                        scenario(ctx)
                    except StepFailed as e:
                        result.errors[scenario.__name__] = str(e)
                        log(f"[run {run}/{runs}] {result.tool.name}: FAILED: {e}")
                        break
            finally:
                # Partial numbers still count: a failed restore says nothing about backups.
                ctx.samples = {k: v for k, v in ctx.samples.items() if result.tool.measures(k)}
                for key, value in ctx.samples.items():
                    result.samples.setdefault(key, []).append(value)
                unmount_all_under(ctx.box.root)  # rmtree must not walk into a mount
                remove_tree(ctx.box.root)  # repositories and restores add up on disk
                # Right after tens of thousands of files are deleted, ext4 creates new ones much
                # more slowly for a while (it avoids reusing recently freed inodes): let it settle.
                os.sync()
                time.sleep(CLEANUP_SETTLE_SECONDS)
            if ctx.samples:
                summary = ", ".join(f"{key} {value:.2f}" for key, value in ctx.samples.items())
                log(f"[run {run}/{runs}] {result.tool.name}: {summary}")
    return results


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def machine_info() -> dict:
    info = {"cpus": len(os.sched_getaffinity(0)), "ram_mib": None, "cpu": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_mib"] = int(line.split()[1]) // 1024
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def ratio(subject: ToolResult | None, peer: ToolResult, key: str) -> float | None:
    if subject is None:
        return None
    a, b = subject.median(key), peer.median(key)
    return a / b if a is not None and b else None


def report_data(machine: dict, dataset: Dataset, dataset_files: int, dataset_bytes: int,
                edits: Edits, runs: int, results: list[ToolResult], metrics: list[Metric],
                mount: dict | None) -> dict:
    subject = next((r for r in results if r.tool.name == SUBJECT), None)
    peers = [r for r in results if r.tool.name != SUBJECT]

    def per_tool(numerator: str, denominator: str) -> dict[str, float | None]:
        quotients = {}
        for r in results:
            a, b = r.median(numerator), r.median(denominator)
            quotients[r.tool.name] = a / b if a is not None and b else None
        return quotients

    return {
        "machine": machine,
        "dataset": {"description": dataset.description, "files": dataset_files,
                    "bytes": dataset_bytes, "edits": edits.describe()},
        "mount": mount,
        "runs": runs,
        "statistic": "median",
        "metrics": [{"key": m.key, "label": m.label, "unit": m.unit, "better": m.better}
                    for m in metrics],
        "tools": {r.tool.name: {"version": r.version,
                                "status": "failed" if r.error else "ok",
                                "error": r.error or None,
                                "median": {m.key: r.median(m.key) for m in metrics},
                                "not_applicable": [m.key for m in metrics
                                                   if not r.tool.measures(m.key)],
                                "samples": r.samples} for r in results},
        "ratios": {f"{SUBJECT}/{p.tool.name}": {m.key: ratio(subject, p, m.key) if m.compared
                                                 else None for m in metrics}
                   for p in peers},
        # Each tool against itself: gio through its mount / on the original directory (how
        # much slower a file manager lists through the mount), and cp -a through its mount /
        # its own restore, in MB/s (above 1: cp -a is the faster way to get a version back).
        "gio_mount_over_original": per_tool("mount_gio_s", "gio_original_s"),
        "cp_over_restore_mbps": per_tool("mount_cp_mbps", "restore_mbps"),
    }


def print_table(data: dict) -> None:
    m = data["machine"]
    ram = f"{m['ram_mib'] / 1024:.1f} GiB RAM" if m["ram_mib"] else "RAM unknown"
    print(f"machine: {m['cpus']} CPUs ({m['cpu']}), {ram}, Linux {m['kernel']}, "
          f"Python {m['python']}")
    for name, tool in data["tools"].items():
        print(f"{name + ':':10} {tool['version']}")
    d = data["dataset"]
    print(f"dataset: {d['description']}; {d['files']:,} files, {d['bytes'] / MIB:.1f} MiB")
    print(f"edits before the third backup: {d['edits']}")
    if data["mount"]:
        mo = data["mount"]
        cold = ("fresh mount, empty fsbackup --cache-dir, page cache dropped after sync"
                if mo["page_cache_dropped"] else
                "fresh mount, empty fsbackup --cache-dir (page cache NOT dropped: needs root)")
        first = (f"first byte of {mo['first_byte_file']} in the oldest version; "
                 if mo["first_byte_file"] else "")
        print(f"mount: find, cp -a and find | xargs cat over the third backup's version; {first}"
              f"cat of a {mo['big_file_bytes'] / MIB:,.0f} MiB file, ls -l of "
              f"{WIDE_LS_FILES:,} and gio list of {WIDE_GIO_FILES:,} small files, all added by "
              f"a fourth backup; cold = {cold}")
    print(f"runs: {data['runs']} per tool, values are medians\n")

    names = list(data["tools"])
    ratio_names = list(data["ratios"])
    header = ["metric", "better", *names, *ratio_names]
    rows = []
    shown = {m["key"] for m in data["metrics"]}
    for metric in (m for m in METRICS if m.key in shown):
        row = [f"{metric.label} ({metric.unit})", metric.better]
        for name in names:
            tool = data["tools"][name]
            value = tool["median"][metric.key]
            if value is not None:
                row.append(f"{value:,.{metric.digits}f}")
            else:  # "-": not applicable to the tool, or not measurable here (no root, no gio...)
                applies = metric.key not in tool["not_applicable"]
                row.append("failed" if tool["error"] and applies else "-")
        for name in ratio_names:
            value = data["ratios"][name][metric.key]
            row.append("-" if value is None else f"{value:.2f}x")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if ratio_names:
        print(f"\n{SUBJECT}/peer: {SUBJECT}'s median divided by the peer's. Where lower is better "
              f"(s, ms, MiB), below 1x means {SUBJECT} is better;\nwhere higher is better "
              f"(MB/s, files/s), above 1x means {SUBJECT} is better.")
    if "floor" in data["tools"]:
        print(f"floor: the same versions served from memory by pyfuse3 alone (scripts/floorfs.py), "
              f"the lower bound\nof a Python FUSE mount; {SUBJECT}/floor says how far {SUBJECT}'s "
              f"mount is above it. Its start times\ninclude loading every snapshot into memory; "
              f"it makes no real backups: '-' in those rows.")
    gio = {name: q for name, q in data.get("gio_mount_over_original", {}).items() if q is not None}
    if gio:
        print("gio list through the mount / on the original directory: "
              + ", ".join(f"{name} {q:.2f}x" for name, q in gio.items()))
    tool = data["tools"].get(SUBJECT)
    if tool and tool["median"].get("mount_cp_mbps") and tool["median"].get("restore_mbps"):
        cp, restore = tool["median"]["mount_cp_mbps"], tool["median"]["restore_mbps"]
        print(f"{SUBJECT}: cp -a through the mount {cp:,.1f} MB/s, its restore {restore:,.1f} MB/s: "
              f"cp -a / restore = {cp / restore:.2f}x (above 1x: cp -a is faster)")
    for name, tool in data["tools"].items():
        if tool["error"]:
            print(f"\n{name} failed: {tool['error']}")


# --------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        help="benchmark a copy of this directory instead of generated data")
    parser.add_argument("--size-mb", type=int, default=300,
                        help="size of the generated dataset in MiB (default 300)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per tool, each on fresh repositories; medians are reported")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated dataset")
    parser.add_argument("--big-file-mb", type=int, default=1024,
                        help="size in MiB of the file the mount scenario cats (default 1024)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--mount-only", action="store_true",
                       help="run only the mount scenario (its backups are made, untimed)")
    which.add_argument("--no-mount", action="store_true", help="skip the mount scenario")
    which.add_argument("--latency-ms", type=float, metavar="MS",
                       help="instead: fsbackup alone with its repository behind a simulated link "
                            "of this round-trip latency (scripts/remote_like.py): backup MB/s and "
                            "cold cat of the big file through the mount, with read-ahead and "
                            "one block at a time")
    which.add_argument("--fleet", action="store_true",
                       help=f"instead: {FLEET_MACHINES} machines with overlapping trees (--size-mb each) backed "
                            "up into one repository at once and one after another, fsbackup against restic")
    parser.add_argument("--backend", choices=["local", "sftp", "s3"], default="local",
                        help="instead: fsbackup and restic with their repositories on a throwaway OpenSSH server "
                             "(sftp; scripts/sshserver.py; root) or a local S3 server (s3; moto): first backup, "
                             "restore and cold cat of the --big-file-mb file through the mount, MB/s")
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0, metavar="MB/S",
                        help="with --latency-ms: the link's bandwidth (default unlimited)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mb < 1 or args.big_file_mb < 1:
        parser.error("--runs, --size-mb and --big-file-mb must be at least 1")
    return args


def make_mount_plan(dataset: Dataset, work: Path, size_mb: int, seed: int) -> MountPlan:
    """Generates the big file and the wide directories (reproducibly, from the seed) outside
    the dataset, and picks the file whose first byte is read in the oldest version."""
    big_dir = work / "big"
    big_dir.mkdir()
    big_file = big_dir / "big.img"
    _write_large_file(big_file, size_mb * MIB, random.Random(seed + 2), [])
    rng = random.Random(seed + 3)
    wide_ls_dir, wide_gio_dir = big_dir / f"wide{WIDE_LS_FILES}", big_dir / f"wide{WIDE_GIO_FILES}"
    write_wide_dir(wide_ls_dir, WIDE_LS_FILES, rng)
    write_wide_dir(wide_gio_dir, WIDE_GIO_FILES, rng)
    name, n = "bench-big-file", 1
    while (dataset.root / name).exists():  # --data might hold that name
        n += 1
        name = f"bench-big-file-{n}"
    candidates = sorted(dataset.small_files or dataset.large_files)
    first = candidates[len(candidates) // 2].relative_to(dataset.root) if candidates else None
    gio = shutil.which("gio")
    if gio is None:
        log("bench: gio is missing (Debian packages libglib2.0-bin, shared-mime-info): "
            "the gio list metrics are skipped")
    return MountPlan(big_file, wide_ls_dir, wide_gio_dir, name, first, gio)


FLEET_MACHINES = 4
FLEET_COMMON_SHARE = 0.6  # of --size-mb: the files every machine holds (the OS, shared documents)
FLEET_OWN_SHARE = 0.1     # of --size-mb: the files only one machine holds


class FleetTool(NamedTuple):
    """How one tool backs up a machine of the fleet: its own host name and local cache, one
    repository for all."""
    name: str
    init: Callable[[Path], list[str]]
    backup: Callable[[Path, Path, str], list[str]]   # repository, source, host
    env: Callable[[Path, str], dict[str, str]]       # work folder, host
    prune: Callable[[Path], list[str]]               # repository: keep one copy of every block


def fleet_tools() -> list[FleetTool]:
    """fsbackup and restic: the two that let backups run concurrently into one repository
    (borg's lock is exclusive: its machines queue, so it has no concurrent figure)."""
    tools = [FleetTool(
        "fsbackup",
        lambda repo: ["fsbackup", "-q", "--repo", str(repo), "init"],
        lambda repo, source, host: ["fsbackup", "-q", "--repo", str(repo), "backup", "--host", host,
                                    str(source)],
        lambda work, host: {"FSBACKUP_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(work / "cache" / host)},
        lambda repo: ["fsbackup", "-q", "--repo", str(repo), "prune", "--max-unused", "0"])]
    if shutil.which("restic"):
        tools.append(FleetTool(
            "restic",
            lambda repo: ["restic", "init", "--repo", str(repo)],
            lambda repo, source, host: ["restic", "backup", "--quiet", "--repo", str(repo), "--host", host,
                                        str(source)],
            lambda work, host: {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "cache" / host)},
            lambda repo: ["restic", "prune", "--quiet", "--repo", str(repo), "--max-unused", "0"]))
    return tools


def make_fleet(root: Path, size_mb: int, seed: int) -> list[Path]:
    """FLEET_MACHINES source trees: each a copy of one common tree plus a tree of its own."""
    common = generate_dataset(_fresh(root / "common"), max(1, int(size_mb * FLEET_COMMON_SHARE)), seed)
    machines = []
    for i in range(FLEET_MACHINES):
        machine = _fresh(root / f"machine{i}")
        subprocess.run(["cp", "-a", str(common.root), str(machine / "shared")], check=True)
        generate_dataset(_fresh(machine / "own"), max(1, int(size_mb * FLEET_OWN_SHARE)), seed + 100 + i)
        machines.append(machine)
    shutil.rmtree(common.root)
    return machines


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


class FleetRound(NamedTuple):
    """One round of the fleet: every machine backed up into one fresh repository."""
    seconds: float           # wall time
    cpu_seconds: float       # user + system time of the backups, over every core
    repository_bytes: int
    pruned_bytes: int        # after a prune that keeps one copy of every block (untimed)


def fleet_round(tool: FleetTool, machines: list[Path], work: Path, concurrent: bool) -> FleetRound:
    """Back up every machine into one fresh repository, all at once or one after another."""
    remove_tree(work)
    work.mkdir(parents=True)
    repo = work / "repo"
    hosts = [f"machine{i}" for i in range(len(machines))]
    base = dict(os.environ)
    subprocess.run(tool.init(repo), env={**base, **tool.env(work, hosts[0])}, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for machine in machines:
        warm_dataset(machine)

    def start(i: int) -> subprocess.Popen:
        err = open(work / f"{hosts[i]}.err", "wb")
        return subprocess.Popen(tool.backup(repo, machines[i], hosts[i]), env={**base, **tool.env(work, hosts[i])},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    if concurrent:
        procs = [start(i) for i in range(len(machines))]
        codes = [p.wait() for p in procs]
    else:
        codes = [start(i).wait() for i in range(len(machines))]
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mode = "concurrent" if concurrent else "sequential"
    for host, code in zip(hosts, codes):
        if code != 0:
            raise StepFailed(f"fleet: {tool.name} backup of {host} ({mode}): "
                             f"exit status {code}: {last_line(work / f'{host}.err')}")
    stored = repository_bytes(repo)
    # (fsbackup's prune leaves volumes no version uses alone while they are young, as a running
    # backup's may be: every backup here has ended, so they are judged now)
    pruned = subprocess.run(tool.prune(repo), env={**base, **tool.env(work, hosts[0]),
                                                   "FSBACKUP_LEFTOVER_AGE_FOR_TESTS": "0"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if pruned.returncode != 0:
        raise StepFailed(f"fleet: {tool.name} prune after the {mode} backups: exit status {pruned.returncode}: "
                         f"{pruned.stderr.strip()[-300:]}")
    return FleetRound(seconds, cpu_seconds, stored, repository_bytes(repo))


def fleet_scenario(args: argparse.Namespace) -> dict:
    """FLEET_MACHINES machines with overlapping trees backed up into one repository per tool, all
    at once and one after another (fresh repository each time), interleaved run by run: median
    wall times and repository sizes."""
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="fsbackup-bench-fleet-")))
    try:
        log(f"bench: generating {FLEET_MACHINES} machines' trees ({args.size_mb} MiB each, "
            f"{FLEET_COMMON_SHARE:.0%} of it common to all) ...")
        machines = make_fleet(work / "machines", args.size_mb, args.seed)
        tools = fleet_tools()
        samples: dict[str, dict[str, list[float]]] = {
            t.name: {f"{mode}_{key}": [] for mode in ("concurrent", "sequential")
                     for key in ("s", "cpu_s", "bytes", "pruned_bytes")}
            for t in tools}
        for n in range(args.runs):
            for tool in tools:
                for concurrent in (True, False):
                    mode = "concurrent" if concurrent else "sequential"
                    log(f"bench: fleet run {n + 1}/{args.runs}: {tool.name}, {mode} ...")
                    done = fleet_round(tool, machines, work / "round", concurrent)
                    samples[tool.name][f"{mode}_s"].append(done.seconds)
                    samples[tool.name][f"{mode}_cpu_s"].append(done.cpu_seconds)
                    samples[tool.name][f"{mode}_bytes"].append(done.repository_bytes)
                    samples[tool.name][f"{mode}_pruned_bytes"].append(done.pruned_bytes)
        files, size = tree_totals(machines[0])
        medians = {name: {key: statistics.median(values) for key, values in per.items()}
                   for name, per in samples.items()}
        return {"machines": FLEET_MACHINES, "files_per_machine": files, "bytes_per_machine": size,
                "runs": args.runs, "cores": os.cpu_count() or 1, "tools": medians, "samples": samples}
    finally:
        remove_tree(work)


def print_fleet(data: dict) -> None:
    print(f"fleet: {data['machines']} machines of {data['files_per_machine']:,} files "
          f"({data['bytes_per_machine'] / MIB:.0f} MiB) each, {FLEET_COMMON_SHARE:.0%} of the data common to "
          f"all; one repository per tool; medians of {data['runs']} runs")
    print(f"{'tool':10} {'concurrent (s)':>15} {'sequential (s)':>15} {'conc./seq.':>11} "
          f"{'repo, conc. (MiB)':>18} {'pruned':>7} {'repo, seq. (MiB)':>17} {'pruned':>7}")
    tools = data["tools"]
    for name, m in tools.items():
        print(f"{name:10} {m['concurrent_s']:15.2f} {m['sequential_s']:15.2f} "
              f"{m['concurrent_s'] / m['sequential_s']:10.2f}x {m['concurrent_bytes'] / MIB:18.1f} "
              f"{m['concurrent_pruned_bytes'] / MIB:7.1f} {m['sequential_bytes'] / MIB:17.1f} "
              f"{m['sequential_pruned_bytes'] / MIB:7.1f}")
    print("pruned: the repository after a prune that keeps one copy of every block (--max-unused 0)")
    # Concurrent backups can at best share out the sequential run's work over every core: its
    # CPU time over the cores is the least wall time they can take here, whatever they do.
    cores = data["cores"]
    least = f"least conc./seq. on {cores} cores"
    print(f"{'tool':10} {'seq. cores used':>15} {'conc. cores used':>17} {least:>28}")
    for name, m in tools.items():
        print(f"{name:10} {m['sequential_cpu_s'] / m['sequential_s']:15.2f} "
              f"{m['concurrent_cpu_s'] / m['concurrent_s']:17.2f} "
              f"{m['sequential_cpu_s'] / cores / m['sequential_s']:27.2f}x")
    if "restic" in tools:
        print(f"fsbackup/restic, concurrent wall time: "
              f"{tools['fsbackup']['concurrent_s'] / tools['restic']['concurrent_s']:.2f}x "
              f"(below 1x: fsbackup is faster)")


REMOTE_LIKE = Path(__file__).with_name("remote_like.py")


def remote_like_scenario(args: argparse.Namespace) -> dict:
    """fsbackup with its repository behind a simulated remote link: the median backup MB/s of
    the big file, and the median cold `cat` MB/s of it through a fresh mount, with read-ahead
    and fetching one block at a time (what read-ahead is measured against)."""
    if reason := mount_unavailable():
        raise StepFailed(f"remote-like scenario needs a mount: {reason}")
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="fsbackup-bench-remote-")))
    link = ["--latency-ms", str(args.latency_ms), "--bandwidth-mbps", str(args.bandwidth_mbps)]
    env = dict(os.environ, FSBACKUP_REPOSITORY=str(work / "repo"), FSBACKUP_PASSWORD=PASSWORD,
               XDG_CACHE_HOME=str(work / "cache"))

    def fsbackup(*argv: str, read_ahead: bool = True) -> list[str]:
        return [sys.executable, str(REMOTE_LIKE), *link, *([] if read_ahead else ["--no-read-ahead"]),
                "--", "-q", "--index", str(work / "index"), *argv]

    def run(argv: list[str], step: str) -> float:
        start = time.perf_counter()
        p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if p.returncode != 0:
            raise StepFailed(f"{step}: exit status {p.returncode}: {p.stderr.strip()[-300:]}")
        return time.perf_counter() - start

    try:
        source = work / "source"
        source.mkdir()
        big = source / "big.img"
        log(f"bench: generating the {args.big_file_mb} MiB file ...")
        _write_large_file(big, args.big_file_mb * MIB, random.Random(args.seed + 2), [])
        size = big.stat().st_size
        run(fsbackup("init"), "init")
        backups, cats = [], {True: [], False: []}
        for n in range(args.runs):
            os.utime(big)                    # changed: read, cut and looked up again
            backups.append(run(fsbackup("backup", str(source)), "backup"))
            # an unchanged file's blocks are all in the repository: the first backup is the one
            # that uploads, so only it says how uploads hold up
            if n == 0:
                upload_s = backups[0]
            for read_ahead in (True, False):
                mountpoint, cache = work / f"mnt-{n}-{read_ahead}", work / f"cache-{n}-{read_ahead}"
                mount = fsbackup("mount", "--cache-dir", str(cache), str(mountpoint), read_ahead=read_ahead)
                cats[read_ahead].append(cold_cat(mount, env, mountpoint,
                                                 lambda: mountpoint / "latest" / str(big).lstrip("/"),
                                                 work / "logs", "remote-like cat"))
        ahead = size / statistics.median(cats[True]) / MB
        one_by_one = size / statistics.median(cats[False]) / MB
        return {"latency_ms": args.latency_ms, "bandwidth_mbps": args.bandwidth_mbps or None,
                "big_file_bytes": size, "runs": args.runs,
                "first_backup_mbps": size / upload_s / MB,
                "unchanged_big_file_backup_s": statistics.median(backups[1:]) if len(backups) > 1 else None,
                "cold_cat_mbps": ahead, "cold_cat_one_block_at_a_time_mbps": one_by_one,
                "read_ahead_gain": ahead / one_by_one}
    finally:
        unmount_all_under(work)
        remove_tree(work)


def print_remote_like(data: dict) -> None:
    link = f"{data['latency_ms']:g} ms round trip, " + (
        f"{data['bandwidth_mbps']:g} MB/s link" if data["bandwidth_mbps"] else "unlimited bandwidth")
    print(f"fsbackup behind a simulated remote: {link}; {data['big_file_bytes'] / MIB:.0f} MiB file; "
          f"medians of {data['runs']} runs")
    print(f"first backup (upload)                       {data['first_backup_mbps']:8.1f} MB/s")
    if data["unchanged_big_file_backup_s"] is not None:
        print(f"backup of the touched, unchanged file        {data['unchanged_big_file_backup_s']:8.2f} s")
    print(f"cold cat through the mount, read-ahead       {data['cold_cat_mbps']:8.1f} MB/s")
    print(f"cold cat, one block at a time               {data['cold_cat_one_block_at_a_time_mbps']:8.1f} MB/s")
    print(f"read-ahead gain                              {data['read_ahead_gain']:8.1f}x")


# ---- --backend sftp: fsbackup and restic against one real OpenSSH server ------------------

def sftp_commands(tool: str, server, storage: Path, sandbox: Path) -> tuple[dict[str, str], list[str]]:
    """The environment and the command prefix that point `tool` at a repository in `storage` on
    the test server (scripts/sshserver.py), keyed and known-hosted as a user would set it up."""
    if tool == "fsbackup":
        env = {"FSBACKUP_REPOSITORY": server.url(storage / "repo"), "FSBACKUP_PASSWORD": PASSWORD,
               "XDG_CACHE_HOME": str(sandbox / "cache"), "FSBACKUP_SFTP_IDENTITY": str(server.user_key),
               "FSBACKUP_SFTP_KNOWN_HOSTS": str(server.known_hosts)}
        return env, ["fsbackup", "-q", "--index", str(sandbox / "index")]
    ssh = (f"ssh -p {server.port} -i {server.user_key} -o UserKnownHostsFile={server.known_hosts} "
           f"-o IdentitiesOnly=yes -o BatchMode=yes {server.user.pw_name}@{server.host} -s sftp")
    env = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(sandbox / "cache")}
    return env, ["restic", "-q", "-r", f"sftp:{server.user.pw_name}@{server.host}:{storage}/repo",
                 "-o", f"sftp.command={ssh}"]


def sftp_scenario(args: argparse.Namespace) -> dict:
    """fsbackup and restic with their repositories on one OpenSSH server on this machine (the
    test server of scripts/sshserver.py, over loopback), interleaved run by run: median MB/s of
    the first backup of the dataset and a big file, of the restore of it, and of a cold `cat` of
    the big file through a fresh mount (restic mount for restic)."""
    import sshserver  # (beside this file)
    if reason := sshserver.missing():
        raise StepFailed(f"--backend sftp: {reason}")
    mount_reason = mount_unavailable()
    if mount_reason:
        log(f"bench: cold cat through the mount skipped: {mount_reason}")
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="fsbackup-bench-sftp-")))
    server = sshserver.SshServer()
    tools = ["fsbackup"] + ["restic"] * bool(shutil.which("restic"))
    samples: dict[str, dict[str, list[float]]] = {t: {"backup": [], "restore": [], "cat": []} for t in tools}
    try:
        server.start()
        source = work / "source"
        log(f"bench: generating {args.size_mb} MiB of data and a {args.big_file_mb} MiB file ...")
        generate_dataset(_fresh(source / "tree"), args.size_mb, args.seed)
        big = source / "big.img"
        _write_large_file(big, args.big_file_mb * MIB, random.Random(args.seed + 2), [])
        files, size = tree_totals(source)

        def run(env: dict[str, str], argv: list[str], step: str) -> float:
            start = time.perf_counter()
            p = subprocess.run(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True)
            if p.returncode != 0:
                raise StepFailed(f"{step}: exit status {p.returncode}: {p.stderr.strip()[-300:]}")
            return time.perf_counter() - start

        for n in range(args.runs):
            for tool in tools:
                log(f"bench: sftp run {n + 1}/{args.runs}: {tool} ...")
                storage, sandbox = server.storage(), _fresh(work / f"{tool}-{n}")
                env, cli = sftp_commands(tool, server, storage, sandbox)
                run(env, [*cli, "init"], f"{tool} init")
                warm_dataset(source)
                samples[tool]["backup"].append(size / run(env, [*cli, "backup", str(source)], f"{tool} backup") / MB)
                drop_page_cache()
                seconds = run(env, [*cli, "restore", "latest", "--target", str(sandbox / "restore")],
                              f"{tool} restore")
                samples[tool]["restore"].append(size / seconds / MB)
                remove_tree(sandbox / "restore")
                if not mount_reason:
                    samples[tool]["cat"].append(big.stat().st_size / sftp_cold_cat(tool, env, cli, sandbox, big) / MB)
                remove_tree(sandbox)
                remove_tree(storage)
        medians = {tool: {key: statistics.median(values) if values else None for key, values in per.items()}
                   for tool, per in samples.items()}
        return {"files": files, "bytes": size, "big_file_bytes": big.stat().st_size, "runs": args.runs,
                "tools": medians, "samples": samples}
    finally:
        unmount_all_under(work)
        server.stop()
        remove_tree(work)


def sftp_cold_cat(tool: str, env: dict[str, str], cli: list[str], sandbox: Path, big: Path) -> float:
    """Seconds to `cat` the big file through a fresh mount of the tool's newest version, with an
    empty cache and (as root) the page cache dropped."""
    mountpoint = sandbox / "mnt"
    extra = ["--cache-dir", str(sandbox / "mount-cache")] if tool == "fsbackup" else []
    latest = mountpoint / ("latest" if tool == "fsbackup" else "snapshots/latest")
    return cold_cat([*cli, "mount", *extra, str(mountpoint)], {**os.environ, **env}, mountpoint,
                    lambda: latest / str(big).lstrip("/"), sandbox / "logs", f"{tool} cat")


# --------------------------------------------------------------------------------------
# --backend s3: fsbackup and restic on one local S3 server
# --------------------------------------------------------------------------------------

S3_KEY, S3_SECRET = "bench-key", "bench-secret"   # moto accepts any credentials


class S3Server:
    """moto's S3 server (`python -m moto.server`, a test dependency) on a free loopback port, in a
    process of its own; `stop` ends it."""

    def __init__(self, log_path: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StepFailed(f"the S3 server did not start (is moto[server] installed?): "
                                     f"{last_line(log_path) or 'no output'}") from None
                time.sleep(0.1)

    def create_bucket(self, name: str) -> None:
        import boto3
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY,
                     aws_secret_access_key=S3_SECRET).create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket: moto keeps objects in memory."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=60).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class S3Tool(NamedTuple):
    """How one tool uses a repository in an S3 bucket: its variables, and its commands."""
    name: str
    env: Callable[[str, str, Path], dict[str, str]]                 # endpoint, bucket, work folder
    init: list[str]
    backup: Callable[[Path], list[str]]                              # source
    restore: Callable[[Path], list[str]]                             # target
    mount: Callable[[Path, Path], list[str]]                         # mountpoint, cache folder
    latest: Callable[[Path], Path]                                   # the newest version in a mount


def s3_tools() -> list[S3Tool]:
    aws = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    tools = [S3Tool(
        "fsbackup",
        lambda endpoint, bucket, work: {**aws, "FSBACKUP_REPOSITORY": f"s3://{bucket}/repo",
                                        "FSBACKUP_S3_ENDPOINT": endpoint, "FSBACKUP_S3_PATH_STYLE": "1",
                                        "FSBACKUP_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(work / "cache")},
        ["fsbackup", "-q", "init"],
        lambda source: ["fsbackup", "-q", "backup", str(source)],
        lambda target: ["fsbackup", "-q", "restore", "latest", "--target", str(target)],
        lambda mnt, cache: ["fsbackup", "mount", "--cache-dir", str(cache), str(mnt)],
        lambda mnt: mnt / "latest")]
    if shutil.which("restic"):
        tools.append(S3Tool(
            "restic",
            lambda endpoint, bucket, work: {**aws, "RESTIC_REPOSITORY": f"s3:{endpoint}/{bucket}/repo",
                                            "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "cache")},
            ["restic", "init", "-o", "s3.bucket-lookup=path"],
            lambda source: ["restic", "backup", "--quiet", "-o", "s3.bucket-lookup=path", str(source)],
            lambda target: ["restic", "restore", "latest", "-o", "s3.bucket-lookup=path", "--target", str(target)],
            lambda mnt, cache: ["restic", "mount", "-o", "s3.bucket-lookup=path", str(mnt)],
            lambda mnt: mnt / "snapshots" / "latest"))
    return tools


def timed(argv: list[str], env: dict[str, str], step: str) -> float:
    start = time.perf_counter()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise StepFailed(f"{step}: exit status {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return time.perf_counter() - start


def cold_cat(mount: list[str], env: dict[str, str], mountpoint: Path, inside: Callable[[], Path], logs: Path,
             step: str) -> float:
    """Seconds to `cat` a file (`inside()`, once mounted) through a fresh mount (`mount`, which
    serves in the foreground at `mountpoint`) with the page cache dropped; unmounts it after."""
    mountpoint.mkdir(parents=True)
    proc = subprocess.Popen(mount, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + MOUNT_READY_TIMEOUT
        while not (is_mounted(mountpoint) and inside().exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StepFailed(f"{step}: the mount did not come up")
            time.sleep(POLL_SECONDS)
        path = inside()
        drop_page_cache()
        return run_client(["cat", str(path)], logs, step)
    finally:
        unmount(mountpoint)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_sftp(data: dict) -> None:
    print(f"sftp:// on an OpenSSH server over loopback: {data['files']:,} files, {data['bytes'] / MIB:.0f} MiB "
          f"(with a {data['big_file_bytes'] / MIB:.0f} MiB file); medians of {data['runs']} runs, MB/s")
    tools = data["tools"]
    rows = (("first backup", "backup"), ("restore", "restore"), ("cold cat of the big file, mount", "cat"))
    print(f"{'':34}" + "".join(f"{name:>10}" for name in tools) + ("  fsbackup/restic" if "restic" in tools else ""))
    for label, key in rows:
        values = [tools[name][key] for name in tools]
        line = f"{label:34}" + "".join(f"{v:10.1f}" if v is not None else f"{'-':>10}" for v in values)
        if "restic" in tools and tools["fsbackup"][key] and tools["restic"][key]:
            line += f"  {tools['fsbackup'][key] / tools['restic'][key]:14.2f}x"
        print(line)
    print("(higher is better; a ratio above 1x: fsbackup is faster)")


def run_mode(scenario: Callable[[argparse.Namespace], dict], printer: Callable[[dict], None],
             args: argparse.Namespace) -> int:
    """A mode that replaces the comparison (--backend, --latency-ms, --fleet): its figures as a
    table, or as JSON with --json; a step that fails ends it with one line and status 1."""
    try:
        data = scenario(args)
    except (StepFailed, subprocess.CalledProcessError) as e:
        log(f"bench: {e}")
        return 1
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        printer(data)
    return 0


def s3_scenario(args: argparse.Namespace) -> dict:
    """fsbackup and restic against one local S3 server (moto), interleaved run by run, each run
    in fresh buckets: the first backup's MB/s (the dataset plus the big file), the restore's MB/s,
    and the cold `cat` MB/s of the big file through a fresh mount; medians."""
    if reason := mount_unavailable():
        raise StepFailed(f"the s3 scenario needs a mount: {reason}")
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="fsbackup-bench-s3-")))
    server = None
    try:
        source = work / "source"
        log(f"bench: generating {args.size_mb} MiB of data and the {args.big_file_mb} MiB file ...")
        source.mkdir()
        generate_dataset(source / "tree", args.size_mb, args.seed)
        big = source / "big.img"
        _write_large_file(big, args.big_file_mb * MIB, random.Random(args.seed + 2), [])
        files, size = tree_totals(source)
        time.sleep(SETTLE_SECONDS)
        server = S3Server(work / "s3-server.log")
        log(f"bench: S3 server (moto) at {server.endpoint}")
        tools = s3_tools()
        if len(tools) == 1:
            log("bench: restic is not installed: fsbackup alone")
        samples: dict[str, dict[str, list[float]]] = {
            t.name: {"backup_mbps": [], "restore_mbps": [], "cold_cat_mbps": []} for t in tools}
        for n in range(args.runs):
            for tool in tools:
                log(f"bench: s3 run {n + 1}/{args.runs}: {tool.name} ...")
                run_dir = work / f"{tool.name}-{n}"
                bucket = f"bench-{tool.name}-{n}"
                server.create_bucket(bucket)
                env = {**os.environ, **tool.env(server.endpoint, bucket, run_dir)}
                timed(tool.init, env, f"{tool.name} init")
                warm_dataset(source)
                per = samples[tool.name]
                per["backup_mbps"].append(size / timed(tool.backup(source), env, f"{tool.name} backup") / MB)
                drop_page_cache()
                target = run_dir / "restore"
                target.mkdir()
                per["restore_mbps"].append(size / timed(tool.restore(target), env, f"{tool.name} restore") / MB)
                remove_tree(target)
                mountpoint = run_dir / "mnt"
                seconds = cold_cat(tool.mount(mountpoint, run_dir / "mount-cache"), env, mountpoint,
                                   lambda: tool.latest(mountpoint) / str(big).lstrip("/"), run_dir / "logs",
                                   f"{tool.name} cat")
                per["cold_cat_mbps"].append(big.stat().st_size / seconds / MB)
                remove_tree(run_dir)
            server.reset()
        medians = {name: {key: statistics.median(values) for key, values in per.items()}
                   for name, per in samples.items()}
        return {"files": files, "bytes": size, "big_file_bytes": big.stat().st_size, "runs": args.runs,
                "page_cache_dropped": bool(_page_cache_droppable), "tools": medians, "samples": samples}
    finally:
        unmount_all_under(work)
        if server is not None:
            server.stop()
        remove_tree(work)


def print_s3(data: dict) -> None:
    print(f"S3 (a local moto server): {data['files']:,} files, {data['bytes'] / MIB:.0f} MiB, of which a "
          f"{data['big_file_bytes'] / MIB:.0f} MiB file; fresh buckets each run; medians of {data['runs']} runs"
          + ("" if data["page_cache_dropped"] else " (page cache not dropped)"))
    tools = data["tools"]
    rows = [("first backup (MB/s)", "backup_mbps"), ("restore (MB/s)", "restore_mbps"),
            ("mount, cold cat of the big file (MB/s)", "cold_cat_mbps")]
    print(f"{'':40} " + " ".join(f"{name:>10}" for name in tools)
          + (f" {'fsbackup/restic':>16}" if "restic" in tools else ""))
    for label, key in rows:
        line = f"{label:40} " + " ".join(f"{m[key]:10.1f}" for m in tools.values())
        if "restic" in tools:
            line += f" {tools['fsbackup'][key] / tools['restic'][key]:15.2f}x"
        print(line)
    if "restic" in tools:
        print("(ratios above 1x: fsbackup is faster)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.backend == "sftp":
        return run_mode(sftp_scenario, print_sftp, args)
    if args.latency_ms is not None:
        return run_mode(remote_like_scenario, print_remote_like, args)
    if args.backend == "s3":
        return run_mode(s3_scenario, print_s3, args)
    if args.fleet:
        return run_mode(fleet_scenario, print_fleet, args)
    if args.no_mount:
        run_mount = False
    elif reason := mount_unavailable():
        log(f"bench: mount scenario skipped: {reason}")
        if args.mount_only:
            log("bench: --mount-only: nothing to run")
            return 1
        run_mount = False
    else:
        run_mount = True
    tools = [t for t in ALL_TOOLS if t.name == SUBJECT or t.installed()]
    skipped = [t.name for t in ALL_TOOLS if t not in tools]
    if skipped:
        log(f"bench: not installed, skipped: {', '.join(skipped)}")
    if not run_mount and any(t.mount_only for t in tools):
        log(f"bench: no mount scenario, so no {', '.join(t.name for t in tools if t.mount_only)}")
        tools = [t for t in tools if not t.mount_only]
    if args.mount_only:
        scenarios = [backups_only, mount_scenario]
    else:
        scenarios = [s for s in SCENARIOS if run_mount or s is not mount_scenario]
    groups = {"mount"} if args.mount_only else {"backup", "mount"} if run_mount else {"backup"}
    metrics = [m for m in METRICS if m.group in groups]

    # The real path: /proc/mounts names mount points by it, and every tool records it.
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="fsbackup-bench-")))
    try:
        data_root = work / "data"
        start = time.perf_counter()
        if args.data:
            log(f"bench: copying {args.data} ...")
            dataset = copy_dataset(args.data, data_root)
        else:
            log(f"bench: generating {args.size_mb} MiB of data (seed {args.seed}) ...")
            data_root.mkdir()
            dataset = generate_dataset(data_root, args.size_mb, args.seed)
        files, size = tree_totals(dataset.root)
        log(f"bench: dataset ready in {time.perf_counter() - start:.1f}s: {files:,} files, "
            f"{size / MIB:.1f} MiB")
        time.sleep(SETTLE_SECONDS)

        mount_plan, mount_info = None, None
        if run_mount:
            start = time.perf_counter()
            log(f"bench: generating the {args.big_file_mb} MiB file for the mount scenario ...")
            mount_plan = make_mount_plan(dataset, work, args.big_file_mb, args.seed)
            log(f"bench: big file ready in {time.perf_counter() - start:.1f}s")

        edits = Edits(dataset, args.seed)
        results = benchmark(tools, dataset, edits, work, args.runs, scenarios, mount_plan)
        if mount_plan:
            mount_info = {"big_file_bytes": mount_plan.big_file.stat().st_size,
                          "first_byte_file": (str(mount_plan.first_byte_file)
                                              if mount_plan.first_byte_file else None),
                          "page_cache_dropped": bool(_page_cache_droppable)}
        data = report_data(machine_info(), dataset, files, size, edits, args.runs, results,
                           metrics, mount_info)
    finally:
        unmount_all_under(work)  # never leave a stale mount, nor rmtree into one
        remove_tree(work)

    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print_table(data)
    # Failing tools are reported, not fatal: the peers' numbers are still worth having.
    return 0


if __name__ == "__main__":
    sys.exit(main())
