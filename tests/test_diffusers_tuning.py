"""Each checkpoint runs with the settings its authors ship, and the entry can tune every one.

Which checkpoint a directory holds (Wan 2.1 or 2.2, one expert or two, LTX-Video before or after
0.9.1, LTX-2.0 or 2.3) is read from its configs; that picks the steps, guidance, scheduler shift
per resolution, default negative prompt, component dtypes and extra call arguments (see
`providers/diffusers/authors.py:AUTHORS`). The tiny checkpoints of `tests/tiny_pipelines.py`
stand in for the published ones; what reaches the pipeline is observed on the pipeline itself
and with forward hooks on its transformer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch

from reelserve.domain.models import ModelEntry
from reelserve.domain.spec import parse_generation_request
from reelserve.media.video import decode_frames
from reelserve.providers.diffusers.authors import WAN_NEGATIVE_PROMPT
from reelserve.providers.diffusers.catalog import (
    LocalModel,
    prepare_local_model,
    prepare_local_models,
)
from reelserve.providers.diffusers.checkpoint import Geometry
from reelserve.providers.diffusers.options import LocalModelError, parse_options
from reelserve.providers.diffusers.plan import plan_render
from reelserve.providers.diffusers.provider import DiffusersProvider
from reelserve.providers.registry import build_providers
from tests import tiny_pipelines
from tests.support import make_settings


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "wan_t2v": tiny_pipelines.save_wan_t2v(root / "wan-t2v"),
        "wan22_i2v": tiny_pipelines.save_wan22_i2v(root / "wan22-i2v", torch.bfloat16),
        "ltx": tiny_pipelines.save_ltx(root / "ltx"),
        "ltx091": tiny_pipelines.save_ltx(root / "ltx-0.9.1", timestep_conditioning=True),
        "ltx2": tiny_pipelines.save_ltx2(root / "ltx2"),
    }


def entry(
    model_id: str,
    family: str,
    checkpoint: Path,
    *,
    modes: list[str] | None = None,
    resolutions: list[str] | None = None,
    **options: Any,
) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        provider="diffusers",
        modes=modes or ["t2v"],  # type: ignore[arg-type]
        durations=[1],
        default_duration=1,
        resolutions=resolutions or ["720p"],  # type: ignore[arg-type]
        audio=family == "ltx2",
        fps=8,
        options={
            "family": family,
            "checkpoint": str(checkpoint),
            "dtype": "float32",
            "num_inference_steps": 2,
            "max_sequence_length": 16,
            "max_pixels": 2048,
            **options,
        },
    )


def provider_of(*entries: ModelEntry) -> DiffusersProvider:
    return DiffusersProvider(prepare_local_models(list(entries)), device="cpu")


def frames(clips: list[Any]) -> np.ndarray:
    return np.stack(list(decode_frames(clips[0].path)))


class Calls:
    """The keyword arguments of every forward call of a module (a forward pre-hook)."""

    def __init__(self, module: Any) -> None:
        self.kwargs: list[dict[str, Any]] = []
        self._hook = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.kwargs.append(dict(kwargs))

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


# -- which checkpoint, and its authors' settings (pure) -----------------------------------------


def test_checkpoints_are_recognised(checkpoints: dict[str, Path]) -> None:
    variants = {
        name: prepare_local_model(
            entry(name, name.rstrip("0123456789_").replace("wan22", "wan"), path, modes=modes)
        ).geometry.variant
        for name, path, modes in (
            ("wan", checkpoints["wan_t2v"], ["t2v"]),
            ("wan22", checkpoints["wan22_i2v"], ["i2v", "flf2v"]),
        )
    }
    assert variants == {"wan": "wan2.1-t2v", "wan22": "wan2.2-i2v-a14b"}
    for name, variant in (("ltx", "ltx-0.9.0"), ("ltx091", "ltx-0.9.1"), ("ltx2", "ltx2.0")):
        family = "ltx2" if name == "ltx2" else "ltx"
        model = prepare_local_model(entry(name, family, checkpoints[name]))
        assert model.geometry.variant == variant


def model_of(variant: str, **options: Any) -> LocalModel:
    """A Wan model as a worker sees it, for a checkpoint of the given kind."""
    e = entry("m", "wan", Path("/nowhere"), resolutions=["720p", "1080p"], **options)
    return LocalModel(
        entry=e,
        options=parse_options(e),
        geometry=Geometry(16, 4, frozenset({"t2v", "i2v"}), "a Wan checkpoint", variant),
    )


def test_scheduler_shift_follows_the_authors_per_resolution() -> None:
    # Wan 2.1: 3.0 at 480p, 5.0 from 720p up (diffusers' Wan example).
    assert model_of("wan2.1-t2v").flow_shift("720p", 832, 480) == 3.0
    assert model_of("wan2.1-i2v").flow_shift("720p", 480, 832) == 3.0
    assert model_of("wan2.1-t2v").flow_shift("720p", 1280, 720) == 5.0
    # Wan 2.2's official configs: 12 for T2V-A14B, 5 for I2V-A14B and TI2V-5B.
    assert model_of("wan2.2-t2v-a14b").flow_shift("720p", 832, 480) == 12.0
    assert model_of("wan2.2-i2v-a14b").flow_shift("720p", 1280, 720) == 5.0
    assert model_of("wan2.2-ti2v-5b").flow_shift("720p", 1280, 704) == 5.0
    # The entry's own: one for all, or one per resolution (the others keep the authors').
    assert model_of("wan2.1-t2v", flow_shift=7).flow_shift("720p", 1280, 720) == 7.0
    table = model_of("wan2.1-t2v", flow_shift={"1080p": 9.0})
    assert table.flow_shift("1080p", 1280, 720) == 9.0
    assert table.flow_shift("720p", 1280, 720) == 5.0
    # A checkpoint not on this host: its scheduler's own.
    assert model_of("").flow_shift("720p", 1280, 720) is None


def test_wan22_a14b_steps_and_both_guidance_scales() -> None:
    t2v = model_of("wan2.2-t2v-a14b", num_inference_steps=None)
    assert (t2v.steps(), t2v.guidance()) == (40, (4.0, 3.0))
    i2v = model_of("wan2.2-i2v-a14b", num_inference_steps=None)
    assert (i2v.steps(), i2v.guidance()) == (40, (3.5, 3.5))
    wan21 = model_of("wan2.1-t2v", num_inference_steps=None)
    assert (wan21.steps(), wan21.guidance()) == (50, (None, None))  # the pipeline's 5.0
    tuned = model_of("wan2.2-i2v-a14b", guidance_scale=1.0, guidance_scale_2=2.0)
    assert tuned.guidance() == (1.0, 2.0)


def test_wan_negative_prompt_when_the_request_sends_none(checkpoints: dict[str, Path]) -> None:
    model = prepare_local_model(entry("wan", "wan", checkpoints["wan_t2v"]))
    models = {"wan": model.entry}
    spec = parse_generation_request({"model": "wan", "prompt": "a cat"}, models)
    assert plan_render(model, spec).negative_prompt == WAN_NEGATIVE_PROMPT
    asked = parse_generation_request(
        {"model": "wan", "prompt": "a cat", "negative_prompt": "blurry"}, models
    )
    assert plan_render(model, asked).negative_prompt == "blurry"
    own = prepare_local_model(entry("wan", "wan", checkpoints["wan_t2v"], negative_prompt="dark"))
    assert plan_render(own, spec).negative_prompt == "dark"
    ltx = prepare_local_model(entry("ltx", "ltx", checkpoints["ltx"]))
    spec = parse_generation_request({"model": "ltx", "prompt": "a cat"}, {"ltx": ltx.entry})
    assert plan_render(ltx, spec).negative_prompt is None


def test_wan22_first_and_last_frame_is_marked_experimental(checkpoints: dict[str, Path]) -> None:
    wan22 = prepare_local_model(
        entry("wan22", "wan", checkpoints["wan22_i2v"], modes=["i2v", "flf2v"])
    )
    assert wan22.entry.public()["details"] == {"experimental_modes": ["flf2v"]}
    first_only = prepare_local_model(entry("wan22", "wan", checkpoints["wan22_i2v"], modes=["i2v"]))
    assert "details" not in first_only.entry.public()
    # Declared by the operator, for API hosts that do not hold the checkpoint.
    declared = prepare_local_model(
        entry(
            "ltx", "ltx", checkpoints["ltx"], modes=["t2v", "flf2v"], experimental_modes=["flf2v"]
        )
    )
    assert declared.entry.public()["details"] == {"experimental_modes": ["flf2v"]}


# -- startup checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "ltx2",
            {"pipeline_kwargs": {"stg_sacle": 0.0}},
            r"options.pipeline_kwargs.stg_sacle is not an argument of LTX2Pipeline; allowed: "
            r".*stg_scale",
        ),
        (
            "ltx2",
            {"pipeline_kwargs": {"stg_scale": "none"}},
            r"options.pipeline_kwargs.stg_scale must be a number like the pipeline's default "
            r"1.0 \(got 'none'\)",
        ),
        (
            "ltx",
            {"pipeline_kwargs": {"num_frames": 9}},
            r"options.pipeline_kwargs cannot set \['num_frames'\]",
        ),
        (
            "ltx",
            {"pipeline_kwargs": {"decode_timestep": {"a": 1}}},
            r"options.pipeline_kwargs.decode_timestep",
        ),
        (
            "wan_t2v",
            {"guidance_scale_2": 3.0},
            "guidance_scale_2 is the low-noise expert's guidance of a Wan 2.2 A14B checkpoint",
        ),
        ("ltx", {"flow_shift": 5.0}, "options.flow_shift applies to wan models only"),
        ("wan_t2v", {"flow_shift": {"4K": 5.0}}, r"options.flow_shift names resolutions \['4K'\]"),
        ("wan_t2v", {"flow_shift": -1}, "options.flow_shift must be positive"),
        (
            "wan_t2v",
            {"component_dtypes": {"vea": "float32"}},
            r"options.component_dtypes names \['vea'\].*its components are \[",
        ),
        ("wan_t2v", {"component_dtypes": {"vae": "fp8"}}, "options.component_dtypes.vae"),
        (
            "wan_t2v",
            {"attention_backend": "flash4"},
            "options.attention_backend must be one of .*_native_cudnn.* \\(got 'flash4'\\)",
        ),
        (
            "wan_t2v",
            {"experimental_modes": ["i2v"]},
            r"options.experimental_modes must be among the entry's modes \['t2v'\]",
        ),
    ],
    ids=[
        "kwarg-typo",
        "kwarg-type",
        "kwarg-reserved",
        "kwarg-object",
        "guidance2-one-expert",
        "shift-ltx",
        "shift-resolution",
        "shift-negative",
        "dtype-component",
        "dtype-value",
        "attention-backend",
        "experimental-mode",
    ],
)
def test_startup_refuses_tuning_the_model_cannot_take(
    tmp_path: Path,
    checkpoints: dict[str, Path],
    name: str,
    options: dict[str, Any],
    message: str,
) -> None:
    family = {"wan_t2v": "wan", "ltx": "ltx", "ltx2": "ltx2"}[name]
    bad = entry("bad", family, checkpoints[name], **options)
    with pytest.raises(LocalModelError, match=message) as caught:
        build_providers(make_settings(tmp_path, models=[bad]))
    assert str(caught.value).startswith('model "bad": ')


# -- what reaches the pipeline --------------------------------------------------------------------


def test_one_scheduler_per_shift_swapped_per_request(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    provider = provider_of(
        entry(
            "wan",
            "wan",
            checkpoints["wan_t2v"],
            resolutions=["720p", "1080p"],
            flow_shift={"720p": 3.0, "1080p": 8.0},
        )
    )
    body = {"model": "wan", "prompt": "a cat", "seed": 3}
    a = tiny_pipelines.render(provider, body, tmp_path / "a")
    pipe = provider._runtimes["wan"].base
    assert pipe.scheduler.config.flow_shift == 3.0
    first_scheduler = pipe.scheduler
    b = tiny_pipelines.render(provider, {**body, "resolution": "1080p"}, tmp_path / "b")
    assert pipe.scheduler.config.flow_shift == 8.0
    again = tiny_pipelines.render(provider, body, tmp_path / "c")
    assert pipe.scheduler is first_scheduler  # built once per shift
    # Same size (the budget maps both resolutions to 64x32), same seed: only the shift differs.
    assert np.array_equal(frames(a), frames(again))
    assert not np.array_equal(frames(a), frames(b))


def test_wan22_runs_both_guidance_scales_and_keeps_its_vae_in_float32(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    provider = provider_of(
        entry(
            "wan22",
            "wan",
            checkpoints["wan22_i2v"],
            modes=["i2v", "flf2v"],
            dtype="bfloat16",
            guidance_scale_2=2.0,
        )
    )
    body = {"model": "wan22", "prompt": "a dog", "seed": 1}
    tiny_pipelines.render(provider, {**body, "mode": "i2v"}, tmp_path / "i2v")
    pipe = provider._runtimes["wan22"].base
    assert (pipe.guidance_scale, pipe._guidance_scale_2) == (3.5, 2.0)
    assert pipe.vae.dtype == torch.float32
    assert pipe.transformer.dtype == pipe.transformer_2.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16
    tiny_pipelines.render(provider, {**body, "mode": "flf2v"}, tmp_path / "flf2v")
    assert pipe.vae.dtype == torch.float32


def test_component_dtypes_override_the_authors(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    provider = provider_of(
        entry(
            "wan22",
            "wan",
            checkpoints["wan22_i2v"],
            modes=["i2v"],
            dtype="bfloat16",
            component_dtypes={"vae": "bfloat16", "text_encoder": "float32"},
        )
    )
    tiny_pipelines.render(
        provider, {"model": "wan22", "prompt": "a dog", "mode": "i2v"}, tmp_path / "v"
    )
    pipe = provider._runtimes["wan22"].base
    assert pipe.vae.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.float32


def test_ltx2_0_runs_as_ltx2_0_and_pipeline_kwargs_reach_the_pipeline(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    provider = provider_of(
        entry("ltx2", "ltx2", checkpoints["ltx2"]),
        entry(
            "ltx2-cfg",
            "ltx2",
            checkpoints["ltx2"],
            pipeline_kwargs={
                "stg_scale": 0.0,
                "audio_stg_scale": 0.0,
                "modality_scale": 1.0,
                "audio_modality_scale": 1.0,
            },
        ),
    )
    counts = {}
    for model in ("ltx2", "ltx2-cfg"):
        tiny_pipelines.render(provider, {"model": model, "prompt": "rain"}, tmp_path / "warm")
        transformer = provider._runtimes[model].base.transformer
        with Calls(transformer) as calls:
            tiny_pipelines.render(provider, {"model": model, "prompt": "rain"}, tmp_path / model)
        denoising = [k for k in calls.kwargs if "use_cross_timestep" in k]
        assert denoising and {k["use_cross_timestep"] for k in denoising} == {False}
        blocks = [k.get("spatio_temporal_guidance_blocks") for k in denoising]
        counts[model] = (len(denoising), blocks)
    # The LTX-2.0 default: STG at block 29, and guidance with STG and modality isolation costs
    # more transformer passes per step than plain CFG, which pipeline_kwargs asked for.
    assert [29] in counts["ltx2"][1]
    assert counts["ltx2-cfg"][0] < counts["ltx2"][0]
    assert [29] not in counts["ltx2-cfg"][1]


def test_ltx_0_9_1_decode_timestep_and_image_noise(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    provider = provider_of(
        entry("ltx", "ltx", checkpoints["ltx091"], modes=["t2v", "flf2v"]),
    )
    model = provider.models["ltx"]
    assert model.call_arguments() == {"decode_timestep": 0.05, "image_cond_noise_scale": 0.025}
    # The text-to-video pipeline takes decode_timestep only; first+last frame both. The VAE's
    # decoder is called with the decode timestep (its second argument).
    tiny_pipelines.render(provider, {"model": "ltx", "prompt": "a cat"}, tmp_path / "warm")
    decoder = provider._runtimes["ltx"].base.vae.decoder
    seen: list[float] = []

    def record(module: Any, args: Any) -> None:
        seen.append(float(args[1].flatten()[0]))

    hook = decoder.register_forward_pre_hook(record)
    try:
        for mode in ("t2v", "flf2v"):
            body = {"model": "ltx", "prompt": "a cat", "mode": mode}
            assert frames(tiny_pipelines.render(provider, body, tmp_path / mode)).shape[0] == 9
    finally:
        hook.remove()
    assert seen == pytest.approx([0.05, 0.05])
