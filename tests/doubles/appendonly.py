"""A backend wrapper with backup-only rights: what a B2 key without `deleteFiles`, an S3 policy
without `s3:DeleteObject` or an append-only SFTP folder allow, at its strictest. Every delete, every
put over a name that exists, and every removal of partial uploads is refused with
`errors.PermissionDenied`; reads, listings and puts of new names pass.

    backup_only = AppendOnlyBackend(LocalBackend(path))
    wrap_storage(AppendOnlyBackend)          # the command line in this process gets backup-only rights

`refused` lists the calls refused ("delete NAME", "overwrite NAME", "remove_partial_uploads").
"""
from __future__ import annotations

import threading

from fsbackup.backends import WrappingBackend
from fsbackup.errors import PermissionDenied


class AppendOnlyBackend(WrappingBackend):
    def __init__(self, inner):
        super().__init__(inner)
        self._lock = threading.Lock()      # a put's look and its write are one step (no two puts race past)
        self.refused: list[str] = []

    def _refuse(self, what: str) -> PermissionDenied:
        with self._lock:
            self.refused.append(what)
        return PermissionDenied(f"backup-only credentials: {what} refused")

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            exists = self.inner.exists(name)
            if not exists:
                self.inner.put(name, data)
        if exists:
            raise self._refuse(f"overwrite {name}")

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def list(self, prefix: str = ""):
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        raise self._refuse(f"delete {name}")

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        raise self._refuse("remove_partial_uploads")
