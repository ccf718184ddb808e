"""The seed's own API as an upstream: the hosted service the seed documents, or another
reelserve.

* Create: `POST /v1/videos/generations` with the seed's body, every field under the seed's name
  (`model` is the route's upstream model). Input images go as `data:` URLs of the bytes this
  server fetched (the upstream may not reach the client's URLs); the client's `webhook_url`
  stays here (this server notifies the client). An `Idempotency-Key` goes with it: reelserve
  answers a create sent again under the same key with the same task.
* Poll: `GET /v1/tasks/{id}`: `status`, `progress` (0-100), `result.videos[].url` and `seed`,
  or `error.code/message/type`.
* Cancel: `POST /v1/tasks/{id}/cancel` (reelserve's; best effort).
"""

from __future__ import annotations

import base64
from typing import Any

from reelserve.domain.errors import clip
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import InputImages, ProviderError
from reelserve.providers.relay.common import RelayProvider, Run, Status, UpstreamError, Video

COMPLETED = frozenset({"completed", "succeeded", "success", "done", "finished"})
FAILED = frozenset({"failed", "failure", "error"})
CANCELLED = frozenset({"cancelled", "canceled"})


def data_url(image: tuple[bytes, str]) -> str:
    data, mime = image
    return f"data:{mime or 'image/png'};base64,{base64.b64encode(data).decode('ascii')}"


def seed_body(
    spec: GenerationSpec, model: str, images: InputImages, extra: dict[str, Any]
) -> dict[str, Any]:
    """The seed's submit body for `spec` on the upstream's `model`. Fields the client left to
    their defaults are sent only where the default is the seed's own (the upstream applies
    its defaults itself: a seed it picks, its person policy)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": spec.prompt,
        "duration": spec.duration,
        "aspect_ratio": spec.aspect_ratio,
        "resolution": spec.resolution,
        "sample_count": spec.sample_count,
        "generate_audio": spec.generate_audio,
    }
    if spec.negative_prompt is not None:
        body["negative_prompt"] = spec.negative_prompt
    if spec.seed_given:
        body["seed"] = spec.seed
    if spec.person_generation_given:
        body["person_generation"] = spec.person_generation
    if spec.mode != "t2v":
        wanted = [("first_frame_image", images.first_bytes)]
        if spec.mode == "flf2v":
            wanted.append(("last_frame_image", images.last_bytes))
        for name, image in wanted:
            if image is None:
                raise ProviderError(
                    ErrorCode.INVALID_IMAGE, f"{name}: the image was not fetched for this task"
                )
            body[name] = data_url(image)
        body["resize_mode"] = spec.resize_mode
    # `enhance_prompt` is left out: the seed takes only true, its default.
    return {**extra, **body}


def _data(payload: Any, what: str) -> Any:
    """The `data` member of a seed answer; an answer whose body says it failed (a `code`
    other than 200 with an `error`) raises as its HTTP status would."""
    if not isinstance(payload, dict):
        raise UpstreamError(502, f"the upstream answered {what} with something not a JSON object")
    code = payload.get("code")
    error = payload.get("error")
    if isinstance(code, int) and code != 200 and isinstance(error, dict):
        raise UpstreamError(
            code if 400 <= code < 600 else 502,
            clip(str(error.get("message") or ""), 300),
            type=str(error.get("type") or "") or None,
            code=str(error.get("code") or "") or None,
            param=str(error.get("param") or "") or None,
        )
    return payload.get("data")


def task_id_of(payload: Any) -> str:
    data = _data(payload, "the submit")
    item = data[0] if isinstance(data, list) and data else data
    task_id = item.get("task_id") or item.get("id") if isinstance(item, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ProviderError(
            ErrorCode.UPSTREAM_ERROR,
            "the upstream accepted the submit but named no task_id; its task cannot be polled",
        )
    return task_id


def status_of(payload: Any) -> Status:
    """A `GET /v1/tasks/{id}` answer as a `Status`."""
    data = _data(payload, "the task status")
    if not isinstance(data, dict):
        raise UpstreamError(502, "the upstream answered the task status without its data")
    state = str(data.get("status") or "").lower()
    progress = data.get("progress")
    fraction = (
        float(progress) / 100
        if isinstance(progress, int | float) and not isinstance(progress, bool)
        else None
    )
    if state in COMPLETED:
        return Status("completed", 1.0, _videos(data.get("result")))
    if state in FAILED:
        return Status.failed(fraction, data.get("error"))
    if state in CANCELLED:
        return Status("cancelled", fraction)
    return Status("running", fraction)


def _videos(result: Any) -> tuple[Video, ...]:
    videos = result.get("videos") if isinstance(result, dict) else None
    found: list[Video] = []
    for video in videos if isinstance(videos, list) else []:
        if not isinstance(video, dict):
            continue
        url = video.get("url")
        if isinstance(url, list):
            url = next((u for u in url if isinstance(u, str) and u), None)
        if not isinstance(url, str) or not url:
            continue
        seed = video.get("seed")
        found.append(
            Video(url, seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
        )
    return tuple(found)


class SeedRelay(RelayProvider):
    """A relay route with `api = "seed"`."""

    api_label = "seed API"

    async def create(self, run: Run, key: str) -> str:
        body = seed_body(
            run.spec, self.options.model, run.ctx.images, dict(self.options.extra_fields)
        )
        async with self.http.fresh() as client:
            payload = await self.http.call(
                client,
                "POST",
                "/v1/videos/generations",
                json=body,
                headers={"Idempotency-Key": key},
            )
        return task_id_of(payload)

    async def status(self, run: Run, upstream_id: str) -> Status:
        return status_of(await self.http.call(run.client, "GET", f"/v1/tasks/{upstream_id}"))

    async def cancel(self, run: Run, upstream_id: str) -> None:
        await self.http.call(run.client, "POST", f"/v1/tasks/{upstream_id}/cancel", json={})
