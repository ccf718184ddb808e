"""The storage interface: where results and fetched inputs live, by key (`task_.../0.mp4`).

Methods are synchronous (local files, or boto3 for S3); callers on the event loop run them in a
thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# Keys name objects: `task_<ulid>/0.mp4`, `task_<ulid>/inputs/first.png`, and a task's id as the
# prefix of its files. Segments of letters, digits, `_`, `-` and `.`, never starting with a dot
# (no `.`, `..` or hidden names); no empty segment, no NUL, no leading or trailing slash.
MAX_KEY_CHARS = 512
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


class StorageKeyError(ValueError):
    """A storage key that breaks the key rules (`check_key`)."""


def check_key(key: object) -> str:
    """`key` if it is a well-formed storage key, else `StorageKeyError`.

    Every backend calls this on every key it writes, reads, sizes or deletes, so a key that
    came from anywhere (a signed token naming `.`, an empty key, a NUL, a directory) cannot
    reach the filesystem or the bucket as anything but an object name of the expected shape.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY_RE.fullmatch(key):
        shown = repr(key)[:80]
        raise StorageKeyError(
            f"invalid storage key {shown}: expected segments of letters, digits, '_', '-' "
            "and '.' (not starting with '.') joined by '/'"
        )
    return key


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
