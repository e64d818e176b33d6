"""Run fsbackup commands one after the other in one process against one simulated B2.

    python tests/b2_session.py BUCKET "init" "backup /src" "mount /mnt"

b2sdk's simulator lives in the memory of one process, so a test that needs a real FUSE mount
reading from B2 runs the whole story here: each argument is one command line. The repository
URL, passphrase and cache come from the environment, as for the CLI. Exits with the first
non-zero exit code, or with the last command's.
"""
from __future__ import annotations

import os
import shlex
import sys

from doubles import b2sim

from fsbackup.cli import main as cli_main


def run(bucket: str, commands: list[str]) -> int:
    simulated = b2sim.use_simulator()
    simulated.create_bucket(bucket)
    os.environ.update(simulated.environ())
    rc = 0
    for command in commands:
        rc = cli_main(shlex.split(command))
        if rc != 0:
            return rc
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
