"""Tiny random-weight diffusers pipelines of each family reelserve serves, built offline.

Every component is constructed from a small config in this file (a few thousand parameters each),
with a word-level tokenizer built in memory: nothing is downloaded. The pipelines keep the real
families' geometry (spatial and temporal compression of the VAEs, patch sizes), so the size and
frame-count rules reelserve applies to the published checkpoints apply to these unchanged; only
the widths and depths are cut down. `save_pretrained` writes a checkpoint directory laid out exactly
like a published one (model_index.json plus one folder per component), which is what reelserve
loads.

Each `save_*` takes the dtype its weights are stored in: float32, or bfloat16 like the published
checkpoints (loading those in bf16 keeps each model's `_keep_in_fp32_modules` in float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = tuple(
    [
        "a",
        "cat",
        "dog",
        "bird",
        "fish",
        "robot",
        "car",
        "tree",
        "house",
        "river",
        "sea",
        "sky",
        "sun",
        "moon",
        "star",
        "city",
        "street",
        "forest",
        "mountain",
        "field",
        "flower",
        "red",
        "green",
        "blue",
        "yellow",
        "white",
        "black",
        "orange",
        "purple",
        "running",
        "walking",
        "flying",
        "swimming",
        "dancing",
        "jumping",
        "sitting",
        "sleeping",
        "slowly",
        "quickly",
        "over",
        "under",
        "near",
        "the",
        "on",
        "in",
        "at",
        "with",
        "and",
        "of",
        "camera",
        "zoom",
        "pan",
        "shot",
        "close",
        "wide",
        "night",
        "day",
        "morning",
        "evening",
        "rain",
        "snow",
        "light",
        "dark",
    ]
)


def tiny_tokenizer(*, pad: str = "<pad>", eos: str = "</s>", bos: str | None = None) -> Any:
    """A word-level fast tokenizer built in memory (never downloaded)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    specials = [pad, eos, "<unk>"] + ([bos] if bos else [])
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    extra: dict[str, str] = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=pad, eos_token=eos, unk_token="<unk>", **extra
    )


def vocab_size() -> int:
    return len(WORDS) + 4


def _save(pipe: Any, path: Path, dtype: torch.dtype) -> None:
    """Write the checkpoint with every weight in `dtype`, as published checkpoints store them."""
    pipe.to(dtype=dtype)
    pipe.save_pretrained(path)


# -- Wan 2.x -------------------------------------------------------------------------------------


def _wan_parts(in_channels: int, **transformer: Any) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size(),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
        **transformer,
    )
    return {
        "tokenizer": tiny_tokenizer(),
        "text_encoder": text_encoder,
        "vae": vae,
        # As the published Wan checkpoints ship it: UniPC on flow sigmas, shift 3 (480p).
        "scheduler": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        "transformer": model,
    }


def save_wan_t2v(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A Wan 2.1 text-to-video checkpoint (`WanPipeline`)."""
    from diffusers import WanPipeline

    _save(WanPipeline(**_wan_parts(16)), path, dtype)
    return path


def save_wan_flf2v(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A Wan 2.1 first+last-frame checkpoint (`WanImageToVideoPipeline`, CLIP image encoder)."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    image_size, patch = 16, 4
    tokens = (image_size // patch) ** 2 + 1
    parts = _wan_parts(36, image_dim=4, pos_embed_seq_len=2 * tokens)
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            intermediate_size=16,
            patch_size=patch,
        )
    )
    processor = CLIPImageProcessor(crop_size=image_size, size=image_size)
    pipe = WanImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=processor)
    _save(pipe, path, dtype)
    return path


def save_wan22_i2v(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A Wan 2.2 A14B-style image-to-video checkpoint: two experts, no CLIP image encoder.

    Without an image encoder the last frame enters through the VAE condition only, so the same
    checkpoint serves both first-frame and first+last-frame requests.
    """
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    parts = _wan_parts(36)
    torch.manual_seed(1)
    second = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    pipe = WanImageToVideoPipeline(
        **parts,
        transformer_2=second,
        boundary_ratio=0.875,
        image_encoder=None,
        image_processor=None,
    )
    _save(pipe, path, dtype)
    return path


# -- LTX-Video -----------------------------------------------------------------------------------


def save_ltx(
    path: Path, dtype: torch.dtype = torch.float32, *, timestep_conditioning: bool = False
) -> Path:
    """An LTX-Video 0.9.x checkpoint (`LTXPipeline`): 32x spatial, 8x temporal compression.

    `timestep_conditioning`: the decoder takes the decode timestep, as from LTX-Video 0.9.1 on.
    """
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=vocab_size(),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=timestep_conditioning,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=32,
    )
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
    )
    _save(pipe, path, dtype)
    return path


