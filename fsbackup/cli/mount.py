"""`fsbackup mount` and `umount`: the options; fsbackup.mount does the work."""
from __future__ import annotations

from .options import Command, cache_size_arg, version_filter, version_filter_options
from .output import Output
from .repo import open_repo


def add_arguments(p) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--daemon", action="store_true",
                   help="go to the background once the mount is ready (messages go to logs/mount.log next to "
                        "the local index)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users (and Samba/NFS servers) see the mount (needs user_allow_other in "
                        "/etc/fuse.conf when not root)")
    p.add_argument("--xattrs", choices=("auto", "on", "off"), default="auto",
                   help="whether the mount answers requests for extended attributes and ACLs. 'on': always. "
                        "'off': never; the kernel then stops asking, which makes 'ls -l' of a big directory "
                        "several times faster, but no version shows its xattrs, and ACLs are not enforced "
                        "(refused with --allow-other). 'auto' (default): 'off' when no version holds any xattr "
                        "as the mount starts and the mount is not --allow-other, else 'on'")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where fetched blocks are cached, encrypted: a new or empty folder, which fsbackup tags "
                        "and makes owner-only (default: next to the local index)")
    p.add_argument("--cache-size", metavar="SIZE", type=cache_size_arg, default=None,
                   help="bound of the block cache on disk, up to 1P (default: 1G for remote storage, 0 for a local "
                        "directory, which is its own cache)")
    version_filter_options(p)


def run(args, out: Output) -> int:
    from ..mount import mount
    # The mount opens the repository itself (open_repo; no lock: it only reads) and closes it
    # when it ends, which may be in a daemon forked meanwhile.
    chosen = version_filter(args)
    return mount(args, out, open_repo, None if chosen.is_empty() else chosen.matches)


def add_umount_arguments(p) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def run_umount(args, out: Output) -> int:
    from ..mount import umount
    return umount(args.mountpoint, out)


MOUNT = Command(
    "mount", "browse every version as a read-only filesystem",
    "Mount the repository at MOUNTPOINT (an empty directory): MOUNTPOINT/versions/<time>/ holds\n"
    "each version's files at their absolute paths, MOUNTPOINT/latest points to the newest one.\n"
    "hosts/<host>/ and tags/<tag>/ hold the same versions by machine and by tag, each with a\n"
    "latest; history/<path>/ lists every earlier state of a file (one entry per distinct content,\n"
    "named by time) or every name a folder ever held. --host, --tag and --path narrow all of it to\n"
    "the versions they choose; the top latest is the newest version shown, of any host.\n"
    "Browse with any file manager; restore with 'cp -a'. Only the bytes you read are fetched and\n"
    "decrypted. Backups may run while mounted: new versions appear within seconds.\n\n"
    "Stop with Ctrl-C, 'fsbackup umount MOUNTPOINT' or 'fusermount3 -u MOUNTPOINT'.\n\n"
    "Permissions are the backed-up ones, POSIX ACLs included; trusted.* xattrs are shown to root\n"
    "only. Once the repository is open, the mount removes FSBACKUP_PASSWORD from its environment\n"
    "(docs/mount.md says what that does and does not clear).",
    add_arguments, run)

UMOUNT = Command("umount", "unmount a mounted repository", "Unmount MOUNTPOINT (same as fusermount3 -u).",
                 add_umount_arguments, run_umount)
