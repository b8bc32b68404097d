"""LDM3D (Intel): RGBD latent diffusion as a text-to-3D prior, and text-to-RGBD sampling.

LDM3D is Stable Diffusion 1.4 fine-tuned on (image, DPT depth, caption) triples. Its UNet is
SD1.x's (4-channel latent, CLIP ViT-L/14 text, scaled-linear schedule); only the autoencoder
differs: it packs RGB and depth into one latent (``ldm3d-4c`` / ``ldm3d-pano``: 4 pixel channels,
``ldm3d``: 6; layouts in :mod:`threestudio_like.models.rgbd`).

**RGBD score distillation** (``ldm3d-guidance``): the renderer's colour, depth and opacity
(:meth:`LDM3DGuidance.render_input`) become an RGBD image in LDM3D's depth convention (relative
inverse depth normalised per image, background at the far end:
:func:`~threestudio_like.models.rgbd.ldm3d_depth`), resized to ``image_size``, packed for the
autoencoder and encoded: ``z = 0.18215 E([2 rgb - 1, 2 d - 1])``. Then classic SDS with CFG and
view-dependent prompts, as :class:`~threestudio_like.guidance.stable_diffusion.StableDiffusionGuidance`
(DreamFusion): ``grad = w(t) (eps_hat(z_t; y, t) - eps)``. The gradient reaches the geometry
through the depth channel (depth and opacity are differentiable renders) as well as through colour.

**Sampling** (``--sample``): DDIM from noise with CFG ``eps_u + s (eps_c - eps_u)`` (the
pipeline's; 49 steps, scale 5 by default), decoded, and returned as
:class:`~threestudio_like.sampling.rgbd.RGBDSamples` so that the sampler writes the RGB image,
the 16-bit depth PNG and a coloured preview exactly as ``StableDiffusionLDM3DPipeline`` does.

Weights (:data:`LDM3D_WEIGHTS`): ``Intel/ldm3d-4c`` (default), ``Intel/ldm3d``, ``Intel/ldm3d-pano``
(Hugging Face diffusers repos), a local diffusers folder of one of them, or ``tiny-random``
(toy UNet, toy ``tiny_vae_channels``-channel autoencoder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras
from threestudio_like.errors import ConfigError, FieldError
from threestudio_like.guidance.base import classifier_free
from threestudio_like.guidance.latent_diffusion import check_unet
from threestudio_like.guidance.stable_diffusion import StableDiffusionGuidance
from threestudio_like.models.architectures import TINY_CONTEXT_DIM, TINY_LDM3D_UNET
from threestudio_like.models.builders import tiny_unet, tiny_vae
from threestudio_like.models.loader import Part, WeightsRecipe, register_weights
from threestudio_like.models.rgbd import (
    RGBD_CHANNELS,
    axis_cosines,
    ldm3d_depth,
    vae_pixels,
)
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings
from threestudio_like.sampling.rgbd import RGBDSamples

LDM3D_4C = "Intel/ldm3d-4c"
LDM3D_6C = "Intel/ldm3d"
LDM3D_PANO = "Intel/ldm3d-pano"
CLIP_VIT_L_WIDTH = 768


def _check_ldm3d(parts: Dict[str, nn.Module], where: str) -> None:
    """Clear errors for weights of another model: a plain 3-channel SD autoencoder, or a UNet
    that does not take SD1.x's 4-channel latent and 768-d CLIP ViT-L/14 text."""
    vae_channels = parts["vae"].config.in_channels
    if vae_channels not in RGBD_CHANNELS or parts["vae"].config.out_channels != vae_channels:
        raise ConfigError(
            f"{where} is not an LDM3D model: its autoencoder has {vae_channels} input channels, not 4 "
            f"(RGB + depth: {LDM3D_4C}, {LDM3D_PANO}) or 6 (RGB + RGB-like depth: {LDM3D_6C})."
        )
    width = parts["unet"].config.cross_attention_dim
    context = width if width == TINY_CONTEXT_DIM else CLIP_VIT_L_WIDTH
    check_unet(parts["unet"], where, "LDM3D", 4, ("CLIP ViT-L/14 text", context), "(SD1.x's latent)")


LDM3D_WEIGHTS = register_weights(WeightsRecipe(
    "ldm3d", "LDM3D",
    (Part("unet", "diffusers.UNet2DConditionModel", lambda options: tiny_unet(TINY_LDM3D_UNET)),
     Part("vae", "diffusers.AutoencoderKL", lambda options: tiny_vae(channels=options["vae_channels"]))),
    check=_check_ldm3d,
    default_options={"vae_channels": 4},
    pipeline_class="StableDiffusionLDM3DPipeline",
))
"""LDM3D's UNet and RGBD autoencoder (published as diffusers repos only; the text encoder and
tokenizer come through the prompt processor from the same repo)."""