# -- LTX-2 (video + synchronised audio) ----------------------------------------------------------


def save_ltx2(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """An LTX-2 checkpoint (`LTX2Pipeline`): Gemma 3 text encoder, text connectors, video VAE
    (32x spatial, 8x temporal), audio VAE and vocoder, all tiny."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    text_hidden, text_layers = 16, 2
    config = Gemma3Config(
        text_config={
            "vocab_size": vocab_size(),
            "hidden_size": text_hidden,
            "intermediate_size": 32,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 256,
            "sliding_window": 64,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 3,
        },
        vision_config={
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        mm_tokens_per_image=4,
        image_token_index=2,
        boi_token_index=2,
        eoi_token_index=2,
    )
    text_encoder = Gemma3ForConditionalGeneration(config)
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=text_hidden,
        text_proj_in_factor=text_layers + 1,
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_double_precision=False,
        rope_type="split",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(False, False, False),
        upsample_factor=(1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
        decoder_spatial_padding_mode="zeros",
    )
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        sample_rate=16000,
        mel_hop_length=160,
        mel_bins=8,
    )
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
        hidden_channels=16,
        out_channels=2,
        # 100 mel frames a second (16 kHz / hop 160) upsampled 4 * 4 * 5 = 80 times: 8 kHz audio.
        upsample_kernel_sizes=[8, 8, 10],
        upsample_factors=[4, 4, 5],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        output_sampling_rate=8000,
    )
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        vae_scale_factors=(8, 32, 32),
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=2,
        caption_channels=text_hidden,
        rope_double_precision=False,
        rope_type="split",
    )
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(bos="<bos>"),
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    _save(pipe, path, dtype)
    return path


# -- running the provider directly (no server): what the worker offers a provider ----------------


class TinyContext:
    """A `RunContext` as the worker builds one: a work directory, the images, progress recorded."""

    def __init__(self, workdir: Path, images: Any = None) -> None:
        from reelserve.providers.base import InputImages

        self.task_id = "tiny"
        self.workdir = workdir
        self.resume_state: dict[str, Any] | None = None
        self.images = images if images is not None else InputImages()
        self.can_fail_over = False
        self.progress: list[float] = []
        self.cancel_requested = False

    def report_progress(self, fraction: float) -> None:
        self.progress.append(fraction)

    def check_cancelled(self) -> None:
        from reelserve.providers.base import TaskCancelled

        if self.cancel_requested:
            raise TaskCancelled()

    def report_withheld(self, withheld: list[Any]) -> None:
        raise AssertionError(f"a local model withheld samples: {withheld}")

    async def checkpoint(self, state: dict[str, Any]) -> None:
        self.resume_state = state


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 40)) -> bytes:
    """A PNG: a colour field with a white square, so the image is not flat."""
    import io

    from PIL import Image

    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render(
    provider: Any,
    body: dict[str, Any],
    workdir: Path,
    *,
    last_colour: tuple[int, int, int] = (220, 200, 30),
) -> list[Any]:
    """Run one request on a `DiffusersProvider` the way the worker does; the clips it made.

    `mode` i2v or flf2v in the body adds the first (and last) frame images.
    """
    import asyncio
    import base64

    from reelserve.domain.spec import parse_generation_request
    from reelserve.providers.base import InputImages

    body = dict(body)
    mode = body.pop("mode", "t2v")
    first = last = None
    if mode in ("i2v", "flf2v"):
        first = (png((30, 160, 40)), "image/png")
        body["first_frame_image"] = "data:image/png;base64," + base64.b64encode(first[0]).decode()
    if mode == "flf2v":
        last = (png(last_colour), "image/png")
        body["last_frame_image"] = "data:image/png;base64," + base64.b64encode(last[0]).decode()
    entries = {m.entry.id: m.entry for m in provider.models.values()}
    spec = parse_generation_request(body, entries)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = TinyContext(workdir, InputImages(first_bytes=first, last_bytes=last))
    return list(asyncio.run(provider.run(spec, ctx)))
