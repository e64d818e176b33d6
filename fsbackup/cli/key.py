"""`fsbackup key`: list, add, change and remove the passphrases that open the repository."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .. import errors
from ..errors import UsageError
from ..repository import Repository, parse_object_name
from .options import Command, global_options
from .output import Output, fmt_time
from .repo import get_new_passphrase, opened


def add_arguments(p) -> None:
    keys = p.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def key_action(name: str, help: str) -> argparse.ArgumentParser:
        a = keys.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        global_options(a, suppress=True)
        return a

    for name, help in (("passwd", "change the passphrase you open the repository with"),
                       ("add", "add another passphrase (e.g. for a second person)")):
        a = key_action(name, help)
        a.add_argument("--new-password-file", metavar="FILE", help="read the new passphrase from FILE")
    key_action("list", "list the keys: id, when and where made, KDF cost; * marks the one in use")
    a = key_action("remove", "remove a key (not the one in use, nor the last)")
    a.add_argument("key_id", metavar="ID", help="the key's id or an unambiguous prefix (see 'key list')")


def _key_id(name: str) -> str:
    return parse_object_name(name)[1]


@dataclass
class KeyInfo:
    """What `key list` shows of a key object (its plain fields; `damaged` says why it does not read)."""
    id: str
    created_ns: object          # as the key object holds it: an int, unless damaged
    host: str | None
    kdf: dict                   # the KDF's name and cost, without its salt
    in_use: bool                # the key that opened the repository
    version: int | None         # 1: an old key (format 1), which 'key passwd' replaces
    damaged: str | None

    @classmethod
    def of(cls, repo: Repository, name: str, doc: dict) -> "KeyInfo":
        kdf_doc = doc.get("kdf")
        kdf = kdf_doc if isinstance(kdf_doc, dict) else {}
        return cls(_key_id(name), doc.get("created"), doc.get("host"), {k: v for k, v in kdf.items() if k != "salt"},
                   name == repo.key_name, doc.get("version", 1) if not doc.get("damaged") else None,
                   doc.get("damaged"))

    def as_json(self) -> dict:
        return {"id": self.id, "created_ns": self.created_ns, "host": self.host, "kdf": self.kdf,
                "in_use": self.in_use, "version": self.version, "damaged": self.damaged}

    def line(self) -> str:
        """'* 3f9a1c2e  2026-11-24 10:00:00  host  argon2id 65536 KiB, 3 passes, 4 lanes' (* = in use)."""
        created = fmt_time(self.created_ns) if isinstance(self.created_ns, int) else "-" * 19
        kdf = self.kdf
        cost = (f"{kdf.get('name')} {kdf.get('memory_kib')} KiB, {kdf.get('iterations')} passes, "
                f"{kdf.get('lanes')} lanes") if kdf else self.damaged or "?"
        # A version 1 key (format 1) does not bind the config, and shows the storage its host and
        # time: 'key passwd' replaces it with a version 2 key.
        old = "  (old key: 'fsbackup key passwd' replaces it)" if self.version == 1 else ""
        return f"{'*' if self.in_use else ' '} {self.id[:8]}  {created}  {self.host or '-'}  {cost}{old}"


def _find_key(repo: Repository, prefix: str) -> str:
    names = [name for name, _ in repo.key_objects() if _key_id(name).startswith(prefix.lower())]
    if not prefix or not names:
        raise errors.KeyNotFound(f"no key with id {prefix!r}; see 'fsbackup key list'")
    if len(names) > 1:
        raise UsageError(f"key id {prefix!r} is ambiguous; give more of it")
    return names[0]


def run(args, out: Output) -> int:
    action = args.key_command
    with opened(args, out, sync_catalog=False) as repo:
        if action == "list":
            keys = [KeyInfo.of(repo, name, doc) for name, doc in repo.key_objects()]
            if out.json:
                out.emit_json([key.as_json() for key in keys])
            else:
                for key in keys:
                    print(key.line())
            return 0
        if action == "passwd":
            name = repo.change_passphrase(get_new_passphrase(args))
            out.info(f"changed the passphrase: key {_key_id(name)[:8]} replaces the old one")
        elif action == "add":
            name = repo.add_key(get_new_passphrase(args))
            out.info(f"added key {_key_id(name)[:8]}")
        elif action == "remove":
            name = _find_key(repo, args.key_id)
            repo.remove_key(name)
            out.info(f"removed key {_key_id(name)[:8]}")
    if out.json:
        out.emit_json({"key": _key_id(name), "action": action})
    return 0


COMMAND = Command(
    "key", "manage the passphrases that open the repository",
    "Each passphrase is a key object holding the repository's master secret. Changing or adding\n"
    "a passphrase rewrites no data. New passphrases come from --new-password-file, from\n"
    "FSBACKUP_NEW_PASSWORD, or are asked for twice.",
    add_arguments, run,
    interrupted="the change was made or not ('key passwd' stores the new key before it deletes the old one, so "
                "both may remain); 'fsbackup key list' shows the keys")
