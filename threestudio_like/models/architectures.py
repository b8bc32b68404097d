"""Architecture specs of the priors' networks, at full size and at toy size (``tiny-random``).

UNets are described in ldm terms (``model_channels``, ``channel_mult``, ``attention_levels`` ...)
and turned into ``diffusers.UNet2DConditionModel`` arguments by
:func:`~threestudio_like.models.ldm_convert.diffusers_unet_config`; the same spec serves a
converted checkpoint and a toy model, so both have the same layer layout. Toy versions keep
every structural choice (input channels, head layout, linear projections, camera embedding)
and shrink only widths and depths (:func:`tiny_unet_spec`).
"""
from __future__ import annotations

from typing import Any, Dict

# Stable Diffusion 1.x UNet (v1-inference.yaml): 8 heads at every level, 768-d CLIP ViT-L context.
SD15_UNET: Dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_levels": [True, True, True, False],  # attention_resolutions [4, 2, 1]
    "num_head_channels": 64,
    "num_heads": 8,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "transformer_depth": 1,
}
# Stable Diffusion 2.1 (base): 64-wide heads, 1024-d OpenCLIP ViT-H context, linear projections.
SD21_UNET: Dict[str, Any] = {**SD15_UNET, "num_heads": None, "context_dim": 1024, "use_linear_in_transformer": True}
# MVDream's sd-v2-base.yaml: SD2.1-base plus the 16-d camera embedding.
MVDREAM_UNET: Dict[str, Any] = {**SD21_UNET, "camera_dim": 16}
# Zero-1-to-3 (sd-objaverse-finetune-c_concat-256.yaml): SD1.x with the image latent concatenated.
ZERO123_UNET: Dict[str, Any] = {**SD15_UNET, "in_channels": 8}
# EscherNet: a stock SD1.5 UNet (cameras enter through CaPE in attention only).
ESCHERNET_UNET: Dict[str, Any] = dict(SD15_UNET)
# LDM3D (Intel): SD1.4's UNet unchanged (4-channel latent, CLIP ViT-L/14 context); only the
# autoencoder's first and last convolutions take RGB + depth (see :data:`SD_VAE_DDCONFIG`).
LDM3D_UNET: Dict[str, Any] = dict(SD15_UNET)

TINY_CONTEXT_DIM = 32
"""Width of every toy context (the toy text encoder, CLIP image tower and ConvNeXt)."""


def tiny_unet_spec(full: Dict[str, Any], context_dim: int = TINY_CONTEXT_DIM) -> Dict[str, Any]:
    """The toy version of a UNet spec: 3 levels of 32-64 channels, one block each, attention on
    the first two; SD1-style specs (a fixed head count) get 2 heads, SD2-style ones 8-wide heads."""
    tiny = {
        **full,
        "model_channels": 32,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attention_levels": [True, True, False],
        "context_dim": context_dim,
    }
    if full.get("num_heads"):
        tiny["num_heads"] = 2
    else:
        tiny["num_head_channels"] = 8
    return tiny


TINY_SD21_UNET = tiny_unet_spec(SD21_UNET)
TINY_MVDREAM_UNET = tiny_unet_spec(MVDREAM_UNET)
TINY_ZERO123_UNET = tiny_unet_spec(ZERO123_UNET)
TINY_ESCHERNET_UNET = tiny_unet_spec(ESCHERNET_UNET)
TINY_LDM3D_UNET = tiny_unet_spec(LDM3D_UNET)

# Stable Diffusion's KL-f8 autoencoder (ldm ddconfig); LDM3D's has 4 (RGB + depth) or 6 (RGB +
# RGB-like 16-bit depth) input and output channels: :func:`with_image_channels`.
SD_VAE_DDCONFIG: Dict[str, Any] = {
    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "in_channels": 3, "out_ch": 3, "z_channels": 4,
}

# A KL-f8 autoencoder at toy size (4 levels keep the 8x downsampling), in ldm ddconfig terms.
TINY_VAE_DDCONFIG: Dict[str, Any] = {
    "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "in_channels": 3, "out_ch": 3, "z_channels": 4,
}


def with_image_channels(ddconfig: Dict[str, Any], channels: int) -> Dict[str, Any]:
    """An autoencoder ddconfig with ``channels`` pixel channels in and out (LDM3D: 4 or 6)."""
    return {**ddconfig, "in_channels": channels, "out_ch": channels}


# CLIP text encoder at toy size (SD's 77 tokens), ``transformers.CLIPTextConfig`` arguments.
TINY_TEXT_ENCODER: Dict[str, Any] = {
    "hidden_size": TINY_CONTEXT_DIM,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
# CLIP ViT image tower at toy size (224 px input as the real one, 7x7 patches).
TINY_CLIP_VISION: Dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": TINY_CONTEXT_DIM,
    "hidden_act": "quick_gelu",
}
# ConvNeXtV2 at toy size: 224 px input, 4 stages with stride 32 overall -> 7x7 = 49 tokens.
TINY_CONVNEXT: Dict[str, Any] = {"hidden_sizes": [8, 16, 24, TINY_CONTEXT_DIM], "depths": [1, 1, 1, 1], "image_size": 224}
