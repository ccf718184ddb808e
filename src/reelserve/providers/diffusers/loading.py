"""Loading a local checkpoint onto a device: each component in its dtype, the geometry checked
against the catalog, then placed and configured as the model entry says (attention backend, VAE
tiling, a fused distill LoRA, a cache hook, compilation). The pipelines of the other modes are
built over the loaded one's modules (`variant`), sharing its weights in their dtypes. Running out
of memory is recognised here (`is_out_of_memory`) and the device's cache emptied (`free_memory`).

torch and diffusers are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from typing import Any

from reelserve.domain.task import ErrorCode
from reelserve.providers.base import ProviderError
from reelserve.providers.diffusers.catalog import LocalModel
from reelserve.providers.diffusers.options import (
    CacheOption,
    DistillLora,
    FirstBlockCache,
    MagCache,
)

log = logging.getLogger("reelserve.providers.diffusers.provider")


def load_base(model: LocalModel, device: str | None) -> tuple[Any, str]:
    """The checkpoint's pipeline loaded with each component in its dtype, and the device it is
    for (the one asked, else the GPU where there is one): not yet moved there or configured."""
    import torch

    options = model.options
    entry_id = model.entry.id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{entry_id}" is set to run on {device}, but this worker sees no CUDA GPU',
        )
    if not (options.checkpoint / "model_index.json").is_file():
        log.error("model %s: no diffusers checkpoint in %s", entry_id, options.checkpoint)
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{entry_id}" is not installed on this worker (its checkpoint directory '
            "holds no model_index.json); the worker's log names the directory",
        )
    dtype = _dtype(options.dtype, device)
    # One dtype per component: the model's, apart from those its authors keep in another
    # (Wan's VAE and image encoder in float32) or the entry names in component_dtypes.
    dtypes = {"default": dtype}
    for name, value in model.component_dtypes().items():
        dtypes[name] = _dtype(value, device)
    log.info("loading %s from %s on %s (%s)", entry_id, options.checkpoint, device, dtypes)
    try:
        from diffusers import DiffusionPipeline

        base = DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            str(options.checkpoint), dtype=dtypes, local_files_only=True
        )
    except Exception as exc:
        if is_out_of_memory(exc):
            free_memory(device)
            raise ProviderError(
                ErrorCode.OUT_OF_MEMORY,
                f'model "{entry_id}" does not fit in the memory of {device}',
            ) from None
        log.exception("model %s: loading %s failed", entry_id, options.checkpoint)
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{entry_id}" could not be loaded on this worker; the worker\'s log has '
            "the details",
        ) from None
    return base, device


def check_geometry(model: LocalModel, base: Any) -> None:
    """The loaded pipeline must agree with the rules the catalog was validated against."""
    temporal = getattr(base, "vae_scale_factor_temporal", None) or getattr(
        base, "vae_temporal_compression_ratio", None
    )
    if temporal is not None and int(temporal) != model.geometry.temporal:
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{model.entry.id}": its VAE compresses time {temporal}x, not the '
            f"{model.geometry.temporal}x its catalog entry was validated for; restart the "
            "servers so they read the checkpoint",
        )


def transformers(base: Any) -> list[Any]:
    return [
        m
        for m in (
            getattr(base, "transformer", None),
            getattr(base, "transformer_2", None),
        )
        if m is not None
    ]


def configure(model: LocalModel, base: Any, device: str) -> None:
    """Device placement and the optional speed settings of the model entry."""
    options = model.options
    entry_id = model.entry.id
    if options.attention_backend:
        try:
            for transformer in transformers(base):
                transformer.set_attention_backend(options.attention_backend)
        except Exception as exc:
            raise ProviderError(
                ErrorCode.PROVIDER_NOT_CONFIGURED,
                f'model "{entry_id}": attention_backend "{options.attention_backend}" is not '
                f"usable on this worker ({exc})",
            ) from None
    if options.vae_tiling:
        base.vae.enable_tiling()
    if options.cpu_offload == "none":
        base.to(device)
    if options.distill_lora is not None:
        _fuse_lora(model, base, options.distill_lora)
    if options.cache is not None:
        config = cache_config(options.cache, model.steps())
        for transformer in transformers(base):
            transformer.enable_cache(config)
        log.info("model %s: %s cache on the transformer", entry_id, options.cache.kind)
    if options.compile:
        for transformer in transformers(base):
            transformer.compile_repeated_blocks(fullgraph=True)


def _fuse_lora(model: LocalModel, base: Any, distill: DistillLora) -> None:
    """Load the distilled LoRA(s) from local files, fuse them into the transformer(s) and
    drop the LoRA layers, so that a step costs what it cost before."""
    entry_id = model.entry.id
    if not hasattr(base, "load_lora_weights"):
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{entry_id}": {type(base).__name__} cannot load LoRA weights',
        )
    files = [("transformer", distill.path)]
    if distill.path_2 is not None:
        files.append(("transformer_2", distill.path_2))
    started = time.perf_counter()
    try:
        for component, path in files:
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            base.load_lora_weights(
                str(path.parent),
                weight_name=path.name,
                adapter_name=f"distill_{component}",
                local_files_only=True,
                **({"load_into_transformer_2": True} if component == "transformer_2" else {}),
            )
        base.fuse_lora(lora_scale=distill.scale, components=[c for c, _ in files])
        base.unload_lora_weights()
    except Exception as exc:
        log.exception("model %s: the distill LoRA could not be fused", entry_id)
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f'model "{entry_id}": options.distill_lora could not be loaded on this worker '
            f"({str(exc).splitlines()[0][:200]})",
        ) from None
    log.info(
        "model %s: distill LoRA %s fused in %.1f s (%d steps, guidance %s)",
        entry_id,
        ", ".join(str(p) for _, p in files),
        time.perf_counter() - started,
        model.steps(),
        distill.guidance_scale,
    )


def cache_config(cache: CacheOption, steps: int) -> Any:
    """The diffusers cache config of a model entry's `cache` option."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if isinstance(cache, FirstBlockCache):
        return FirstBlockCacheConfig(threshold=cache.threshold)  # type: ignore[no-untyped-call]
    if isinstance(cache, MagCache):
        return MagCacheConfig(  # type: ignore[no-untyped-call]
            threshold=cache.threshold,
            max_skip_steps=cache.max_skip_steps,
            retention_ratio=cache.retention_ratio,
            num_inference_steps=steps,
            mag_ratios=list(cache.mag_ratios),
        )
    return TaylorSeerCacheConfig(  # type: ignore[no-untyped-call]
        cache_interval=cache.cache_interval,
        disable_cache_before_step=cache.disable_cache_before_step,
        disable_cache_after_step=cache.disable_cache_after_step,
        max_order=cache.max_order,
        cache_identifiers=list(cache.cache_identifiers),
    )


