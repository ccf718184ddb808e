"""Result files behind signed, expiring links.

The one place that knows the `/v1/files/` path: `file_links` makes the `Links` the views are
handed (a signed token under the base URL), `Files.open` checks a token when a link is fetched,
and `Files.token` signs one for a route that serves a task's file itself (the OpenAI facade's
`/content`). The route serving the bytes (`api/routes/files.py`) is mounted at `FILES_PATH`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reelserve.core.views import Links
from reelserve.domain.errors import Conflict, Gone, PermissionDenied
from reelserve.domain.result import TaskView
from reelserve.domain.task import TaskStatus
from reelserve.storage.signing import FileGrant, Signer, TokenError
from reelserve.store.task_rows import TaskRecord

FILES_PATH = "/v1/files/"


def file_links(signer: Signer, base_url: str) -> Links:
    """Links under `base_url` (the server's public URL, or the URL a request came to)."""
    prefix = base_url.rstrip("/") + FILES_PATH

    def link(key: str, content_type: str, expires_at: int) -> str:
        return prefix + signer.sign(FileGrant(key, content_type, expires_at))

    return link


@dataclass(frozen=True)
class OpenedFile:
    key: str
    content_type: str
    expires_at: int


class Files:
    def __init__(self, signer: Signer, public_url: str | None = None) -> None:
        self.signer = signer
        self.public_url = public_url

    def links(self, base_url: str) -> Links:
        """The links of answers to a request that came to `base_url` (or of a webhook of a task
        submitted there): under `public_url` when the operator set one."""
        return file_links(self.signer, self.public_url or base_url)

    def open(self, token: str) -> OpenedFile:
        """Check a file link's signature and expiry; the route then streams the bytes."""
        try:
            grant = self.signer.verify(token)
        except TokenError as exc:
            if exc.expired:
                raise Gone(str(exc)) from None
            raise PermissionDenied("this file link is not valid") from None
        return OpenedFile(grant.key, grant.content_type, grant.expires_at)

    def token(self, task: TaskRecord | TaskView, variant: str = "video", index: int = 0) -> str:
        """A signed token for sample `index` of a completed task (`variant`: "video" or
        "thumbnail"); `Gone` once the retention sweeper has deleted the files."""
        if task.status is not TaskStatus.COMPLETED or task.result is None:
            raise Conflict(
                f"task {task.id} is {task.status.value}; only a completed task has content",
                param="task_id",
            )
        if task.files_expired_at is not None:
            raise Gone(f"the files of task {task.id} have expired")
        video = task.result.videos[index]
        expires_at = task.result.expires_at
        if variant == "thumbnail":
            return self.signer.sign(FileGrant(video.thumbnail_key, "image/jpeg", expires_at))
        return self.signer.sign(FileGrant(video.video_key, "video/mp4", expires_at))
