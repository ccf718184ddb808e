"""Weights stay in the dtype they were loaded in, whichever modes a model serves.

The tiny checkpoints are saved in float32 and in bfloat16 (as the published ones are) and loaded
in that dtype; the provider is run directly, as the worker runs it. Building the image-to-video
and first+last-frame pipelines from the loaded one must not convert the shared modules (diffusers'
`from_pipe` casts them to float32 when not given a dtype), and the modules a model keeps in
float32 (`_keep_in_fp32_modules`) stay there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch

from reelserve.domain.models import ModelEntry
from reelserve.providers.diffusers.catalog import prepare_local_models
from reelserve.providers.diffusers.provider import DiffusersProvider
from tests import tiny_pipelines

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SAVERS = {"ltx": tiny_pipelines.save_ltx, "ltx2": tiny_pipelines.save_ltx2}


def entry(model_id: str, family: str, checkpoint: Path, dtype: str, **options: Any) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        provider="diffusers",
        modes=["t2v", "i2v", "flf2v"],
        durations=[1],
        default_duration=1,
        resolutions=["720p"],
        audio=family == "ltx2",
        fps=8,
        estimated_time=5,
        options={
            "family": family,
            "checkpoint": str(checkpoint),
            "dtype": dtype,
            "num_inference_steps": 2,
            "max_sequence_length": 16,
            "max_pixels": 2048,
            **options,
        },
    )


@pytest.fixture(scope="module", params=list(DTYPES))
def dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, dtype: str) -> Iterator[DiffusersProvider]:
    root = tmp_path_factory.mktemp(f"checkpoints-{dtype}")
    entries = [
        entry(family, family, save(root / family, DTYPES[dtype]), dtype)
        for family, save in SAVERS.items()
    ]
    yield DiffusersProvider(prepare_local_models(entries), device="cpu")


def parameter_dtypes(module: Any) -> dict[str, Any]:
    return {name: p.dtype for name, p in module.named_parameters()}


@pytest.mark.parametrize("family", list(SAVERS))
def test_other_modes_keep_every_weight_in_its_dtype(
    provider: DiffusersProvider, tmp_path: Path, dtype: str, family: str
) -> None:
    body = {"model": family, "prompt": "a cat walking", "seed": 1}
    tiny_pipelines.render(provider, body, tmp_path / "t2v")
    base = provider._runtimes[family].base
    loaded = {
        name: parameter_dtypes(module)
        for name, module in base.components.items()
        if isinstance(module, torch.nn.Module)
    }
    # Loaded as asked: the transformer in the model's dtype, apart from what it keeps in fp32.
    keep = set(getattr(base.transformer, "_keep_in_fp32_modules", None) or ())
    for name, value in loaded["transformer"].items():
        kept = any(part in keep for part in name.split("."))
        assert value == (torch.float32 if kept else DTYPES[dtype]), name

    seen: list[Any] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["hidden_states"].dtype)

    hook = base.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for mode in ("i2v", "flf2v", "t2v"):
            tiny_pipelines.render(provider, {**body, "mode": mode}, tmp_path / mode)
    finally:
        hook.remove()
    after = {name: parameter_dtypes(getattr(base, name)) for name in loaded}
    assert after == loaded, "serving image-to-video changed the dtype of the shared weights"
    # And every denoising pass ran in the model's dtype, text-to-video after the others too.
    assert seen and set(seen) == {DTYPES[dtype]}
