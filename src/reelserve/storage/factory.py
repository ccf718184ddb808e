"""The storage backend named in settings."""

from __future__ import annotations

from reelserve.settings import Settings
from reelserve.storage.base import Storage
from reelserve.storage.local import LocalStorage


def open_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        from reelserve.storage.s3 import S3Storage

        if not settings.s3_bucket:
            raise ValueError("storage = s3 needs REELSERVE_S3_BUCKET")
        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style,
        )
    return LocalStorage(settings.resolved_media_dir)
