"""What a request is estimated to cost: the model's list price x seconds x samples, by resolution
and audio. A submit reserves this much on the ledger (store/ledger.py); `POST
/v1/videos/estimates` answers it.

A model's list price is the `list_price` its entry declares. A Veo model that declares none is
priced from `google.prices`: per resolution, the highest price among the backends that could
serve it (the Gemini API always charges for audio; Vertex AI charges the video-only price when
`generate_audio` is false), so that the reservation covers whichever backend runs the task. Any
other model without a declared price costs 0. A test key's tasks run on the sandbox but are
priced as the model they name, so a client's balance handling is exercised at real prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reelserve.domain.models import ListPrice, ModelEntry
from reelserve.domain.spec import GenerationSpec
from reelserve.providers.google_veo.rules import GEMINI
from reelserve.providers.google_veo.wire import upstream_model
from reelserve.settings.google import GoogleSettings


@dataclass(frozen=True)
class Estimate:
    amount: float
    currency: str


def veo_list_price(entry: ModelEntry, google: GoogleSettings) -> dict[str, ListPrice]:
    """A Veo model's list price by resolution: the worst case over the priced backends."""
    prices: dict[str, ListPrice] = {}
    for resolution in entry.resolutions:
        video: list[float] = []
        audio: list[float] = []
        for backend, models in google.prices.items():
            price = models.get(upstream_model(entry, backend), {}).get(resolution)
            if price is None:
                continue
            audio.append(price.video_audio)
            charged_without_audio = price.video_audio if price.video is None else price.video
            video.append(price.video_audio if backend == GEMINI else charged_without_audio)
        if audio:
            prices[resolution] = ListPrice(video=max(video), video_audio=max(audio))
    return prices


class Pricing:
    """The list prices of the configured models, worked out once."""

    def __init__(self, models: Mapping[str, ModelEntry], google: GoogleSettings) -> None:
        self.currency = google.currency  # the price currency budgets are in
        self.prices: dict[str, tuple[dict[str, ListPrice], str]] = {}
        for model_id, entry in models.items():
            if entry.list_price:
                self.prices[model_id] = (
                    {str(r): p for r, p in entry.list_price.items()},
                    entry.currency,
                )
            elif entry.provider == "google_veo":
                self.prices[model_id] = (veo_list_price(entry, google), google.currency)
            else:
                self.prices[model_id] = ({}, entry.currency)

    def estimate(self, spec: GenerationSpec) -> Estimate:
        """The worst-case cost of `spec`: what its submit reserves."""
        prices, currency = self.prices.get(spec.model, ({}, "USD"))
        price = prices.get(spec.resolution)
        if price is None:
            return Estimate(0.0, currency)
        rate = price.per_second(spec.generate_audio)
        return Estimate(round(rate * spec.duration * spec.sample_count, 6), currency)
