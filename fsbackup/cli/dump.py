"""`fsbackup dump`: a file of a version to stdout, or a directory as a tar or zip stream."""
from __future__ import annotations

import os
import stat
import sys
import tempfile

from ..catalog import Catalog
from ..errors import FsbackupError, UsageError, os_error_kind
from .options import FILTER_HELP, Command, version_filter, version_filter_options, version_spec_arg
from .output import Output
from .repo import opened

ARCHIVES = ("tar", "zip")


def add_arguments(p) -> None:
    p.add_argument("version", metavar="VERSION[:PATH]", type=version_spec_arg,
                   help="the version; latest:/etc/fstab is the same as 'latest /etc/fstab'")
    p.add_argument("path", nargs="?", default=None, metavar="PATH",
                   help="the file or directory to dump, its absolute path in the version")
    p.add_argument("--archive", choices=ARCHIVES, default=None,
                   help="write PATH and everything below it as a tar or zip archive (the default for anything "
                        "but a regular file: tar); a regular file without --archive: its content as it is")
    p.add_argument("-o", "--target", metavar="FILE",
                   help="write to FILE instead of stdout (replaced once the dump is complete: a dump "
                        "that fails leaves no FILE behind), e.g. -o home.tar")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..catalog.tree import VersionTree
    from ..catalog.versions import resolve_version
    from ..engine.dump import Dump
    spec = args.version
    if spec.subpath and args.path:
        raise UsageError("give the path to dump once: as VERSION:PATH or as PATH")
    path = spec.subpath or args.path
    if not path:
        raise UsageError("give the path to dump: fsbackup dump VERSION PATH (e.g. latest /etc/fstab)")
    with opened(args, out) as repo:
        # The tree is read in one read transaction of a connection of its own, as restore reads it:
        # a forget or backup running meanwhile cannot change it under the dump.
        tree_index = Catalog(repo.catalog_path)
        try:
            with tree_index.snapshot():
                tree = VersionTree(tree_index, resolve_version(tree_index, spec.version, version_filter(args)))
                archive = args.archive
                if archive is None and tree.resolve(path).type != "f":
                    archive = "tar"
                if args.target is None:
                    _dump_to_stdout(Dump(repo, tree, sys.stdout.buffer, out), path, archive)
                else:
                    _dump_to_file(repo, tree, out, path, archive, args.target)
        finally:
            tree_index.close()
    return 0


def _dump_to_stdout(dump, path: str, archive: str | None) -> None:
    sys.stdout.flush()
    if archive is not None and sys.stdout.isatty():
        raise UsageError(f"not writing a {archive} archive to a terminal; redirect it to a file or a pipe, "
                         "or use --target FILE")
    try:
        dump.run(path, archive)
    except BrokenPipeError:
        # The reader stopped (`| head`): nothing more to write, and nothing to flush at exit.
        _drop_stdout()
    except FsbackupError:
        if dump.sink.failed:      # (what stays buffered would fail again at exit, as a second message)
            _drop_stdout()
        raise


def _drop_stdout() -> None:
    """Point stdout at /dev/null: the stream ended, and what Python still holds for it goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dump_to_file(repo, tree, out: Output, path: str, archive: str | None, target: str) -> None:
    """Into a temporary file beside `target`, renamed to it once complete; a FIFO or device
    (e.g. /dev/stdout) is written directly."""
    from ..engine.dump import Dump
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise (os_error_kind(e) or UsageError)(f"cannot write to {target}: {e.strerror}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--target {target} is a directory; name a file")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            f = open(target, "wb")
        except OSError as e:           # (a socket, a device without a driver)
            raise (os_error_kind(e) or UsageError)(f"cannot write to {target}: {e.strerror}") from None
        with f:
            Dump(repo, tree, f, out).run(path, archive)
        return
    folder = os.path.dirname(os.path.abspath(target))
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".fsbackup-dump-")
    except OSError as e:
        raise (os_error_kind(e) or UsageError)(f"cannot write to {target}: {e.strerror}") from None
    try:
        with open(fd, "wb") as f:
            Dump(repo, tree, f, out).run(path, archive)
        # (left owner-only, as mkstemp makes it: a dump as root of /etc or /home written into a
        # shared folder must not be readable by everyone; chmod it to share it)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise


COMMAND = Command(
    "dump", "write a file of a version to stdout, or a directory as a tar or zip archive",
    "Write the content of the file at PATH in VERSION to stdout (or --target FILE); a directory,\n"
    "or with --archive anything, is written as a tar (the default) or zip archive of it and\n"
    "everything below it, with modes, owners, times, symlinks, hard links, devices, FIFOs and\n"
    "xattrs (tar; read them back with 'tar -x --xattrs', and as root --same-owner). Names in the\n"
    "archive are the paths in the version without the leading '/' (home/alice/notes.txt), as\n"
    "'fsbackup restore' places them below its target. Nothing is held in memory whole: the dump\n"
    "streams. Every block is authenticated and every file's content hash checked: damage stops\n"
    "the dump with an error (exit code 12), never wrong bytes. An archive is never written to a\n"
    "terminal. VERSION is an id, an unambiguous id prefix, or 'latest': the newest version of\n"
    "this machine's host (of the --host given instead).\n\n"
    + FILTER_HELP + "\n\n"
    "examples:\n"
    "  fsbackup dump latest /var/backups/db.sql | psql mydb\n"
    "  fsbackup dump latest:/etc/fstab > fstab-then\n"
    "  fsbackup dump latest /home/alice | tar -t\n"
    "  fsbackup dump latest /home/alice --archive zip -o alice.zip\n"
    "  fsbackup dump 3f2a9c1e /etc | tar -x -C /tmp/etc-then",
    add_arguments, run)
