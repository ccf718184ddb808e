"""Tiny random-weight diffusers pipelines of each family reelserve serves, built offline.

Every component is constructed from a small config in this file (a few thousand parameters each),
with a word-level tokenizer built in memory: nothing is downloaded. The pipelines keep the real
families' geometry (spatial and temporal compression of the VAEs, patch sizes), so the size and
frame-count rules reelserve applies to the published checkpoints apply to these unchanged; only
the widths and depths are cut down. `save_pretrained` writes a checkpoint directory laid out exactly
like a published one (model_index.json plus one folder per component), which is what reelserve
loads.
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


# -- Wan 2.x -------------------------------------------------------------------------------------


def _wan_parts(in_channels: int, **transformer: Any) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
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
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "transformer": model,
    }


def save_wan_t2v(path: Path) -> Path:
    """A Wan 2.1 text-to-video checkpoint (`WanPipeline`)."""
    from diffusers import WanPipeline

    WanPipeline(**_wan_parts(16)).save_pretrained(path)
    return path


def save_wan_flf2v(path: Path) -> Path:
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
    WanImageToVideoPipeline(
        **parts, image_encoder=image_encoder, image_processor=processor
    ).save_pretrained(path)
    return path


def save_wan22_i2v(path: Path) -> Path:
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
    WanImageToVideoPipeline(
        **parts,
        transformer_2=second,
        boundary_ratio=0.875,
        image_encoder=None,
        image_processor=None,
    ).save_pretrained(path)
    return path


# -- LTX-Video -----------------------------------------------------------------------------------


def save_ltx(path: Path) -> Path:
    """An LTX-Video 0.9.x checkpoint (`LTXPipeline`): 32x spatial, 8x temporal compression."""
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
        timestep_conditioning=False,
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
    LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
    ).save_pretrained(path)
    return path


# -- LTX-2 (video + synchronised audio) ----------------------------------------------------------


def save_ltx2(path: Path) -> Path:
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
    LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(bos="<bos>"),
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    ).save_pretrained(path)
    return path
