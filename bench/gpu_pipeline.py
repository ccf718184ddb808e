"""Seconds per denoising step of Wan 2.1 14B at 480p: the diffusers default beside reelserve.

    python -m bench.gpu_pipeline --out DIR [--model 14b|1.3b] [--size 480p] [--frames 81]
                                 [--warmup 2] [--measure 3] [--budget 480] [--no-compile]
    python -m bench.gpu_pipeline --tiny --out DIR   # the same setups on the CPU, in seconds

The transformer and VAE are built from their published configs (bench/configs/, no download)
with random weights, in bfloat16, with the modules the model keeps in float32
(`_keep_in_fp32_modules`) in float32, as `from_pretrained(dtype=bfloat16)` loads them; the VAE in
float32 as the official code runs it. Weights do not change the arithmetic, so seconds per step
are the real model's. The text encoder (once per video) is left out.

Setups, timed in interleaved rounds (2 warm-up, 3 measured: each round times one step of every
setup, so drift in clocks or temperature hits all of them alike):

* `native`: the diffusers default: PyTorch SDPA (`native`), eager; a step is two transformer
  passes (classifier-free guidance);
* `cudnn`: the `_native_cudnn` attention backend (no extra install), eager;
* `compiled`: regional compilation of the repeated blocks with the best backend available here
  (`_flash_3`, `flash`, `sage`, `_native_cudnn`, `native`, the first that runs); the first call's
  time is reported as the compile time, separately;
* `distilled`: the 4-step configuration of a step- and CFG-distilled LoRA (one pass per step, the
  LoRA fused so the weights cost the same), on the compiled transformer.

Timed with CUDA events on a GPU (perf_counter on the CPU). Reported per setup: min, median and
max seconds per step, seconds per video (steps x median step + one VAE decode, itself warmed up
once and timed), and the speed-up over `native`. A round that would run past `--budget` seconds
is skipped (and says so). Everything is written to DIR/gpu_pipeline.json and printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"
SIZES = {"480p": (832, 480), "720p": (1280, 720), "tiny": (64, 32)}
BEST_BACKENDS = ("_flash_3", "flash", "sage", "_native_cudnn", "native")
TEXT_TOKENS = 512  # the Wan pipelines pad prompts to 512 tokens
STEPS = {"native": 50, "cudnn": 50, "compiled": 50, "distilled": 4}
PASSES = {"native": 2, "cudnn": 2, "compiled": 2, "distilled": 1}  # CFG: two passes a step
# The bar (LightX2V's README, one H100, Wan2.1-I2V-14B 480p 5 s, seconds per step).
REFERENCE = {"diffusers": 9.77, "xDiT": 8.93, "FastVideo": 7.35, "SGLang": 6.13, "LightX2V": 5.18}


def _config(name: str) -> dict[str, Any]:
    data = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build(model: str, tiny: bool, device: str) -> tuple[Any, Any]:
    """A random transformer in bf16 (its fp32 modules in fp32) and a float32 VAE."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    if tiny:
        configs = json.loads((CONFIGS / "tiny.json").read_text())
        transformer_config, vae_config = configs["transformer"], configs["vae"]
    else:
        transformer_config = _config(f"wan2.1-t2v-{model}.json")
        vae_config = _config("wan2.1-vae.json")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: half the memory of fp32
    try:
        with torch.device(device):
            transformer = WanTransformer3DModel(**transformer_config).eval()
    finally:
        torch.set_default_dtype(previous)
    keep = transformer._keep_in_fp32_modules or []
    for name, module in transformer.named_modules():
        if any(part in keep for part in name.split(".")):
            module.to(torch.float32)
    with torch.device(device):
        vae = AutoencoderKLWan(**vae_config).to(torch.float32).eval()
    return transformer, vae


