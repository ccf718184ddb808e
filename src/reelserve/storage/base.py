"""The storage interface: where results and fetched inputs live, by key (`task_.../0.mp4`).

Methods are synchronous (local files, or boto3 for S3); callers on the event loop run them in a
thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    def put_file(self, key: str, src: Path) -> int:
        """Store `src` under `key` (the source may be moved); returns the size in bytes."""
        ...

    def put_bytes(self, key: str, data: bytes) -> int: ...

    def read_bytes(self, key: str) -> bytes: ...

    def size(self, key: str) -> int | None:
        """The object's size, or None if it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix/` (a task's files)."""
        ...

    def ping(self) -> None:
        """Raise if the storage cannot be used (readiness)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine, when there is one (served with sendfile)."""
        ...

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes `start..end` (inclusive), in chunks."""
        ...

    def presigned_url(self, key: str, expires_in: int, content_type: str) -> str | None:
        """A direct download URL from the store itself, where it has such a thing."""
        ...
