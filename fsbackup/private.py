"""Local state (the index, the block cache) belongs to its owner alone."""
from __future__ import annotations

import os


def make_private_folder(folder: str) -> None:
    """Create `folder` (and missing parents) readable by the owner only. A folder that already
    exists is left as it is: it may be one the user chose and shares (--index /tmp/x.sqlite
    must not lock others out of /tmp); the files fsbackup puts in it are created 0600."""
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)      # makedirs' mode is filtered by the umask