class Timer:
    """Seconds of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __call__(self, fn: Callable[[], object]) -> float:
        import torch

        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) / 1000.0


def usable_backend(transformer: Any, names: tuple[str, ...], probe: Callable[[], object]) -> str:
    """The first attention backend that sets and runs one pass here."""
    for name in names:
        try:
            transformer.set_attention_backend(name)
            probe()
        except Exception as exc:
            print(f"  attention backend {name}: unavailable ({str(exc).splitlines()[0][:90]})")
            continue
        return name
    transformer.set_attention_backend("native")
    return "native"


def summary(times: list[float]) -> dict[str, float] | None:
    if not times:
        return None
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON")
    parser.add_argument("--model", choices=["14b", "1.3b"], default="14b")
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default 480p")
    parser.add_argument("--frames", type=int, default=None, help="default 81 (tiny: 9)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--measure", type=int, default=3)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the rounds")
    parser.add_argument("--device", default=None, help="default cuda if any, else cpu")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the compiled and distilled setups compile (default: on a GPU only)",
    )
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("no GPU here: a full-size model on the CPU would take hours; use --tiny")
        return 2
    frames = args.frames or (9 if args.tiny else 81)
    if (frames - 1) % 4:
        parser.error("--frames must be 4k+1 (Wan's VAE compresses time 4x)")
    size_name = args.size or ("tiny" if args.tiny else "480p")
    width, height = SIZES[size_name]
    compile_blocks = args.compile if args.compile is not None else device.startswith("cuda")
    label = "tiny Wan" if args.tiny else f"Wan2.1-T2V-{args.model.upper()}"
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"{label} on {gpu}, torch {torch.__version__}, {width}x{height}, {frames} frames")
    if args.tiny:
        print("(a tiny model: these figures only show that the code path runs)")

    transformer, vae = build(args.model, args.tiny, device)
    timer = Timer(device)
    latents = torch.randn(
        1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, dtype=torch.bfloat16
    )
    text_dim = transformer.config.text_dim
    texts = [
        torch.randn(1, TEXT_TOKENS, text_dim, device=device, dtype=torch.bfloat16) for _ in range(2)
    ]
    timestep = torch.tensor([500.0], device=device)

    def passes(count: int) -> Callable[[], object]:
        def run() -> None:
            with torch.inference_mode():
                for text in texts[:count]:
                    transformer(
                        hidden_states=latents,
                        timestep=timestep,
                        encoder_hidden_states=text,
                        return_dict=False,
                    )

        return run

    best = usable_backend(transformer, BEST_BACKENDS, passes(1))
    cudnn = usable_backend(transformer, ("_native_cudnn",), passes(1)) == "_native_cudnn"
    blocks = list(transformer.blocks)
    compiled_impl: list[Any] = []
    skipped: dict[str, str] = {}
    setups: dict[str, dict[str, Any]] = {
        "native": {"backend": "native", "compiled": False},
        "cudnn": {"backend": "_native_cudnn", "compiled": False},
        "compiled": {"backend": best, "compiled": True},
        "distilled": {"backend": best, "compiled": compile_blocks},
    }
    if not cudnn:
        skipped["cudnn"] = "the _native_cudnn backend does not run here"
    if not compile_blocks:
        skipped["compiled"] = "compilation off (--no-compile; the default on the CPU)"
        setups["distilled"]["compiled"] = False
    if compile_blocks:
        transformer.compile_repeated_blocks(fullgraph=True)
        compiled_impl = [block._compiled_call_impl for block in blocks]

    def use(setup: str) -> None:
        transformer.set_attention_backend(setups[setup]["backend"])
        for block, impl in zip(blocks, compiled_impl, strict=False):
            block._compiled_call_impl = impl if setups[setup]["compiled"] else None

    active = [name for name in setups if name not in skipped]
    times: dict[str, list[float]] = {name: [] for name in active}
    first_call: dict[str, float] = {}
    rounds = args.warmup + args.measure
    round_times: list[float] = []
    for index in range(rounds):
        # Skip a round (and the later ones) that the budget cannot hold.
        estimate = max(round_times[-1:], default=0.0)
        if time.perf_counter() - started + estimate > args.budget:
            for name in active:
                skipped.setdefault(
                    name, f"budget of {args.budget:.0f} s: {index} of {rounds} rounds"
                )
            break
        round_start = time.perf_counter()
        for name in active:
            use(name)
            seconds = timer(passes(PASSES[name]))
            if index == 0:
                first_call[name] = seconds
            if index >= args.warmup:
                times[name].append(seconds)
        round_times.append(time.perf_counter() - round_start)
        print(f"  round {index + 1}/{rounds}: {round_times[-1]:.1f} s")

    # The VAE decode of one whole clip, once to warm up, once timed.
    vae_latents = latents.float()
    with torch.inference_mode():
        decode_warm = timer(lambda: vae.decode(vae_latents, return_dict=False))
        decode = timer(lambda: vae.decode(vae_latents, return_dict=False))

    results: dict[str, Any] = {}
    base = summary(times.get("native", []))
    for name in setups:
        step = summary(times.get(name, []))
        entry: dict[str, Any] = {
            **setups[name],
            "passes_per_step": PASSES[name],
            "steps_per_video": STEPS[name],
            "seconds_per_step": step,
            "skipped": skipped.get(name),
        }
        if step is not None:
            entry["seconds_per_video"] = STEPS[name] * step["median"] + decode
            if base is not None:
                entry["speedup_per_step"] = base["median"] / step["median"]
                entry["speedup_per_video"] = (STEPS["native"] * base["median"] + decode) / entry[
                    "seconds_per_video"
                ]
        if setups[name]["compiled"] and name in first_call and step is not None:
            entry["compile_seconds"] = first_call[name] - step["median"]
        results[name] = entry

    report = {
        "bench": "gpu_pipeline",
        "model": label,
        "tiny": args.tiny,
        "device": gpu,
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "python": platform.python_version(),
        "size": [width, height],
        "frames": frames,
        "dtype": "bfloat16 (fp32: _keep_in_fp32_modules; VAE fp32)",
        "rounds": {"warmup": args.warmup, "measure": args.measure, "run": len(round_times)},
        "best_backend": best,
        "vae_decode_seconds": {"warmup": decode_warm, "timed": decode},
        "setups": results,
        "reference_seconds_per_step": {
            "source": "LightX2V README: Wan2.1-I2V-14B, 480p, 5 s, one H100",
            **REFERENCE,
        },
        "elapsed_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_pipeline.json").write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(
        f"{'setup':<10} {'backend':<14} {'min':>8} {'median':>8} {'max':>8} {'s/video':>9} {'x':>6}"
    )
    for name, entry in results.items():
        step = entry["seconds_per_step"]
        if step is None:
            print(f"{name:<10} skipped: {entry['skipped']}")
            continue
        print(
            f"{name:<10} {entry['backend']:<14} {step['min']:>8.3f} {step['median']:>8.3f} "
            f"{step['max']:>8.3f} {entry['seconds_per_video']:>9.1f} "
            f"{entry.get('speedup_per_step', float('nan')):>6.2f}"
        )
    for name, entry in results.items():
        if "compile_seconds" in entry:
            print(f"compile ({name}): {entry['compile_seconds']:.1f} s")
    print(f"VAE decode: {decode:.2f} s (warm-up {decode_warm:.2f} s)")
    print(f"written: {args.out / 'gpu_pipeline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
