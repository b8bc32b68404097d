"""Zero123++ as a 3D prior (``zero123pp-guidance``): score distillation on its six-view grid.

Each step the system renders the object from the six fixed cameras of the model's layout
relative to the input view (:meth:`Zero123PlusGuidance.rig`: azimuths input + 30, 90, ..., 330;
the version's absolute elevations and field of view). The guidance tiles each six renders into
one 3 x 2 grid as the model does, encodes it like the model's own latents,
``z = scale_latents(0.18215 E(scale_image(2x - 1)))``, and applies the configured update rule of
:mod:`~threestudio_like.guidance.distillation` (SDS by default, ``t`` shared by the whole grid)
to the noise prediction ``eps = alpha_t v + sigma_t z_t`` of the classifier-free-guided
v-prediction (conditional: the input image's global context and reference latent; unconditional:
the empty prompt and the all-zero image's latent).

**Random-view coverage.** Zero123++'s views are defined relative to the input view, so the rig
cannot be rotated by a random azimuth: a rotated rig would be scored against views the model
does not predict for that input. The six views already circle the object every 60 degrees at two
elevations, and the input view (azimuth 0) is supervised by the RGB and mask losses; what no
term sees is the top and bottom, which the recipe's opacity and normal regularisers keep tidy.
The rig is therefore fixed; combining it with a Zero-1-to-3 prior for other views is left to a
later recipe (a system with two guidances does not exist yet).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras, spherical_coordinates
from threestudio_like.errors import ConfigError, FieldError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.latent_diffusion import LatentDiffusionGuidance
from threestudio_like.guidance.zero123pp import (DEFAULT_REPO, LAYOUTS, N_VIEWS, TILE_SIZE, ZERO123PP_WEIGHTS,
                                                 Zero123PlusModel, Zero123PlusReference, layout_for, tile_views,
                                                 version_of)
from threestudio_like.sampling.zero123pp import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, sample_grid


@dataclass
class Zero123PlusCondition:
    """The input view: the model's conditioning and where its camera is."""

    reference: Zero123PlusReference
    """Both CFG branches' context and reference latents."""
    azimuth_deg: float
    """The input camera's azimuth (our convention)."""
    elevation_deg: float
    """The input camera's elevation."""
    distance: float
    """The input camera's distance from the origin."""


