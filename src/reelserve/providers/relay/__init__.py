"""Relay providers: a model served by another asynchronous video API, behind this server's
keys, queue, checkpoints, storage and metering (docs/providers/relay.md).

`api = "seed"` speaks the seed's API (the hosted service, or another reelserve: `seed.py`);
`api = "openai"` speaks OpenAI's `/v1/videos` (vLLM-Omni, SGLang diffusion, LiteLLM, new-api,
reelserve's facade: `openai.py`). What both share, the checkpoint, polling, downloads and the
sorting of failures, is `common.py`; the options are `options.py`.
"""

from __future__ import annotations

from reelserve.domain.models import ModelEntry
from reelserve.providers.base import Provider
from reelserve.providers.relay.common import RelayProvider
from reelserve.providers.relay.options import RelayOptions, parse_options

__all__ = ["RelayOptions", "RelayProvider", "build_relay"]


def build_relay(name: str, entry: ModelEntry) -> Provider:
    """The relay route `name` (the provider name its tasks carry, e.g. "relay:veo-b") of the
    model `entry`, whose `options` are the relay's; `ValueError` naming the model and the
    option when they are wrong."""
    options = parse_options(entry)
    if options.api == "openai":
        from reelserve.providers.relay.openai import OpenAIRelay

        return OpenAIRelay(name, entry, options)
    from reelserve.providers.relay.seed import SeedRelay

    return SeedRelay(name, entry, options)
