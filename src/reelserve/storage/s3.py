"""S3-compatible storage (AWS S3, MinIO, Cloudflare R2, ...) through boto3.

boto3 is an optional dependency (`pip install 'reelserve[s3]'`): it is imported when this backend
is selected. Keys are stored under an optional prefix inside one bucket.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reelserve.storage.base import check_key

CHUNK = 256 * 1024


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("S3 storage needs boto3: pip install 'reelserve[s3]'") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config = Config(
            s3={"addressing_style": addressing_style},
            retries={"max_attempts": 5, "mode": "standard"},
            signature_version="s3v4",
        )
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self._missing = (self.client.exceptions.NoSuchKey,)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, src: Path) -> int:
        content_type = mimetypes.guess_type(src.name)[0] or "application/octet-stream"
        self.client.upload_file(
            str(src), self.bucket, self._key(key), ExtraArgs={"ContentType": content_type}
        )
        return src.stat().st_size

    def put_bytes(self, key: str, data: bytes) -> int:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return len(data)

    def read_bytes(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        data: bytes = body.read()
        return data

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def delete_prefix(self, prefix: str) -> None:
        full = self._key(prefix).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def local_path(self, key: str) -> Path | None:
        return None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        response = self.client.get_object(
            Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
        )
        body = response["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def presigned_url(self, key: str, expires_in: int, content_type: str) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentType": content_type,
            },
            ExpiresIn=max(1, expires_in),
        )
        return url
