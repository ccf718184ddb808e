"""The speed options of a local model entry, on the tiny pipelines.

* `distill_lora`: a step- and CFG-distilled LoRA, loaded from a local file, fused into the
  transformer (both experts on Wan 2.2 A14B), its LoRA layers dropped; the model then runs its
  distilled steps without guidance (one transformer pass per step), and `GET /v1/models` says so.
  The LoRA files are made here: random low-rank matrices in the diffusers LoRA layout, saved with
  safetensors.
* `cache`: a diffusers cache hook (FirstBlockCache, MagCache, TaylorSeer) on the transformer,
  which then runs fewer blocks.
* `compile`: regional compilation of the transformer's repeated blocks (on the CPU only the
  wiring is checked: compiling even the tiny model takes half a minute there).

Nothing here asserts a timing: `bench/gpu_pipeline.py` measures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers loads LoRAs through peft

import torch

from reelserve.domain.models import ModelEntry
from reelserve.providers.diffusers.catalog import prepare_local_models
from reelserve.providers.diffusers.options import LocalModelError
from reelserve.providers.diffusers.provider import DiffusersProvider
from reelserve.providers.registry import build_providers
from tests import tiny_pipelines
from tests.support import make_settings

RANK = 4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "wan_t2v": tiny_pipelines.save_wan_t2v(root / "wan-t2v"),
        "wan22_i2v": tiny_pipelines.save_wan22_i2v(root / "wan22-i2v"),
    }


def load_plain(checkpoint: Path) -> Any:
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(
        str(checkpoint), dtype=torch.float32, local_files_only=True
    )


def save_lora(transformer: Any, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every self-attention query and key projection; its state dict."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for i, block in enumerate(transformer.blocks):
        for name in ("to_q", "to_k"):
            layer = getattr(block.attn1, name)
            prefix = f"transformer.blocks.{i}.attn1.{name}"
            a = torch.randn(RANK, layer.in_features, generator=generator) * 0.1
            b = torch.randn(layer.out_features, RANK, generator=generator) * 0.1
            state[f"{prefix}.lora_A.weight"] = a
            state[f"{prefix}.lora_B.weight"] = b
    save_file(state, str(path))
    return state


def expected_fused(transformer: Any, lora: dict[str, torch.Tensor], scale: float) -> dict:
    """W + scale * B @ A for every layer the LoRA touches (alpha = rank: scaling 1)."""
    weights = {}
    for i, block in enumerate(transformer.blocks):
        for name in ("to_q", "to_k"):
            prefix = f"transformer.blocks.{i}.attn1.{name}"
            delta = lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
            weights[(i, name)] = getattr(block.attn1, name).weight.detach() + scale * delta
    return weights


def entry(model_id: str, checkpoint: Path, *, modes: list[str], **options: Any) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        provider="diffusers",
        modes=modes,  # type: ignore[arg-type]
        durations=[1],
        default_duration=1,
        resolutions=["720p"],
        audio=False,
        fps=8,
        options={
            "family": "wan",
            "checkpoint": str(checkpoint),
            "dtype": "float32",
            "max_sequence_length": 16,
            "max_pixels": 2048,
            **options,
        },
    )


class Counter:
    """Counts the forward calls of a module (a forward pre-hook)."""

    def __init__(self, module: Any) -> None:
        self.count = 0
        self._hook = module.register_forward_pre_hook(self._count)

    def _count(self, module: Any, args: Any) -> None:
        self.count += 1

    def remove(self) -> None:
        self._hook.remove()


def assert_fused(transformer: Any, expected: dict) -> None:
    for (i, name), weight in expected.items():
        layer = getattr(transformer.blocks[i].attn1, name)
        assert type(layer) is torch.nn.Linear, "the LoRA layers were left in place"
        torch.testing.assert_close(layer.weight.detach(), weight)
    assert not getattr(transformer, "peft_config", None)


# -- distillation --------------------------------------------------------------------------------


def test_distill_lora_is_fused_and_runs_its_steps_without_guidance(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    plain = load_plain(checkpoints["wan_t2v"])
    lora = save_lora(plain.transformer, tmp_path / "distill.safetensors", seed=1)
    expected = expected_fused(plain.transformer, lora, scale=0.5)
    distill = {"path": str(tmp_path / "distill.safetensors"), "scale": 0.5, "steps": 3}
    provider = DiffusersProvider(
        prepare_local_models(
            [entry("wan-4step", checkpoints["wan_t2v"], modes=["t2v"], distill_lora=distill)]
        ),
        device="cpu",
    )
    model = provider.models["wan-4step"]
    assert model.entry.public()["details"] == {"distilled": {"steps": 3, "guidance_scale": 1.0}}
    body = {"model": "wan-4step", "prompt": "a cat", "seed": 2}
    tiny_pipelines.render(provider, body, tmp_path / "warm")
    pipe = provider._runtimes["wan-4step"].base
    assert_fused(pipe.transformer, expected)
    counter = Counter(pipe.transformer)
    try:
        tiny_pipelines.render(provider, body, tmp_path / "v")
    finally:
        counter.remove()
    # 3 steps, one pass each: no unconditional pass at guidance 1.
    assert (pipe.guidance_scale, counter.count) == (1.0, 3)


def test_distill_lora_on_both_wan22_experts(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    plain = load_plain(checkpoints["wan22_i2v"])
    high = save_lora(plain.transformer, tmp_path / "high.safetensors", seed=1)
    low = save_lora(plain.transformer_2, tmp_path / "low.safetensors", seed=2)
    distill = {
        "path": str(tmp_path / "high.safetensors"),
        "path_2": str(tmp_path / "low.safetensors"),
    }
    provider = DiffusersProvider(
        prepare_local_models(
            [entry("wan22", checkpoints["wan22_i2v"], modes=["i2v"], distill_lora=distill)]
        ),
        device="cpu",
    )
    tiny_pipelines.render(
        provider, {"model": "wan22", "prompt": "a dog", "mode": "i2v"}, tmp_path / "v"
    )
    pipe = provider._runtimes["wan22"].base
    assert_fused(pipe.transformer, expected_fused(plain.transformer, high, 1.0))
    assert_fused(pipe.transformer_2, expected_fused(plain.transformer_2, low, 1.0))
    assert (pipe.guidance_scale, pipe._guidance_scale_2) == (1.0, 1.0)


# -- cache hooks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cache",
    [
        {"kind": "first_block", "threshold": 1e9},
        {"kind": "mag", "threshold": 10.0, "max_skip_steps": 5, "mag_ratios": [1.0] * 6},
        {"kind": "taylorseer", "cache_interval": 3, "disable_cache_before_step": 1},
    ],
    ids=["first_block", "mag", "taylorseer"],
)
def test_cache_hooks_skip_transformer_blocks(
    checkpoints: dict[str, Path], tmp_path: Path, cache: dict[str, Any]
) -> None:
    entries = [
        entry("plain", checkpoints["wan_t2v"], modes=["t2v"], num_inference_steps=6),
        entry("cached", checkpoints["wan_t2v"], modes=["t2v"], num_inference_steps=6, cache=cache),
    ]
    provider = DiffusersProvider(prepare_local_models(entries), device="cpu")
    calls = {}
    for model in ("plain", "cached"):
        body = {"model": model, "prompt": "a cat", "seed": 2}
        tiny_pipelines.render(provider, body, tmp_path / f"{model}-warm")
        transformer = provider._runtimes[model].base.transformer
        # Inside the last block's attention: a skipped block (or a predicted attention) is still
        # called, but computes nothing.
        counter = Counter(transformer.blocks[-1].attn1.to_q)
        try:
            tiny_pipelines.render(provider, body, tmp_path / model)
        finally:
            counter.remove()
        calls[model] = counter.count
        assert transformer.is_cache_enabled is (model == "cached")
    assert calls["cached"] < calls["plain"] == 12  # 6 steps, conditional and unconditional


# -- compilation and startup checks --------------------------------------------------------------


def test_compile_marks_the_repeated_blocks(checkpoints: dict[str, Path]) -> None:
    model = entry("wan", checkpoints["wan_t2v"], modes=["t2v"], compile=True, compile_warmup=False)
    provider = DiffusersProvider(prepare_local_models([model]), device="cpu")
    runtime = provider._runtime(provider.models["wan"])
    blocks = runtime.base.transformer.blocks
    assert all(block._compiled_call_impl is not None for block in blocks)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"distill_lora": {"path": "/x/lora.pt"}}, r"distill_lora.path must be a local .safe"),
        ({"distill_lora": {"path": "/nowhere/lora.safetensors"}}, "no file /nowhere/lora"),
        (
            {"distill_lora": {"path": "{lora}", "path_2": "{lora}"}},
            "path_2 is the low-noise expert's LoRA of a Wan 2.2 A14B checkpoint",
        ),
        (
            {"distill_lora": {"path": "{lora}"}, "guidance_scale": 5.0},
            "guidance_scale and guidance_scale_2 do not apply with distill_lora",
        ),
        ({"distill_lora": {"path": "{lora}", "steps": 0}}, "options.distill_lora.steps"),
        ({"cache": {"kind": "teacache"}}, "options.cache: Input tag 'teacache'"),
        ({"cache": {"kind": "mag"}}, "options.cache.mag.mag_ratios: Field required"),
        ({"cache": {"kind": "first_block", "threshold": 0}}, "cache.first_block.threshold"),
        ({"cache": {"kind": "taylorseer", "interval": 2}}, "taylorseer.interval: Extra"),
        ({"compile": "yes please"}, "options.compile: Input should be a valid boolean"),
    ],
    ids=[
        "lora-suffix",
        "lora-missing",
        "lora-2-one-expert",
        "lora-guidance",
        "lora-steps",
        "cache-kind",
        "mag-ratios",
        "fbc-threshold",
        "taylorseer-typo",
        "compile",
    ],
)
def test_startup_refuses_speed_options_it_cannot_honour(
    tmp_path: Path, checkpoints: dict[str, Path], options: dict[str, Any], message: str
) -> None:
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return str(lora) if value == "{lora}" else value

    bad = entry("bad", checkpoints["wan_t2v"], modes=["t2v"], **fill(options))
    with pytest.raises(LocalModelError, match=message) as caught:
        build_providers(make_settings(tmp_path, models=[bad]))
    assert str(caught.value).startswith('model "bad": ')