def variant(cls: Any, base: Any) -> Any:
    """A pipeline of class `cls` over the loaded pipeline's own modules, unchanged.

    Not `cls.from_pipe(base)`: without a dtype it casts every shared module to float32 in place
    (diffusers 0.42 `pipelines/pipeline_utils.py`, `new_pipeline.to(dtype=dtype)` with float32 as
    the default), so one image-to-video request would turn a bf16 model into an fp32 one for
    every mode, and cast the modules it keeps in float32 along with the rest. Here the modules
    are passed as they are, with the configuration values the class takes (`boundary_ratio`,
    `expand_timesteps`).
    """
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {name: module for name, module in base.components.items() if name in parameters}
    for key, value in base.config.items():
        if key in parameters and key not in kwargs and not key.startswith("_"):
            kwargs[key] = value
    missing = [
        name
        for name, p in parameters.items()
        if name != "self" and p.default is inspect.Parameter.empty and name not in kwargs
    ]
    if missing:
        raise ProviderError(
            ErrorCode.PROVIDER_NOT_CONFIGURED,
            f"{cls.__name__} cannot be built from a {type(base).__name__} checkpoint: it has no "
            f"{', '.join(missing)}",
        )
    return cls(**kwargs)


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return getattr(torch, name)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU (or MPS) allocator's plain RuntimeError saying so."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
