"""Shared fixtures: a repository in a temporary folder, a CLI runner, and tree builders/comparers."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fsbackup.cli import main as cli_main

TEST_PASSWORD = "correct horse battery staple"


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Env:
    """A repository URL, a passphrase and a private cache folder, for in-process and subprocess runs."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repo = tmp / "repo"
        self.cache = tmp / "cache"
        self.vars = {"FSBACKUP_REPOSITORY": str(self.repo), "FSBACKUP_PASSWORD": TEST_PASSWORD,
                     "XDG_CACHE_HOME": str(self.cache), "FSBACKUP_KDF_MEMORY_KIB": "1024",
                     "FSBACKUP_WEAK_KDF_FOR_TESTS": "1"}

    def environ(self, **extra) -> dict:
        env = dict(os.environ)
        env.pop("FSBACKUP_PASSWORD_COMMAND", None)
        env.update(self.vars)
        env.update(extra)
        return env

    def run(self, *args: str, **extra_env) -> Result:
        """Run the CLI in this process (fast); stdout/stderr are captured."""
        import contextlib
        import io
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.environ(**extra_env))
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli_main([str(a) for a in args])
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 2
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return Result(rc, out.getvalue(), err.getvalue())

    def run_process(self, *args: str, **extra_env) -> Result:
        """Run the CLI as a separate process, as a user would."""
        p = subprocess.run([sys.executable, "-m", "fsbackup", *map(str, args)], env=self.environ(**extra_env),
                           capture_output=True, text=True)
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str, **extra_env) -> Result:
        r = self.run(*args, **extra_env)
        assert r.rc == 0, f"fsbackup {' '.join(map(str, args))} -> {r.rc}\n{r.out}\n{r.err}"
        return r


SOAK_VARIABLE = "FSBACKUP_SOAK"     # =1: run every parameter set of the tests marked soak


def pytest_configure(config):
    config.addinivalue_line("markers", "soak(sample=N): a parametrized fault-injection test run in full only with "
                            f"{SOAK_VARIABLE}=1; otherwise N of its parameter sets, spread evenly, run")


def pytest_collection_modifyitems(config, items):
    """Tests marked soak(sample=N) run N of their parameter sets (first, last and evenly between),
    unless FSBACKUP_SOAK=1: the suite stays within CI's time while every kind of fault still runs."""
    if os.environ.get(SOAK_VARIABLE) == "1":
        return
    groups: dict[str, list] = {}
    for item in items:
        if item.get_closest_marker("soak") is not None:
            groups.setdefault(item.originalname, []).append(item)
    dropped = set()
    for group in groups.values():
        sample = group[0].get_closest_marker("soak").kwargs.get("sample", 1)
        if len(group) > sample:
            keep = {round(i * (len(group) - 1) / max(1, sample - 1)) for i in range(sample)} if sample > 1 else {0}
            dropped |= {id(item) for k, item in enumerate(group) if k not in keep}
    if dropped:
        config.hook.pytest_deselected(items=[item for item in items if id(item) in dropped])
        items[:] = [item for item in items if id(item) not in dropped]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.ok("init")
    return e


@pytest.fixture
def blank_env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def wrap_storage():
    """`wrap_storage(wrap, scheme="file")`: backends opened afterwards for that scheme's URLs (by
    `open_backend`, so by the command line in this process) are `wrap(the plain backend)`, inside
    the retry layer. Returns a function that undoes it; whatever is left is undone after the test."""
    from fsbackup import backends
    undo: list = []

    def wrap_scheme(wrap, scheme: str = "file"):
        plain = backends.register_scheme(scheme, lambda url: wrap(plain(url)))

        def restore() -> None:
            if restore in undo:
                undo.remove(restore)
                backends.register_scheme(scheme, plain)
        undo.append(restore)
        return restore
    yield wrap_scheme
    for restore in reversed(list(undo)):
        restore()


@pytest.fixture
def no_leftover_age(monkeypatch):
    """Prune and repair judge no object by its age (docs/maintenance.md, "After an interrupted
    backup"), in this process and in the commands it starts: for tests that prune right after the
    backups and forgets they set up (tests/test_fleet.py and tests/test_leftovers.py test the age)."""
    from fsbackup.repository import locks
    monkeypatch.setattr(locks, "LEFTOVER_AGE", 0)
    monkeypatch.setenv(locks.LEFTOVER_AGE_FOR_TESTS, "0")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pseudo_random(n: int, seed: int) -> bytes:
    """Incompressible but reproducible bytes."""
    import random
    return random.Random(seed).randbytes(n)