@register("ldm3d-guidance")
class LDM3DGuidance(StableDiffusionGuidance):
    """RGBD SDS with LDM3D: colour and depth renders encoded together, CFG, view-dependent prompts."""

    @dataclass
    class Config(StableDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = LDM3D_4C
        """Intel/ldm3d-4c | Intel/ldm3d | Intel/ldm3d-pano | local diffusers folder | tiny-random."""
        depth_convention: Literal["inverse", "metric"] = "inverse"
        """How renders become LDM3D depth: inverse (DPT's relative inverse depth, background far: the
        model's convention) | metric (wrong on purpose, for comparisons)."""
        tiny_vae_channels: int = 4
        """tiny-random only: pixel channels of the toy autoencoder (4 as ldm3d-4c, 6 as ldm3d)."""

        def validate(self) -> None:
            if self.tiny_vae_channels not in RGBD_CHANNELS:
                raise FieldError("tiny_vae_channels", f"must be 4 or 6, got {self.tiny_vae_channels}")

    cfg: Config
    weights = LDM3D_WEIGHTS
    sample_defaults = {"steps": 49, "guidance_scale": 5.0, "eta": 0.0, "prompt_suffix": "",
                       "negative_prompt": None, "height": None, "width": None}
    """``StableDiffusionLDM3DPipeline``'s defaults: 49 steps, CFG 5, the model's own image size."""

    def weights_options(self) -> Dict[str, Any]:
        return {"vae_channels": self.cfg.tiny_vae_channels}

    @property
    def vae_channels(self) -> int:
        """Pixel channels of the autoencoder: 4 (RGB + depth) or 6 (RGB + RGB-like depth)."""
        return int(self.vae.config.in_channels)

    def render_input(self, out: Dict[str, Tensor]) -> Tensor:
        """``[B, H, W, 5]``: colour, rendered depth (expected ray distance) and opacity."""
        return torch.cat([out["comp_rgb"], out["depth"], out["opacity"]], -1)

    def rgbd_image(self, renders: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Renders ``[B, H, W, 5]`` (:meth:`render_input`) -> RGB + LDM3D depth ``[B, H, W, 4]`` in [0, 1]."""
        if renders.shape[-1] != 5:
            raise ConfigError(f"{type(self).__name__} takes colour, depth and opacity renders ([B, H, W, 5], "
                              f"render_input(out)); got {renders.shape[-1]} channels.")
        rgb, depth, opacity = renders[..., :3], renders[..., 3:4], renders[..., 4:5]
        cosine = None
        if cameras is not None and cameras.fovy is not None:
            cosine = axis_cosines(cameras.fovy, depth.shape[1], depth.shape[2]).to(depth)
        return torch.cat([rgb, ldm3d_depth(depth, opacity, cosine, self.cfg.depth_convention)], -1)

    def rgbd_latents(self, renders: Tensor, cameras: Optional[Cameras] = None) -> Tensor:
        """Renders ``[B, H, W, 5]`` -> scaled latents ``[B, 4, S/8, S/8]`` through the RGBD autoencoder."""
        self.ensure_device(renders.device)
        rgbd = self.resize_renders(self.rgbd_image(renders, cameras)).permute(0, 2, 3, 1)
        return self.encode_pixels(vae_pixels(rgbd, self.vae_channels))

    def guide(self, rgb: Tensor, condition: PromptEmbeddings, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """``loss_sds`` for colour + depth + opacity renders ``[B, H, W, 5]``."""
        if rgb_as_latents:
            raise ConfigError("ldm3d-guidance encodes RGB and depth renders (rgb_as_latents=False).")
        latents = self.rgbd_latents(rgb, cameras)
        return self.distil(latents, self.text_predictor(condition, cameras, rgb.shape[0]))

    # -- sampling (python launch.py --sample) -------------------------------------------------
    @torch.no_grad()
    def sample(self, condition: PromptEmbeddings, settings: Any,
               generator: Optional[torch.Generator] = None) -> RGBDSamples:
        """One RGBD image of the prompt by DDIM (``settings.height`` x ``settings.width``, default
        ``image_size`` square), decoded to the autoencoder's raw pixels."""
        height = settings.height or self.cfg.image_size
        width = settings.width or self.cfg.image_size
        text = condition.get_text_embeddings(1, device=self.device, dtype=self.weights_dtype)
        predict = classifier_free(lambda x_t, t: tuple(self.unet_branches(x_t, t, self.text_branches(text))),
                                  settings.guidance_scale)
        latents = self.sample_images(lambda x_t, t: predict(x_t, t)[0], 1, settings.steps, generator,
                                     settings.eta, size=(height, width), decode=False)
        z = (latents / self.vae.config.scaling_factor).to(self.device, self.weights_dtype)
        return RGBDSamples(self.vae.decode(z).sample.float().cpu())
