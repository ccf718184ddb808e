"""Image inputs of an image-to-video task: fetched once, kept with the task, fitted to the output.

The first attempt fetches each URL (through the SSRF-safe fetcher), stores the exact bytes in
storage under the task and records them in the task's checkpoint. A resumed attempt reads those
bytes back instead of fetching again, so a URL that changed or vanished meanwhile cannot change
or break a task that already started. Decoding and fitting run in a thread.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.media.images import ImageInputError, decode_image, fetch_image, fit_image
from reelserve.providers.base import InputImages, ProviderError
from reelserve.store.queue import TaskRecord

if TYPE_CHECKING:
    from reelserve.worker.context import TaskContext
    from reelserve.worker.parts import WorkerParts

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


async def load_inputs(
    parts: WorkerParts, task: TaskRecord, spec: GenerationSpec, ctx: TaskContext
) -> InputImages:
    stored: dict[str, Any] = dict(ctx.inputs_state)
    fetched: dict[str, tuple[bytes, str]] = {}
    policy = parts.image_policy
    for name, source in (("first", spec.first_frame_image), ("last", spec.last_frame_image)):
        if source is None:
            continue
        param = f"{name}_frame_image"
        entry = stored.get(name)
        if entry is not None and await asyncio.to_thread(parts.storage.exists, entry["key"]):
            fetched[name] = (
                await asyncio.to_thread(parts.storage.read_bytes, entry["key"]),
                entry["mime"],
            )
            continue
        try:
            data, mime = await fetch_image(source, param, policy)
        except ImageInputError as exc:
            raise ProviderError(ErrorCode.INVALID_IMAGE, exc.message) from None
        key = f"{task.id}/inputs/{name}.{_EXTENSIONS.get(mime, 'bin')}"
        await asyncio.to_thread(parts.storage.put_bytes, key, data)
        stored[name] = {"key": key, "mime": mime, "bytes": len(data)}
        fetched[name] = (data, mime)
    if stored != ctx.inputs_state:
        await ctx.save_inputs(stored)

    def _fit(name: str) -> Any:
        if name not in fetched:
            return None
        param = f"{name}_frame_image"
        try:
            image = decode_image(fetched[name][0], param, max_pixels=policy.max_pixels)
        except ImageInputError as exc:
            raise ProviderError(ErrorCode.INVALID_IMAGE, exc.message) from None
        return fit_image(image, spec.width, spec.height, spec.resize_mode)

    first = await asyncio.to_thread(_fit, "first")
    last = await asyncio.to_thread(_fit, "last")
    return InputImages(
        first=first,
        last=last,
        first_bytes=fetched.get("first"),
        last_bytes=fetched.get("last"),
    )
