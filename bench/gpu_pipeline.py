"""Denoising speed of a full-size Wan 2.1 model: reelserve's settings beside plain diffusers.

    python -m bench.gpu_pipeline [--model 14b|1.3b] [--sizes 480p,720p] [--frames 81]
                                 [--steps 50] [--measure 3] [--device cuda]
                                 [--attention-backend auto] [--compile/--no-compile]
    python -m bench.gpu_pipeline --tiny      # a tiny model on the CPU: proves the code path

The transformer and VAE are built from their published configs (bench/configs/, no download)
with random weights: weights do not change the arithmetic, so seconds per step are the real
model's. For each size it times one denoising step as the pipelines run it (the transformer
twice, conditional and unconditional, for classifier-free guidance) and one VAE decode of the
whole clip, and prints seconds per step and per video (steps x step + decode; the text encoder
runs once per video and is left out) for two set-ups:

* diffusers: the pipeline's defaults as its documentation runs them (bf16 weights, PyTorch's
  SDPA attention, no compilation);
* reelserve: the speed options a model entry can set (docs/providers/local.md): bf16, the
  fastest attention backend that works here (`auto` tries _flash_3, flash, sage, then native),
  and regional compilation of the repeated transformer blocks.

Needs a GPU for meaningful figures: a 14B model in bf16 needs some 30 GB of GPU memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"
SIZES = {"480p": (832, 480), "720p": (1280, 720)}
AUTO_BACKENDS = ("_flash_3", "flash", "sage", "native")
TEXT_TOKENS = 512  # the Wan pipelines pad prompts to 512 tokens


def _config(name: str) -> dict[str, Any]:
    data = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build(model: str, tiny: bool, dtype: Any, device: str) -> tuple[Any, Any]:
    """A randomly initialised transformer and VAE with the published (or tiny) configs."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    if tiny:
        configs = json.loads((CONFIGS / "tiny.json").read_text())
        transformer_config, vae_config = configs["transformer"], configs["vae"]
    else:
        transformer_config = _config(f"wan2.1-t2v-{model}.json")
        vae_config = _config("wan2.1-vae.json")
    with torch.device(device):
        transformer = WanTransformer3DModel(**transformer_config).to(dtype).eval()
        # Wan's VAE runs in float32 in the published pipelines.
        vae = AutoencoderKLWan(**vae_config).to(torch.float32).eval()
    return transformer, vae


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pick_backend(transformer: Any, wanted: str) -> str:
    names = AUTO_BACKENDS if wanted == "auto" else (wanted,)
    for name in names:
        try:
            transformer.set_attention_backend(name)
        except Exception as exc:
            print(f"  attention backend {name} unavailable: {str(exc).splitlines()[0][:100]}")
            continue
        return name
    transformer.set_attention_backend("native")
    return "native"


def time_step(
    transformer: Any,
    size: tuple[int, int],
    frames: int,
    *,
    dtype: Any,
    device: str,
    warmup: int,
    measure: int,
) -> float:
    """Median seconds of one guided denoising step (two transformer passes)."""
    import torch

    width, height = size
    text_dim = transformer.config.text_dim
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device)
    latents = latents.to(dtype)
    cond = torch.randn(1, TEXT_TOKENS, text_dim, device=device, dtype=dtype)
    uncond = torch.randn(1, TEXT_TOKENS, text_dim, device=device, dtype=dtype)
    timestep = torch.tensor([500.0], device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + measure):
            _sync(device)
            start = time.perf_counter()
            for text in (cond, uncond):
                transformer(
                    hidden_states=latents,
                    timestep=timestep,
                    encoder_hidden_states=text,
                    return_dict=False,
                )
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_decode(vae: Any, size: tuple[int, int], frames: int, device: str) -> float:
    import torch

    width, height = size
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device)
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        vae.decode(latents, return_dict=False)
        _sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["14b", "1.3b"], default="14b")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--sizes", default="480p,720p")
    parser.add_argument("--frames", type=int, default=None, help="default 81 (tiny: 9)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps of one video")
    parser.add_argument("--measure", type=int, default=3, help="timed steps (after warm-up)")
    parser.add_argument("--device", default=None, help="default cuda if any, else cpu")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("no GPU here: a full-size model on the CPU would take hours; use --tiny")
        return 2
    frames = args.frames or (9 if args.tiny else 81)
    if (frames - 1) % 4:
        parser.error("--frames must be 4k+1 (Wan's VAE compresses time 4x)")
    compile_blocks = args.compile if args.compile is not None else device.startswith("cuda")
    dtype = torch.bfloat16
    label = "tiny" if args.tiny else f"Wan2.1-T2V-{args.model.upper()}"
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"{label} on {gpu}, torch {torch.__version__}, {frames} frames, {args.steps} steps")
    if args.tiny:
        print("(a tiny model: these figures only show that the code path runs)")

    transformer, vae = build(args.model, args.tiny, dtype, device)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    results: dict[str, dict[str, float]] = {}
    decode: dict[str, float] = {}
    for setup in ("diffusers", "reelserve"):
        if setup == "diffusers":
            transformer.set_attention_backend("native")
            what = "bf16, native SDPA, eager"
        else:
            backend = pick_backend(transformer, args.attention_backend)
            if compile_blocks:
                transformer.compile_repeated_blocks(fullgraph=True)
            what = f"bf16, {backend} attention, {'regional compile' if compile_blocks else 'eager'}"
        print(f"{setup}: {what}")
        results[setup] = {}
        for name in sizes:
            size = SIZES[name]
            warmup = 2 if setup == "reelserve" and compile_blocks else 1
            step = time_step(
                transformer,
                size,
                frames,
                dtype=dtype,
                device=device,
                warmup=warmup,
                measure=args.measure,
            )
            results[setup][name] = step
            if name not in decode:
                decode[name] = time_decode(vae, size, frames, device)
            print(f"  {name}: {step:.3f} s/step")

    print()
    print(f"{'size':<6} {'setup':<10} {'s/step':>9} {'s/video':>9} {'speed-up':>9}")
    for name in sizes:
        base = results["diffusers"][name]
        for setup in ("diffusers", "reelserve"):
            step = results[setup][name]
            video = args.steps * step + decode[name]
            print(f"{name:<6} {setup:<10} {step:>9.3f} {video:>9.1f} {base / step:>8.2f}x")
    print(
        f"(per video: {args.steps} steps + one VAE decode; decode "
        + ", ".join(f"{n} {decode[n]:.1f} s" for n in sizes)
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
