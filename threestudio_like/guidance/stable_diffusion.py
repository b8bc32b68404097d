"""Stable Diffusion 2.1 (base) as a guidance: DreamFusion's classic SDS, the Janus-prone baseline.

Threestudio's ``stable-diffusion-guidance`` defaults: 512 px renders encoded by the VAE, CFG 100,
``t ~ U[0.02, 0.98]``, ``w(t) = 1 - abar``; the text condition is view-dependent ("…, front view"
by the camera's azimuth and elevation: :mod:`threestudio_like.prompt.view_dependent`), with
Perp-Neg as an option (``use_perp_neg``). Weights: a Hugging Face id / diffusers folder (SD2.1),
an original ldm checkpoint (converted on load), or ``tiny-random``; missing weights give the
shared clear error (:func:`threestudio_like.guidance.weights.resolve_weights`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import register
from threestudio_like.config import ConfigError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance import ldm_convert as LC
from threestudio_like.guidance.latent_diffusion import (
    LatentDiffusionGuidance,
    load_diffusers_component,
    move,
    quiet_progress_bars,
    tiny_unet,
    tiny_vae,
    unet_from_ldm,
    vae_from_ldm,
)
from threestudio_like.guidance.weights import TINY_RANDOM, load_state_dict_file, resolve_weights

# SD2.1-base UNet in ldm terms; the toy version has the tiny text encoder's width (32).
SD21_UNET: Dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "model_channels": 320, "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2, "attention_levels": [True, True, True, False], "num_head_channels": 64,
    "context_dim": 1024, "use_linear_in_transformer": True, "transformer_depth": 1,
}
TINY_SD21_UNET: Dict[str, Any] = {
    **SD21_UNET, "model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
    "attention_levels": [True, True, False], "num_head_channels": 8, "context_dim": 32,
}


def load_sd_networks(name_or_path: str, dtype: torch.dtype = torch.float32) -> Tuple[nn.Module, nn.Module]:
    """``(unet, vae)`` of Stable Diffusion from any weights source."""
    quiet_progress_bars()
    source = resolve_weights(name_or_path, "Stable Diffusion 2.1", subfolders=("unet", "vae"),
                             key="system.guidance.pretrained_model_name_or_path")
    if source.kind == TINY_RANDOM:
        unet, vae = tiny_unet(TINY_SD21_UNET, sample_size=8), tiny_vae()
    elif source.kind == "diffusers":
        unet = load_diffusers_component(source, "unet", "UNet2DConditionModel", dtype)
        vae = load_diffusers_component(source, "vae", "AutoencoderKL", dtype)
    else:
        unet_sd, vae_sd, _ = LC.split_ldm_checkpoint(load_state_dict_file(source.path))
        if not unet_sd or not vae_sd:
            raise LC.ConversionError(f"{source.path} is not an ldm checkpoint with UNet and VAE weights.")
        unet, vae = unet_from_ldm(unet_sd), vae_from_ldm(vae_sd)
    return move(unet, dtype=dtype), move(vae, dtype=dtype)


@register("stable-diffusion-guidance")
class StableDiffusionGuidance(LatentDiffusionGuidance):
    """Classic SDS with SD2.1, view-dependent prompts and optional Perp-Neg."""

    @dataclass
    class Config(LatentDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        """SD2.1-base: Hugging Face id, diffusers folder, ldm checkpoint, or tiny-random."""
        guidance_scale: float = 100.0
        """DreamFusion's large CFG scale."""
        image_size: int = 512
        use_perp_neg: bool = False
        """Perp-Neg: negative view prompts, perpendicular to the positive direction."""
        view_dependent_prompting: bool = True
        """Condition each view on its direction's prompt (needs view-dependent embeddings)."""

    cfg: Config

    def load_networks(self) -> None:
        self.unet, self.vae = load_sd_networks(self.cfg.pretrained_model_name_or_path, self.weights_dtype)

    def networks(self) -> Dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae}

    def _unet(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        reps = text.shape[0] // x_t.shape[0]
        return self.unet(
            x_t.repeat(reps, 1, 1, 1).to(self.weights_dtype), t.repeat(reps).to(self.device),
            encoder_hidden_states=text.to(self.device, self.weights_dtype),
        ).sample.float()

    def __call__(self, rgb: Tensor, condition: Any, *, elevation: Tensor = None, azimuth: Tensor = None,
                 rgb_as_latents: bool = False, **kwargs: Any) -> Dict[str, Tensor]:
        """``loss_sds`` for renders ``[B, H, W, 3]`` at cameras ``elevation``/``azimuth`` (deg)."""
        if not hasattr(condition, "get_text_embeddings"):
            raise ConfigError("stable-diffusion-guidance needs text embeddings: set system.prompt_processor_type.")
        batch = rgb.shape[0]
        self.ensure_device(rgb.device)
        latents = self.latents_from_rgb_as_latents(rgb) if rgb_as_latents else self.encode_images(rgb)
        vd = self.cfg.view_dependent_prompting and hasattr(condition, "get_text_embeddings_vd") and azimuth is not None
        if self.cfg.use_perp_neg:
            if not hasattr(condition, "get_text_embeddings_perp_neg") or azimuth is None:
                raise ConfigError("use_perp_neg needs system.prompt_processor_type: view-dependent-prompt-processor.")
            text, weights = condition.get_text_embeddings_perp_neg(elevation, azimuth, self.device, self.weights_dtype)

            def predict(x_t: Tensor, t: Tensor) -> Tensor:
                eps = self._unet(x_t, t, text)
                pos, unc, negs = eps[:batch], eps[batch:2 * batch], eps[2 * batch:]
                negs = torch.stack([negs[0::2], negs[1::2]], 1)  # view-major pairs -> [B, 2, ...]
                return D.perp_neg_guidance(unc, pos, negs, weights.to(eps), self.cfg.guidance_scale)
        else:
            if vd:
                text = condition.get_text_embeddings_vd(elevation, azimuth, self.device, self.weights_dtype)
            else:
                text = condition.get_text_embeddings(batch, device=self.device, dtype=self.weights_dtype)

            def predict(x_t: Tensor, t: Tensor) -> Tensor:
                eps_cond, eps_uncond = self._unet(x_t, t, text).chunk(2)
                return D.classifier_free_guidance(eps_uncond, eps_cond, self.cfg.guidance_scale)

        return self.sds(latents, predict)
