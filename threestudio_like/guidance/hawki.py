"""HawkI (Kothandaraman et al., arXiv 2311.15478): an aerial view of a scene from one photo.

Stable Diffusion 2.1-base is personalised to the photo at test time (a text embedding, then a
rank-4 LoRA on the UNet's attention), then to a guidance image of the scene from above (HawkI's
homography pseudo-aerial image, or a novel-view prior's view), and sampled with DDIM for
"aerial view, <prompt>" with mutual-information guidance towards the photo's latent. The steps
live in :mod:`threestudio_like.hawki`; this module holds the settings and is what a recipe names
(``guidance_type: hawki-guidance``). It is a 2D pipeline: ``--sample`` runs it
(:meth:`HawkIGuidance.sample_pipeline`); as a score-distillation guidance it is plain SD2.1 SDS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from threestudio_like import register
from threestudio_like.errors import FieldError, at_least, in_range
from threestudio_like.guidance.stable_diffusion import StableDiffusionGuidance

GuidanceImage = Literal["ipm", "zero123", "zero123pp"]
TextEmbeddingChoice = Literal["interpolated", "aerial"]


@register("hawki-guidance")
class HawkIGuidance(StableDiffusionGuidance):
    """SD2.1-base with HawkI's personalisation and MI-guided aerial sampling (``--sample``)."""

    @dataclass
    class Config(StableDiffusionGuidance.Config):
        guidance_scale: float = 7.5
        """Classifier-free guidance scale while sampling (HawkI: 7.5; uncond = the negative prompt)."""
        half_precision_weights: bool = False
        """fp16 weights on CUDA; off by default: the stages train LoRA and embeddings in fp32."""
        image_path: str = ""
        """The input photo (``image=``): RGB or RGBA (alpha is composited on white)."""
        elevation_deg: float = 60.0
        """Requested elevation of the aerial view (90 = straight down); picks the novel view."""
        azimuth_deg: float = 0.0
        """Requested azimuth relative to the photo's viewpoint."""
        input_elevation_deg: float = 0.0
        """Elevation at which the photo was taken (0 = ground level)."""
        aerial_prefix: str = "aerial view, "
        """Prepended to the prompt for e_aerial (never optimised)."""
        guidance_image: GuidanceImage = "ipm"
        """Source of the guidance image of stages c-d: ipm (HawkI's homography) | zero123 | zero123pp."""
        embedding_steps: int = 1000
        """Stage a: steps optimising the text embedding on the photo (0: skip)."""
        embedding_lr: float = 1e-3
        """Stage a: Adam learning rate."""
        lora_steps: int = 500
        """Stage b: steps training the LoRA on the photo, embedding frozen (0: skip)."""
        lora_lr: float = 2e-4
        """Stage b: Adam learning rate."""
        guidance_embedding_steps: int = 500
        """Stage c: steps optimising e_hom on the guidance image, from stage a's embedding (0: skip)."""
        guidance_embedding_lr: float = 1e-3
        """Stage c: Adam learning rate."""
        guidance_lora_steps: int = 250
        """Stage d: steps training the LoRA further on the guidance image with e_hom (0: skip)."""
        guidance_lora_lr: float = 2e-4
        """Stage d: Adam learning rate."""
        lora_rank: int = 4
        """LoRA rank of every attention projection."""
        ddim_steps: int = 50
        """DDIM steps of the aerial sample."""
        eta: float = 0.0
        """DDIM eta of the aerial sample."""
        text_embedding: TextEmbeddingChoice = "interpolated"
        """interpolated: alpha e_aerial + (1 - alpha) e_hom (the paper); aerial: e_aerial only (what
        the released code's loop actually uses)."""
        alpha: float = 0.1
        """Interpolation weight of e_aerial (the released code passes 0.1)."""
        mi_scale: float = 1e-5
        """MI guidance: RMS latent step per DDIM step along grad NMI (upstream's Adam lr 1e-5; 0: off)."""
        mi_bins: int = 16
        """MI estimator: soft-histogram bins over the normalised value range."""
        mi_sigma: float = 0.15
        """MI estimator: Parzen kernel width in bin widths (upstream 0.1)."""
        mi_normalisation: Literal["minmax", "fixed"] = "minmax"
        """How latent values are mapped into the bins: per-channel min-max, or [-r, r] clamped."""
        mi_fixed_range: float = 4.0
        """r of mi_normalisation=fixed (SD latents lie mostly in [-4, 4])."""
        mi_through_unet: bool = False
        """Differentiate x0(z_t) through the UNet's noise prediction too (costly); else through
        x0 = (z_t - sigma eps) / alpha with eps held fixed."""
        zero123_model_name_or_path: str = "cvlab/zero123-weights/105000.ckpt"
        """guidance_image=zero123: the Zero-1-to-3 weights (as zero123 recipes take them)."""
        zero123_image_size: int = 256
        """guidance_image=zero123: its working resolution."""
        zero123_steps: int = 50
        """guidance_image=zero123: DDIM steps of the novel view."""
        zero123_guidance_scale: float = 3.0
        """guidance_image=zero123: CFG scale of the novel view."""
        zero123pp_model_name_or_path: str = "sudo-ai/zero123plus-v1.2"
        """guidance_image=zero123pp: the Zero123++ weights (a diffusers folder or hub id; CC-BY-NC 4.0)."""
        zero123pp_tile_size: int = 320
        """guidance_image=zero123pp: side of each of its six views (320 for the released weights)."""
        zero123pp_steps: int = 28
        """guidance_image=zero123pp: Euler-ancestral steps of the six views."""
        zero123pp_guidance_scale: float = 4.0
        """guidance_image=zero123pp: CFG scale of the six views."""
        use_cache: bool = True
        """Reuse saved stage results (safetensors) of this experiment's trials when their inputs match."""

        def validate(self) -> None:
            if not str(self.image_path or "").strip():
                raise FieldError("image_path", "is empty: pass the photo with image=path/to/photo.png")
            for name in ("embedding_steps", "lora_steps", "guidance_embedding_steps", "guidance_lora_steps"):
                at_least(name, getattr(self, name), 0)
            for name in ("embedding_lr", "lora_lr", "guidance_embedding_lr", "guidance_lora_lr"):
                if not getattr(self, name) > 0:
                    raise FieldError(name, f"must be positive, got {getattr(self, name)}")
            at_least("lora_rank", self.lora_rank, 1)
            at_least("ddim_steps", self.ddim_steps, 1)
            at_least("mi_bins", self.mi_bins, 2)
            in_range("alpha", self.alpha, 0.0, 1.0)
            in_range("elevation_deg", self.elevation_deg, -90.0, 90.0)
            in_range("input_elevation_deg", self.input_elevation_deg, -90.0, 90.0)
            if self.mi_scale < 0 or self.mi_sigma <= 0 or self.mi_fixed_range <= 0:
                raise FieldError("mi_scale", "mi_scale must be >= 0, mi_sigma and mi_fixed_range > 0")

    cfg: Config

    @classmethod
    def sample_pipeline(cls, cfg: Any, status: Optional[Any] = None) -> str:
        """``--sample``: the whole HawkI pipeline for experiment config ``cfg``; returns the sheet's path."""
        from threestudio_like.hawki.pipeline import run_hawki

        return run_hawki(cfg, status)
