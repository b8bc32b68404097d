"""Stable Diffusion 2.1 (base) as a guidance: DreamFusion's classic SDS, the Janus-prone baseline.

Threestudio's ``stable-diffusion-guidance`` defaults: 512 px renders encoded by the VAE, CFG 100,
``t ~ U[0.02, 0.98]``, ``w(t) = 1 - abar``; the text condition is view-dependent ("…, front view"
by the camera's azimuth and elevation: :mod:`threestudio_like.prompt.view_dependent`), with
Perp-Neg as an option (``use_perp_neg``). Weights (:data:`SD_WEIGHTS`): a Hugging Face id /
diffusers folder (SD2.1), an original ldm checkpoint (converted on load), or ``tiny-random``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras
from threestudio_like.errors import ConfigError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.base import NoisePredictor, classifier_free
from threestudio_like.guidance.latent_diffusion import TextPriorGuidance, UNetBranch, unet_and_vae
from threestudio_like.models.architectures import TINY_SD21_UNET
from threestudio_like.models.builders import parts_from_ldm_checkpoint
from threestudio_like.models.hub import SD21_BASE
from threestudio_like.models.loader import WeightsRecipe, register_weights
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings
from threestudio_like.prompt.view_dependent import ViewDependentEmbeddings

SD_WEIGHTS = register_weights(WeightsRecipe(
    "stable-diffusion", "Stable Diffusion 2.1", unet_and_vae(TINY_SD21_UNET),
    from_checkpoint=lambda state, options: parts_from_ldm_checkpoint(state),
    pipeline_class="StableDiffusionPipeline",
))


@register("stable-diffusion-guidance")
class StableDiffusionGuidance(TextPriorGuidance):
    """Classic SDS with SD2.1, view-dependent prompts and optional Perp-Neg."""

    @dataclass
    class Config(TextPriorGuidance.Config):
        view_dependent_prompting: bool = True
        """Condition each view on its direction's prompt (needs view-dependent embeddings)."""
        use_perp_neg: bool = False
        """Perp-Neg: negative view prompts, perpendicular to the positive direction."""
        pretrained_model_name_or_path: str = SD21_BASE
        """SD2.1-base (the live mirror; the removed stabilityai id is tried after it): Hugging Face id,
        diffusers folder, ldm checkpoint, or tiny-random."""
        guidance_scale: float = 100.0
        """DreamFusion's large CFG scale."""

    cfg: Config
    weights = SD_WEIGHTS

    def guide(self, rgb: Tensor, condition: PromptEmbeddings, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """``loss_sds`` for renders ``[B, H, W, 3]``, each view prompted by its camera's direction."""
        latents = self.to_latents(rgb, rgb_as_latents)
        return self.distil(latents, self.text_predictor(condition, cameras, rgb.shape[0]))

    def text_predictor(self, condition: PromptEmbeddings, cameras: Cameras, batch: int) -> NoisePredictor:
        """``predict(x_t, t) -> (guided eps, conditional eps)`` for ``batch`` views: CFG over the
        (view-dependent) prompt, or Perp-Neg with ``use_perp_neg``."""
        view_dependent = isinstance(condition, ViewDependentEmbeddings)
        scale = self.cfg.guidance_scale
        if self.cfg.use_perp_neg:
            if not view_dependent:
                raise ConfigError("use_perp_neg needs system.prompt_processor_type: view-dependent-prompt-processor.")
            text, weights = condition.get_text_embeddings_perp_neg(
                cameras.elevation, cameras.azimuth, self.device, self.weights_dtype)
            pos, unc, negs = text[:batch], text[batch:2 * batch], text[2 * batch:]
            branches = [UNetBranch(pos), UNetBranch(unc), UNetBranch(negs[0::2]), UNetBranch(negs[1::2])]

            def predict(x_t: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
                eps_pos, eps_unc, eps_neg0, eps_neg1 = self.unet_branches(x_t, t, branches)
                negatives = torch.stack([eps_neg0, eps_neg1], 1)
                return D.perp_neg_guidance(eps_unc, eps_pos, negatives, weights.to(eps_pos), scale), eps_pos

            return predict
        if self.cfg.view_dependent_prompting and view_dependent:
            text = condition.get_text_embeddings_vd(cameras.elevation, cameras.azimuth, self.device, self.weights_dtype)
        else:
            text = condition.get_text_embeddings(batch, device=self.device, dtype=self.weights_dtype)
        branches = self.text_branches(text)
        return classifier_free(lambda x_t, t: tuple(self.unet_branches(x_t, t, branches)), scale)