@register("zero123pp-guidance")
class Zero123PlusGuidance(LatentDiffusionGuidance):
    """Zero123++ six-view prior: renders from the fixed rig, tiled 3 x 2, scored by SDS."""

    @dataclass
    class Config(LatentDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = DEFAULT_REPO
        """Zero123++ weights: sudo-ai/zero123plus-v1.2 or -v1.1, a local diffusers folder, tiny-random."""
        version: Optional[str] = None
        """v1.2 | v1.1 (camera layout); null: the one the weights' name implies (v1.1 if it says so)."""
        image_size: int = TILE_SIZE
        """Pixels of one tile (and of the conditioning image); the grid is 3 x 2 tiles."""
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE
        """CFG scale v_u + s (v_c - v_u) (Zero123++'s default 4)."""
        shared_timestep: bool = True
        """One timestep per step (each grid is one latent anyway)."""
        camera_distance: Optional[float] = None
        """Distance of the six rig cameras; null: the input camera's."""

        def validate(self) -> None:
            if self.version is not None and self.version not in LAYOUTS:
                raise FieldError("version", f"must be one of {', '.join(LAYOUTS)} or null, got {self.version!r}")
            if self.camera_distance is not None and self.camera_distance <= 0:
                raise FieldError("camera_distance", f"must be > 0, got {self.camera_distance}")

    cfg: Config
    weights = ZERO123PP_WEIGHTS
    condition_type = Zero123PlusCondition
    condition_hint = ("Use data_type: single-image-datamodule with image=object.png and system_type: "
                      "zero123pp-system (configs/zero123pp.yaml).")
    conditioned_on_images = True
    sample_defaults = {"steps": DEFAULT_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE}
    """``--sample``: Euler-ancestral (trailing), 28 steps, CFG 4: the six-view 3 x 2 grid."""

    def configure(self) -> None:
        super().configure()
        self.alphas_cumprod = D.linear_alphas_cumprod(self.cfg.num_train_timesteps).float()
        version = self.cfg.version or version_of(self.cfg.pretrained_model_name_or_path)
        self.model = Zero123PlusModel(self.networks(), layout_for(version).version, self.cfg.image_size)

    @property
    def layout(self):
        return self.model.layout

    def encode_images(self, rgb: Tensor) -> Tensor:
        """Renders ``[6k, H, W, 3]`` in [0, 1] -> grid latents ``[k, 4, 3T/8, 2T/8]`` (differentiable)."""
        return self.model.encode_grid(tile_views(self.resize_renders(rgb)))

    def decode_latents(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Grid latents -> grids ``[k, 3T, 2T, 3]`` in [0, 1]."""
        return self.model.decode_grid(latents).permute(0, 2, 3, 1)

    # -- the input view and the rig ------------------------------------------------------------
    @torch.no_grad()
    def prepare_condition(self, images: Tensor, c2w: Tensor) -> Zero123PlusCondition:
        """The condition of one input image ``[1, H, W, 3]`` in [0, 1] (gray background: set
        ``data.condition_background``) taken by the camera ``c2w`` ``[1, 4, 4]``."""
        if images.shape[0] != 1 or c2w.reshape(-1, 4, 4).shape[0] != 1:
            raise ConfigError(f"Zero123++ conditions on one image, got {images.shape[0]}: pass image=....")
        polar, azimuth, radius = spherical_coordinates(c2w.reshape(4, 4)[:3, 3].float().cpu())
        self.ensure_device(images.device)
        reference = self.model.encode_reference(images[0].permute(2, 0, 1))
        return Zero123PlusCondition(reference, math.degrees(float(azimuth)), 90.0 - math.degrees(float(polar)),
                                    float(radius))

    def rig(self, condition: Zero123PlusCondition, input_fovy_deg: float) -> Dict[str, Tensor]:
        """The six cameras ``{elevation, azimuth, camera_distances, fovy}`` (``[6]`` each, degrees)
        of the layout around the input view of ``condition``."""
        layout = self.layout
        distance = self.cfg.camera_distance or condition.distance
        fovy = layout.fovy_deg if layout.fovy_deg is not None else float(input_fovy_deg)
        return {
            "elevation": torch.tensor(layout.elevations_deg),
            "azimuth": torch.tensor([condition.azimuth_deg + a for a in layout.azimuths_deg]),
            "camera_distances": torch.full((N_VIEWS,), float(distance)),
            "fovy": torch.full((N_VIEWS,), float(fovy)),
        }

    # -- the call -----------------------------------------------------------------------------
    def guide(self, rgb: Tensor, condition: Zero123PlusCondition, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """The update rule's loss for renders ``[6k, H, W, 3]`` from the rig (k grids)."""
        if rgb_as_latents:
            raise ConfigError("zero123pp-guidance scores RGB renders of the six views, not latent renders.")
        if rgb.shape[0] % N_VIEWS:
            raise ConfigError(f"zero123pp-guidance takes the six rig views per object, got a batch of {rgb.shape[0]} "
                              f"(use system_type: zero123pp-system).")
        latents = self.to_latents(rgb, False)
        reference = condition.reference
        return self.distil(latents, lambda x_t, t: self.model.guided_eps(x_t, t, reference, self.cfg.guidance_scale))

    # -- sampling (python launch.py --sample) -------------------------------------------------
    def sample(self, condition: Zero123PlusCondition, settings: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """The six-view grid ``[1, 3T, 2T, 3]`` (960 x 640 px at full size)."""
        return sample_grid(self.model, condition.reference, steps=int(settings.steps),
                           guidance_scale=float(settings.guidance_scale), generator=generator)

