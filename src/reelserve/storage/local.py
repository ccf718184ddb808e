"""Local-directory storage. Keys are relative POSIX paths such as `task_.../0.mp4`."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from reelserve.storage.base import StorageKeyError, check_key

__all__ = ["LocalStorage", "StorageKeyError"]

CHUNK = 256 * 1024


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file for `key` (`check_key`), refusing anything that would step outside the
        root (a symbolic link, say)."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise StorageKeyError(f"invalid storage key {key!r}")
        return path

    def put_file(self, key: str, src: Path) -> int:
        """Move (or copy) `src` into place atomically; returns the size in bytes."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            os.replace(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def put_bytes(self, key: str, data: bytes) -> int:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return len(data)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def size(self, key: str) -> int | None:
        """The size of the file `key`, or None if there is none (a directory is none)."""
        try:
            info = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError, StorageKeyError):
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def presigned_url(self, key: str, expires_in: int, content_type: str) -> str | None:
        return None

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def ping(self) -> None:
        """Readiness: the root exists and is writable."""
        probe = self.root / f".ready.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
