"""Write a large synthetic repository, to measure `fsbackup repair` (rebuilding the local index).

    python scripts/synthetic_repo.py REPO --blocks 1000000 --versions 100
    FSBACKUP_REPOSITORY=REPO FSBACKUP_PASSWORD=synthetic fsbackup --index /tmp/i.sqlite repair

Rebuilding reads only index and version objects, so those are real (written with the repository's
own codecs and keys) while volumes are sparse files of the right size: the repository checks and
rebuilds, but its block data is not there (check --read-data reports every volume damaged).

The shape: `--blocks` block ids, `--blocks-per-volume` to a volume (32 of about 1 MiB in a 32 MiB
volume), files of `--blocks-per-file` blocks, and `--versions` versions of `--files` files each, in
directories of 1000; each version drops the oldest files of the one before and adds new ones, so
that together they use every block once.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fsbackup.backends.local import LocalBackend  # noqa: E402
from fsbackup.codec import wire  # noqa: E402
from fsbackup.repository import Repository, index_object, volume_object  # noqa: E402

BLOCK = 1 << 20
DIR_SIZE = 1000


def write_volumes(repo: Repository, root: str, block_ids: list[bytes], per_volume: int) -> None:
    for start in range(0, len(block_ids), per_volume):
        name = secrets.token_hex(32)
        entries, offset = [], wire.HEADER_LEN
        for block_id in block_ids[start:start + per_volume]:
            entries.append(wire.BlockEntry(block_id, offset, BLOCK + 29, BLOCK))
            offset += BLOCK + 29
        size = offset + 4096 + wire.FOOTER.size           # a table of about this size ends a real one
        path = os.path.join(root, volume_object(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)                              # sparse: no disk space, the right size
        repo.backend.put(index_object(name), wire.encode_index(repo.keys, bytes.fromhex(name), size, entries))


def version_entries(first_file: int, files: int, contents: list[list]) -> list[list]:
    now = time.time_ns()
    root = [0, b"", "d", 0o40755, 0, 0, "root", "root", now, now, now, 0, 1, 1, 1, 0, None, None, None]
    entries = [root]
    for n in range(files):
        if n % DIR_SIZE == 0:
            entries.append([1, b"dir%04d" % (n // DIR_SIZE), "d", 0o40755, 1000, 1000, "u", "u",
                            now, now, now, 0, 2 + n, 1, 1, 0, None, None, None])
            dir_id = len(entries)
        content = contents[first_file + n]
        entries.append([dir_id, b"file%07d" % (first_file + n), "f", 0o100644, 1000, 1000, "u", "u",
                        now, now, now, content[1], 10**7 + first_file + n, 1, 1, 0, None, None, content])
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", help="an empty or new folder")
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--files", type=int, default=20_000, help="files in each version")
    ap.add_argument("--blocks-per-file", type=int, default=4)
    ap.add_argument("--blocks-per-volume", type=int, default=32)
    ap.add_argument("--password", default="synthetic")
    args = ap.parse_args()

    os.environ.setdefault("FSBACKUP_KDF_MEMORY_KIB", "1024")
    os.environ.setdefault("FSBACKUP_WEAK_KDF_FOR_TESTS", "1")
    started = time.monotonic()
    repo = Repository.create(LocalBackend(args.repo), args.password.encode())   # (its local index is not used)
    block_ids = [os.urandom(32) for _ in range(args.blocks)]
    write_volumes(repo, args.repo, block_ids, args.blocks_per_volume)
    k = args.blocks_per_file
    contents = [[os.urandom(32), BLOCK * k, wire.pack_extents((b, BLOCK) for b in block_ids[i:i + k])]
                for i in range(0, len(block_ids), k)]
    step = max(1, (len(contents) - args.files) // max(1, args.versions - 1))
    for v in range(args.versions):
        first = min(v * step, max(0, len(contents) - args.files))
        files = min(args.files, len(contents) - first)
        head = {"time_ns": time.time_ns(), "host": "synthetic", "paths": ["/"], "tags": [], "parent": None,
                "file_count": files, "total_size": files * BLOCK * k, "bytes_added": 0, "fsbackup": "synthetic"}
        repo.store_version(head, version_entries(first, files, contents))
    print(f"{args.blocks} blocks in {len(range(0, args.blocks, args.blocks_per_volume))} volumes, "
          f"{args.versions} versions of {args.files} files, written in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
