"""Benchmark fsbackup against restic and borg on the same data, in the same run.

Run it through scripts/bench, which installs the tools first. Every tool goes through the
same cycle on a fresh repository, --runs times, and the table reports medians:

    init (not timed) -> first backup -> unchanged re-backup -> small edits + backup
    -> repository size -> restore of the newest version into an empty directory

Tools are interleaved run by run (fsbackup, restic, borg, fsbackup, ...) so that a slow
phase of the machine does not land on one tool only. Everything happens below one
temporary directory that is removed at the end. Only the standard library is used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
    Mount benchmarks (time to first listing, find, cp -a, cat cold/warm) will add a
    `mount(box, mountpoint) -> Command` here for each tool; see SCENARIOS below.
    """
    name = ""
    executable = ""

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


ALL_TOOLS: list[Tool] = [FsBackupTool(), ResticTool(), BorgTool()]
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


METRICS = [
    Metric("first_backup_s", "first backup", "s", "lower"),
    Metric("first_backup_mbps", "first backup", "MB/s", "higher", 1),
    Metric("unchanged_backup_s", "unchanged re-backup", "s", "lower"),
    Metric("edited_backup_s", "backup after small edits", "s", "lower"),
    Metric("repo_size_first_mib", "repository size after first backup", "MiB", "lower", 1),
    Metric("repo_size_mib", "repository size after 3 backups", "MiB", "lower", 1),
    Metric("repo_size_bytes", "repository size after 3 backups", "bytes", "lower", 0),
    Metric("restore_s", "restore latest", "s", "lower"),
    Metric("restore_mbps", "restore latest", "MB/s", "higher", 1),
    Metric("first_backup_rss_mib", "peak RSS during first backup", "MiB", "lower", 1),
]


@dataclass
class RunContext:
    """What a scenario gets: one tool, its fresh sandbox, and where to put its numbers."""
    tool: Tool
    box: Sandbox
    dataset: Dataset
    edits: Edits
    samples: dict[str, float] = field(default_factory=dict)
    last_label: str = ""

    def run(self, step: str, command: Command) -> Measurement:
        env = {**os.environ, **self.tool.environment(self.box)}
        return run_step(command, env, self.box.logs, step)

    def backup(self, step: str, label: str) -> Measurement:
        measured = self.run(step, self.tool.backup(self.box, self.dataset.root, label))
        self.last_label = label
        return measured


def backup_restore_cycle(ctx: RunContext) -> None:
    """The backup scenario: three backups of changing data, then a restore of the last."""
    ctx.run("init", ctx.tool.init(ctx.box))
    _, data_bytes = tree_totals(ctx.dataset.root)

    first = ctx.backup("first backup", "first")
    ctx.samples["first_backup_s"] = first.seconds
    ctx.samples["first_backup_mbps"] = data_bytes / MB / first.seconds
    if first.peak_rss_bytes is not None:
        ctx.samples["first_backup_rss_mib"] = first.peak_rss_bytes / MIB
    ctx.samples["repo_size_first_mib"] = repository_bytes(ctx.box.repo) / MIB

    ctx.samples["unchanged_backup_s"] = ctx.backup("unchanged backup", "unchanged").seconds

    ctx.edits.apply()
    try:
        time.sleep(SETTLE_SECONDS)
        ctx.samples["edited_backup_s"] = ctx.backup("edited backup", "edited").seconds
        size = repository_bytes(ctx.box.repo)
        ctx.samples["repo_size_bytes"] = size
        ctx.samples["repo_size_mib"] = size / MIB

        # Restore before undoing the edits: the restored tree must match the edited data.
        ctx.box.restore.mkdir()
        expected_files, expected_bytes = tree_totals(ctx.dataset.root)
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


# Scenarios run in this order on the same sandbox, so later ones find a repository holding
# the three backups. Mount benchmarks go here: a `mount_scenario(ctx)` that starts
# `ctx.tool.mount(ctx.box, mountpoint)` (fsbackup mount / restic mount / borg mount) in the
# background, times the first listing, find, cp -a and cat cold/warm, and unmounts — plus
# the matching Metric entries above.
SCENARIOS: list[Callable[[RunContext], None]] = [backup_restore_cycle]


# --------------------------------------------------------------------------------------
# Driving the runs
# --------------------------------------------------------------------------------------

@dataclass
class ToolResult:
    tool: Tool
    version: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""

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


def benchmark(tools: list[Tool], dataset: Dataset, edits: Edits, work: Path, runs: int
              ) -> list[ToolResult]:
    results = [ToolResult(tool, tool.version()) for tool in tools]
    for run in range(1, runs + 1):
        for result in results:
            if result.error:  # a tool that failed once would most likely fail again
                continue
            ctx = RunContext(result.tool, Sandbox(work / f"{result.tool.name}-run{run}"),
                             dataset, edits)
            ctx.box.root.mkdir()
            try:
                for scenario in SCENARIOS:
                    scenario(ctx)
            except StepFailed as e:
                result.error = str(e)
                log(f"[run {run}/{runs}] {result.tool.name}: FAILED: {e}")
            finally:
                # Partial numbers still count: a failed restore says nothing about backups.
                for key, value in ctx.samples.items():
                    result.samples.setdefault(key, []).append(value)
                remove_tree(ctx.box.root)  # repositories and restores add up on disk
            if not result.error:
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
                edits: Edits, runs: int, results: list[ToolResult]) -> dict:
    subject = next((r for r in results if r.tool.name == SUBJECT), None)
    peers = [r for r in results if r.tool.name != SUBJECT]
    return {
        "machine": machine,
        "dataset": {"description": dataset.description, "files": dataset_files,
                    "bytes": dataset_bytes, "edits": edits.describe()},
        "runs": runs,
        "statistic": "median",
        "metrics": [{"key": m.key, "label": m.label, "unit": m.unit, "better": m.better}
                    for m in METRICS],
        "tools": {r.tool.name: {"version": r.version,
                                "status": "failed" if r.error else "ok",
                                "error": r.error or None,
                                "median": {m.key: r.median(m.key) for m in METRICS},
                                "samples": r.samples} for r in results},
        "ratios": {f"{SUBJECT}/{p.tool.name}": {m.key: ratio(subject, p, m.key) for m in METRICS}
                   for p in peers},
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
    print(f"runs: {data['runs']} per tool, values are medians\n")

    names = list(data["tools"])
    ratio_names = list(data["ratios"])
    header = ["metric", "better", *names, *ratio_names]
    rows = []
    for metric in METRICS:
        row = [f"{metric.label} ({metric.unit})", metric.better]
        for name in names:
            value = data["tools"][name]["median"][metric.key]
            row.append("failed" if value is None else f"{value:,.{metric.digits}f}")
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
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mb < 1:
        parser.error("--runs and --size-mb must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tools = [t for t in ALL_TOOLS if t.name == SUBJECT or t.installed()]
    skipped = [t.name for t in ALL_TOOLS if t not in tools]
    if skipped:
        log(f"bench: not installed, skipped: {', '.join(skipped)}")

    work = Path(tempfile.mkdtemp(prefix="fsbackup-bench-"))
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

        edits = Edits(dataset, args.seed)
        results = benchmark(tools, dataset, edits, work, args.runs)
        data = report_data(machine_info(), dataset, files, size, edits, args.runs, results)
    finally:
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