def make_full_tree(root: Path) -> Path:
    """A tree with every entry type and metadata field fsbackup keeps."""
    root.mkdir(parents=True, exist_ok=True)
    write(root / "text.txt", b"hello world\n" * 1000)
    write(root / "random.bin", pseudo_random(3 * 1024 * 1024 + 17, 1))
    write(root / "empty", b"")
    (root / "empty dir").mkdir()
    write(root / "dir with spaces" / "name with\nnewline", b"newline name")
    write(root / os.fsdecode(b"bad-\xff\xfe-utf8"), b"non utf-8 name")
    write(root / "deep" / "a" / "b" / "c" / "d" / "leaf.txt", b"leaf")
    os.symlink("text.txt", root / "link-to-text")
    os.symlink("/nonexistent/target with space", root / "dangling-link")
    os.link(root / "random.bin", root / "hardlink-to-random")
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.seek(1024 * 1024)
        f.write(b"in the middle of holes")
        f.truncate(8 * 1024 * 1024)
    os.chmod(root / "text.txt", 0o640)
    os.chmod(root / "deep" / "a", 0o751)
    os.setxattr(root / "text.txt", "user.comment", b"an xattr value")
    os.setxattr(root / "empty dir", "user.dir", b"on a directory")
    if os.geteuid() == 0:
        os.mknod(root / "chardev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(root / "empty", 1234, 5678)
        os.chown(root / "link-to-text", 4321, 8765, follow_symlinks=False)
    os.utime(root / "text.txt", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.utime(root / "deep", ns=(1_600_000_001_000_000_001, 1_500_000_001_000_000_001))
    return root


def snapshot(root: Path, with_atime: bool = True) -> dict:
    """Everything restore must reproduce, keyed by relative path (bytes)."""
    out = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root_b)
            st = os.lstat(p)
            rec = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
                   "size": st.st_size if not stat.S_ISDIR(st.st_mode) else None, "rdev": st.st_rdev,
                   "nlink": st.st_nlink if not stat.S_ISDIR(st.st_mode) else None}
            # (reading a symlink or directory updates its atime, so only files' atimes are stable)
            if with_atime and stat.S_ISREG(st.st_mode):
                rec["atime_ns"] = st.st_atime_ns
            if stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(p, os.O_RDONLY | os.O_NOATIME)   # reading must not change the atime compared
                with open(fd, "rb") as f:
                    rec["data"] = f.read()
                rec["allocated_le_size"] = st.st_blocks * 512 <= max(st.st_size, 4096) * 2
            try:
                rec["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False)
                                 for n in os.listxattr(p, follow_symlinks=False)}
            except OSError:
                rec["xattrs"] = None
            out[rel] = rec
    # hard-link groups, as sets of relative paths
    groups: dict = {}
    for dirpath, _, filenames in os.walk(root_b):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                groups.setdefault(st.st_ino, set()).add(os.path.relpath(p, root_b))
    out[b"<hardlinks>"] = sorted(sorted(g) for g in groups.values())
    return out


def restored_root(target: Path, source: Path) -> Path:
    return Path(str(target) + str(source.resolve()))


class UnprivilegedUser:
    """A real unprivileged user, created with useradd when missing: for tests of permissions,
    which root ignores. `run` runs the CLI as that user (through setpriv)."""

    NAME = "fsbackup-test"

    def __init__(self, uid: int, gid: int):
        self.uid, self.gid = uid, gid

    def own(self, *paths: Path) -> None:
        for p in paths:
            os.chown(p, self.uid, self.gid)

    def folder(self) -> Path:
        """A new folder in the system's temporary folder (which every user can reach), owned by the user."""
        import tempfile
        base = Path(tempfile.mkdtemp(prefix="fsb-user-"))
        base.chmod(0o755)
        self.own(base)
        return base

    def run(self, env: "Env", *args: str) -> Result:
        p = subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                            sys.executable, "-m", "fsbackup", *map(str, args)],
                           env=env.environ(), capture_output=True, text=True, cwd=env.tmp)
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="session")
def unprivileged_user() -> UnprivilegedUser:
    import pwd
    import shutil
    if os.geteuid() != 0:
        pytest.skip("needs root to create an unprivileged user and run commands as it")
    if not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("setpriv or useradd is missing: cannot run commands as an unprivileged user")
    try:
        pw = pwd.getpwnam(UnprivilegedUser.NAME)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        UnprivilegedUser.NAME], check=True)
        pw = pwd.getpwnam(UnprivilegedUser.NAME)
    return UnprivilegedUser(pw.pw_uid, pw.pw_gid)


def uploads_in_flight_seen(monkeypatch) -> list[int]:
    """Record how many volume uploads each backup in this process lets run at once."""
    from fsbackup.engine.backup import Backup
    seen: list[int] = []
    real_init = Backup.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self.options.uploads_in_flight)
    monkeypatch.setattr(Backup, "__init__", init)
    return seen
