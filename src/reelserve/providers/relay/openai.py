"""OpenAI's Videos API as an upstream: `/v1/videos` as vLLM-Omni, SGLang diffusion, LiteLLM,
new-api and reelserve's own facade serve it.

* Create: `POST /v1/videos` as a multipart form, as OpenAI's SDKs send it: `model` (the route's
  upstream model), `prompt`, `seconds` (a string), `size` (`WIDTHxHEIGHT`: the size this
  model entry renders the request at, as the operator declared it), the first frame as the
  `input_reference` file. The inverse of reelserve's facade (docs/openai-compat.md), written
  here; the fields OpenAI has no name for go only where the request needs them: `seed` (when
  the client gave one), `negative_prompt`, the audio field (`audio_field`, when audio is
  asked), `resize_mode` (when it is `crop`), and the route's `extra_fields`.
* Retrieve: `GET /v1/videos/{id}`: `status` queued / in_progress / completed / failed,
  `progress` (0-100), `error.code/message`.
* Content: `GET /v1/videos/{id}/content`, the MP4. Cancel: `DELETE /v1/videos/{id}`.

OpenAI's API makes one video per request and takes one reference image: a model on this relay
serves one sample, and no last frame (the submit check says so with a 400).
"""

from __future__ import annotations

from typing import Any

from reelserve.domain.errors import InvalidRequest
from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.domain.task import ErrorCode
from reelserve.providers.base import ProviderError
from reelserve.providers.relay.common import RelayProvider, Run, Status, UpstreamError, Video

QUEUED = frozenset({"queued", "pending", "in_progress", "processing", "running"})
COMPLETED = frozenset({"completed", "succeeded"})
FAILED = frozenset({"failed", "error"})
CANCELLED = frozenset({"cancelled", "canceled"})
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

FormPart = tuple[str, tuple[str | None, bytes | str] | tuple[str | None, bytes | str, str]]


def form_parts(
    spec: GenerationSpec,
    model: str,
    size: tuple[int, int],
    first: tuple[bytes, str] | None,
    *,
    audio_field: str | None,
    extra: dict[str, Any],
) -> list[FormPart]:
    """The multipart form of a create for `spec` at `size` (width, height: what the model
    entry renders the request's resolution and aspect ratio at; every part a form field but
    the image)."""
    fields: dict[str, str] = {name: _form_text(value) for name, value in extra.items()}
    fields.update(
        model=model,
        prompt=spec.prompt,
        seconds=str(spec.duration),
        size="{}x{}".format(*size),
    )
    if spec.seed_given:
        fields["seed"] = str(spec.seed)
    if spec.negative_prompt is not None:
        fields["negative_prompt"] = spec.negative_prompt
    if spec.generate_audio and audio_field:
        fields[audio_field] = "true"
    parts: list[FormPart] = [(name, (None, value)) for name, value in fields.items()]
    if spec.mode != "t2v":
        if first is None:
            raise ProviderError(
                ErrorCode.INVALID_IMAGE,
                "first_frame_image: the image was not fetched for this task",
            )
        if spec.resize_mode != "pad":
            parts.append(("resize_mode", (None, spec.resize_mode)))
        data, mime = first
        name = f"first_frame.{_EXTENSIONS.get(mime, 'png')}"
        parts.append(("input_reference", (name, data, mime or "application/octet-stream")))
    return parts


def _form_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def status_of(video: Any, content_url: str) -> Status:
    """A `video` object as a `Status`."""
    if not isinstance(video, dict):
        raise UpstreamError(502, "the upstream answered with something not a video object")
    state = str(video.get("status") or "").lower()
    progress = video.get("progress")
    fraction = (
        float(progress) / 100
        if isinstance(progress, int | float) and not isinstance(progress, bool)
        else None
    )
    if state in COMPLETED:
        seed = video.get("seed")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        return Status("completed", 1.0, (Video(content_url, seed),))
    if state in FAILED:
        return Status.failed(fraction, video.get("error"))
    if state in CANCELLED:
        return Status("cancelled", fraction)
    return Status("running", fraction)


class OpenAIRelay(RelayProvider):
    """A relay route with `api = "openai"`."""

    api_label = "OpenAI-style API"

    def admit(self, spec: GenerationSpec) -> None:
        """OpenAI's create takes one reference image and makes one video."""
        if spec.mode == "flf2v":
            raise InvalidRequest(
                f'last_frame_image is not supported by model "{spec.model}": its upstream '
                "speaks OpenAI's /v1/videos, which takes one input_reference",
                param="last_frame_image",
            )
        if spec.sample_count > 1:
            raise InvalidRequest(
                f'sample_count must be 1 for model "{spec.model}" (got {spec.sample_count}): '
                "its upstream speaks OpenAI's /v1/videos, which makes one video per request",
                param="sample_count",
            )

    def fit_model(self, entry: ModelEntry) -> ModelEntry:
        modes = [mode for mode in entry.modes if mode != "flf2v"] or ["t2v"]
        return entry.model_copy(update={"modes": modes, "max_sample_count": 1})

    async def create(self, run: Run, key: str) -> str:
        self.admit(run.spec)  # a task stored before the entry changed
        parts = form_parts(
            run.spec,
            self.options.model,
            self.entry.render_size(run.spec.resolution, run.spec.aspect_ratio),
            run.ctx.images.first_bytes,
            audio_field=self.options.audio_field,
            extra=dict(self.options.extra_fields),
        )
        async with self.http.fresh() as client:
            video = await self.http.call(
                client, "POST", "/v1/videos", files=parts, headers={"Idempotency-Key": key}
            )
        video_id = video.get("id") if isinstance(video, dict) else None
        if not isinstance(video_id, str) or not video_id:
            raise ProviderError(
                ErrorCode.UPSTREAM_ERROR,
                "the upstream accepted the video but named no id; it cannot be polled",
            )
        return video_id

    async def status(self, run: Run, upstream_id: str) -> Status:
        video = await self.http.call(run.client, "GET", f"/v1/videos/{upstream_id}")
        return status_of(video, self.http.url(f"/v1/videos/{upstream_id}/content"))

    async def cancel(self, run: Run, upstream_id: str) -> None:
        await self.http.call(run.client, "DELETE", f"/v1/videos/{upstream_id}")
