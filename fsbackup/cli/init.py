"""`fsbackup init`: create a repository."""
from __future__ import annotations

from ..repository import Repository
from .options import Command
from .output import Output
from .repo import get_passphrase, open_storage


def add_arguments(p) -> None:
    pass                                # the global options say where and with which passphrase


def run(args, out: Output) -> int:
    backend = open_storage(args)
    repo = Repository.create(backend, get_passphrase(args, new=True), args.index)
    try:
        repo.catalog.set_meta("repository_id", repo.id)
        if out.json:
            out.emit_json(repo.as_json())
        else:
            out.info(f"created repository {repo.id[:8]} at {repo.storage_url}")
            out.info("keep the passphrase safe: without it the backups cannot be read")
    finally:
        repo.close()
    return 0


COMMAND = Command(
    "init", "create a new repository",
    "Create a repository at --repo. Asks for a new passphrase twice (or takes it from the environment).\n"
    "Refuses a folder that has other files in it. Keep the passphrase safe: without it the backups\n"
    "cannot be read, by you or anyone.",
    add_arguments, run,
    interrupted="no repository is made before its config object is stored; if the folder holds only keys/, "
                "empty it and run 'fsbackup init' again")
