"""A finished attempt's clips, stored: probed, thumbnailed, put in storage, and the task's
typed result (`domain.result.TaskResult`) and usage row built from them.

Probing, thumbnails and storage writes block, so each clip is finished in a media thread
(`media.threads`: below the API's CPU priority).
"""

from __future__ import annotations

import logging
import time

from reelserve.domain.result import StoredVideo, TaskResult
from reelserve.media.threads import in_media_thread
from reelserve.media.video import finish_clip
from reelserve.providers.base import Clip, Usage, Withheld
from reelserve.store.queue import TaskRecord
from reelserve.store.usage import UsageRecord
from reelserve.worker.parts import WorkerParts

log = logging.getLogger("reelserve.worker")


async def store_results(
    parts: WorkerParts, task: TaskRecord, clips: list[Clip], withheld: list[Withheld]
) -> TaskResult:
    storage = parts.storage

    def _finish(index: int, clip: Clip) -> StoredVideo:
        thumb = clip.path.with_suffix(".jpg")
        info, _ = finish_clip(clip.path, thumb)
        video_key = f"{task.id}/{index}.mp4"
        thumb_key = f"{task.id}/{index}.jpg"
        size = storage.put_file(video_key, clip.path)
        storage.put_file(thumb_key, thumb)
        return StoredVideo(
            video_key=video_key,
            thumbnail_key=thumb_key,
            duration=round(info.duration, 3),
            width=info.width,
            height=info.height,
            fps=round(info.fps, 3),
            has_audio=info.has_audio,
            seed=clip.seed,
            person_generation=clip.person_generation,
            size_bytes=size,
        )

    videos = []
    for index, clip in enumerate(clips):
        videos.append(await in_media_thread(_finish, index, clip))
    return TaskResult(
        videos=tuple(videos),
        expires_at=int(time.time()) + parts.settings.result_ttl,
        withheld=tuple(withheld),
    )


def usage_row(task: TaskRecord, usage: Usage, result: TaskResult) -> UsageRecord:
    """The task's usage row, written with its completion (`TaskQueue.complete`: one
    transaction, so a task is never completed without it, nor counted without completing)."""
    return UsageRecord(
        task_id=task.id,
        api_key_id=task.api_key_id,
        model=task.model,
        provider=task.provider,
        videos=len(result.videos),
        video_seconds=result.video_seconds,
        has_audio=result.has_audio,
        cost=usage.cost,
        currency=usage.currency,
        credential=usage.credential,
    )
