"""A randomized soak: backups, restores, reads through a mount, repairs, forgets and prunes run at the
same time on one repository through three local indexes, with listings failing and downloads
damaged at random. Commands may fail (locked, a failed listing, detected damage), but none may
report success over wrong data, nothing may leave a traceback, and afterwards every version that
was never named to `forget` restores exactly.

CI runs a bounded sample (FSBACKUP_SOAK_SEEDS, default 2, each FSBACKUP_SOAK_SECONDS long, default
25); set them higher for a longer soak.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Env, pseudo_random, write
from test_mount import FUSE_MISSING, Mount

SEEDS = int(os.environ.get("FSBACKUP_SOAK_SEEDS", "2"))
SECONDS = float(os.environ.get("FSBACKUP_SOAK_SECONDS", "25"))
FAULTS = "0.03:0.02"             # share of listings that fail, share of downloads damaged
FAULTY_CLI = str(Path(__file__).with_name("faulty_cli.py"))
# What a command may answer while others run: done, damage detected (or a listing refused),
# version gone, locked, storage failure (an injected listing fault).
ALLOWED = {0, 12, 13, 14, 17}


class Soak:
    def __init__(self, env: Env, tmp: Path, seed: int):
        self.env, self.tmp, self.seed = env, tmp, seed
        self.caches = {name: tmp / f"cache-{name}" for name in ("a", "b", "mount")}
        self.expected: dict[str, dict[str, bytes]] = {}     # snapshot folder -> its files
        self.created: dict[str, str] = {}                   # version id -> snapshot folder
        self.named_to_forget: set[str] = set()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.counts: dict[str, int] = {}
        self.reasons: dict[str, list[str]] = {}             # the first error line of each kind of failure
        self.snapshots = 0

    def run(self, index: str, *args, faults: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        env = self.env.environ(XDG_CACHE_HOME=str(self.caches[index]))
        if faults:
            env["FSBACKUP_TEST_FAULTS"] = f"{self.seed}:{FAULTS}"
        p = subprocess.run([sys.executable, FAULTY_CLI, *map(str, args)], env=env, capture_output=True, text=True,
                           timeout=timeout, cwd=self.tmp)
        verb = str(args[0])
        with self.lock:
            self.counts[f"{verb} {p.returncode}"] = self.counts.get(f"{verb} {p.returncode}", 0) + 1
            if p.returncode:
                self.reasons.setdefault(f"{verb} {p.returncode}", p.stderr.strip().splitlines()[-1:])
            if "Traceback" in p.stderr or "internal error" in p.stderr or p.returncode not in ALLOWED:
                self.failures.append(f"{' '.join(map(str, args))} -> {p.returncode}: {p.stderr[-2000:]}")
        return p

    def new_snapshot(self, rng: random.Random) -> Path:
        """A folder no one changes afterwards: what a version of it must restore to. Most files
        are shared with other snapshots (dedup, and blocks prune must keep)."""
        with self.lock:
            self.snapshots += 1
            k = self.snapshots
        folder = self.tmp / "snaps" / f"s{k}"
        files = {}
        for i in range(12):
            seed = self.seed * 1000 + (k * 100 + i if rng.random() < 0.3 else i)
            files[f"d{i % 3}/f{i}"] = pseudo_random(3000 + (seed % 7) * 9000, seed)
        for rel, data in files.items():
            write(folder / rel, data)
        self.expected[str(folder)] = files
        return folder

    def known_versions(self, index: str) -> list[str]:
        p = self.run(index, "versions", "--json")
        return [v["id"] for v in json.loads(p.stdout)] if p.returncode == 0 else []

    def check_restored(self, target: Path, version: str, complete: bool) -> None:
        """Every file a restore left under its final name holds the right bytes; all of them when
        the restore said it succeeded."""
        folder = self.created.get(version)
        if folder is None:
            return                                          # made before the soak's bookkeeping
        expected = self.expected[folder]
        root = Path(str(target) + folder)
        found = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} \
            if root.exists() else {}
        wrong = [rel for rel, data in found.items() if expected.get(rel) != data]
        missing = set(expected) - set(found)
        with self.lock:
            if wrong:
                self.failures.append(f"restore of {version[:8]} wrote wrong bytes: {wrong}")
            if complete and missing:
                self.failures.append(f"restore of {version[:8]} reported success without {sorted(missing)}")

    # ---- the actors ---------------------------------------------------------------------------

    def backups(self, rng: random.Random, until: float) -> None:
        while time.monotonic() < until:
            folder = self.new_snapshot(rng)
            p = self.run(rng.choice("ab"), "backup", folder, "--volume-size", "64K", "--json", "--no-verify")
            if p.returncode == 0:
                with self.lock:
                    self.created[json.loads(p.stdout)["version"]] = str(folder)

    def maintenance(self, rng: random.Random, until: float) -> None:
        while time.monotonic() < until:
            index = rng.choice("ab")
            action = rng.choice(["forget", "forget", "prune", "repair", "check"])
            if action == "forget":
                versions = self.known_versions(index)
                if len(versions) > 3:
                    victim = rng.choice(versions[:-1])
                    with self.lock:
                        self.named_to_forget.add(victim)
                    self.run(index, "forget", victim)
            elif action == "prune":
                self.run(index, "prune", "--max-unused", "0", "--volume-size", "64K")
            else:
                self.run(index, action)

    def restores(self, rng: random.Random, until: float) -> None:
        n = 0
        while time.monotonic() < until:
            index = rng.choice("ab")
            versions = self.known_versions(index)
            if not versions:
                time.sleep(0.2)
                continue
            version = rng.choice(versions)
            n += 1
            target = self.tmp / f"restore-{threading.get_ident()}-{n}"
            p = self.run(index, "restore", version, "--target", target)
            self.check_restored(target, version, complete=p.returncode == 0)

    def mount_reads(self, mount: Mount, rng: random.Random, until: float) -> None:
        while time.monotonic() < until:
            try:
                versions = os.listdir(mount.mountpoint / "versions")
                vdir = mount.mountpoint / "versions" / rng.choice(versions)
                snaps = vdir / str(self.tmp / "snaps").lstrip("/")
                (name,) = os.listdir(snaps)
                folder = str(self.tmp / "snaps" / name)
                rel = rng.choice(sorted(self.expected[folder]))
                data = (snaps / name / rel).read_bytes()
            except (OSError, IndexError, ValueError, KeyError):
                continue                                    # gone, not yet there, or EIO: allowed
            if data != self.expected[folder][rel]:
                with self.lock:
                    self.failures.append(f"the mount returned wrong bytes for {folder}/{rel}")


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
@pytest.mark.parametrize("seed", range(SEEDS))
def test_concurrent_commands_under_faults_never_lose_a_version_or_return_wrong_bytes(env, tmp_path, seed):
    soak = Soak(env, tmp_path, seed)
    rng = random.Random(seed)
    for _ in range(3):
        folder = soak.new_snapshot(rng)
        p = soak.run("a", "backup", folder, "--volume-size", "64K", "--json", faults=False)
        assert p.returncode == 0, p.stderr
        soak.created[json.loads(p.stdout)["version"]] = str(folder)
    # The mount reads through faults too, and follows the others' prunes every few seconds.
    for attempt in range(5):          # an injected listing fault may stop the mount from starting
        try:
            mount = Mount(env, tmp_path / "mnt", launcher=(sys.executable, FAULTY_CLI),
                          XDG_CACHE_HOME=str(soak.caches["mount"]), FSBACKUP_TEST_FAULTS=f"{seed + attempt}:{FAULTS}",
                          FSBACKUP_MOUNT_SYNC_SECONDS="3")
            break
        except AssertionError as e:
            assert "simulated outage" in str(e), e
    until = time.monotonic() + SECONDS
    actors = [threading.Thread(target=fn, args=(*pre, random.Random(seed * 10 + i), until))
              for i, (fn, pre) in enumerate([(soak.backups, ()), (soak.maintenance, ()), (soak.restores, ()),
                                             (soak.mount_reads, (mount,))])]
    try:
        for t in actors:
            t.start()
        for t in actors:
            t.join()
    finally:
        assert mount.stop() == 0
    assert not soak.failures, "\n".join(soak.failures)

    # Afterwards, without faults: the repository is whole, and every version never named to
    # forget is there and restores exactly.
    p = soak.run("a", "repair", faults=False)
    assert p.returncode == 0, p.stderr
    p = soak.run("a", "check", "--read-data", faults=False)
    assert p.returncode == 0, p.stderr
    p = soak.run("a", "versions", "--json", faults=False)
    assert p.returncode == 0, p.stderr
    listed = {v["id"] for v in json.loads(p.stdout)}
    kept = set(soak.created) - soak.named_to_forget
    assert kept <= listed, f"versions lost: {sorted(kept - listed)}; commands: {soak.counts}"
    for version in sorted(listed & set(soak.created)):
        target = tmp_path / f"final-{version[:8]}"
        p = soak.run("a", "restore", version, "--target", target, faults=False)
        assert p.returncode == 0, p.stderr
        soak.check_restored(target, version, complete=True)
    assert not soak.failures, "\n".join(soak.failures)
    print(f"seed {seed}: {len(soak.created)} versions made, {len(soak.named_to_forget)} named to forget; "
          f"commands by exit code: {dict(sorted(soak.counts.items()))}")
    for kind, line in sorted(soak.reasons.items()):
        print(f"  {kind}: {line}")
