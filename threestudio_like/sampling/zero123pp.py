"""Zero123++ six-view sampling: Euler-ancestral with "trailing" timesteps, as its README runs it.

The pipeline swaps in ``EulerAncestralDiscreteScheduler(timestep_spacing="trailing")`` on the
model's own schedule (linear betas 0.00085..0.012, v-prediction): 28 steps, CFG 4 by default.
The sampler works in the Euler (variance-exploding) form ``x = z + s eps``; the network sees
``x / sqrt(1 + s^2)`` (= the DDPM ``x_t``), and the reference latent is noised to the same level
(:meth:`~threestudio_like.guidance.zero123pp.Zero123PlusModel.predict_v`).

:func:`sample_six_views` is the public entry for other modules (HawkI's guidance image): one
image in, the six views out with their cameras.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from threestudio_like.errors import at_least
from threestudio_like.guidance.zero123pp import (GRID_COLS, GRID_ROWS, Zero123PlusModel, Zero123PlusReference,
                                                 untile_views)

DEFAULT_STEPS = 28
DEFAULT_GUIDANCE_SCALE = 4.0


def euler_ancestral_scheduler(num_train_timesteps: int = 1000) -> Any:
    """Zero123++'s sampler: Euler-ancestral, linear betas, v-prediction, trailing timesteps."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
        prediction_type="v_prediction", timestep_spacing="trailing",
    )


@torch.no_grad()
def sample_grid_latents(model: Zero123PlusModel, reference: Zero123PlusReference, *, steps: int = DEFAULT_STEPS,
                        guidance_scale: float = DEFAULT_GUIDANCE_SCALE, generator: Optional[torch.Generator] = None,
                        n_grids: int = 1) -> Tensor:
    """Grid latents ``[n, 4, 3T/8, 2T/8]`` sampled for ``reference``; every random draw (initial
    noise, reference noise, ancestral noise) comes from ``generator`` (CPU)."""
    at_least("steps", steps, 1)
    scheduler = euler_ancestral_scheduler()
    scheduler.set_timesteps(steps)
    side = model.tile_size // 8
    shape = (n_grids, 4, GRID_ROWS * side, GRID_COLS * side)
    latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(latents, t)
        v, _ = model.guided_v(x_in, t.reshape(1).expand(n_grids), reference, guidance_scale, generator)
        latents = scheduler.step(v.cpu(), t, latents, generator=generator).prev_sample
    return latents


@torch.no_grad()
def sample_grid(model: Zero123PlusModel, reference: Zero123PlusReference, *, steps: int = DEFAULT_STEPS,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE, generator: Optional[torch.Generator] = None) -> Tensor:
    """One decoded six-view grid ``[1, 3T, 2T, 3]`` in [0, 1] (960 x 640 px at full size)."""
    latents = sample_grid_latents(model, reference, steps=steps, guidance_scale=guidance_scale, generator=generator)
    return model.decode_grid(latents.to(model.device)).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def sample_six_views(model: Zero123PlusModel, image: Tensor, *, steps: int = DEFAULT_STEPS,
                     guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                     generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Zero123++'s six views of the object in ``image``.

    ``image`` ``[3, H, W]`` in [0, 1], square, the object on a gray (0.5) background. Returns
    ``(views, azimuths_deg, elevations_deg)``: ``views`` ``[6, 3, T, T]`` in [0, 1] (T = 320 for
    the real model, CPU), azimuths ``[6]`` relative to the input view (our convention:
    counter-clockwise seen from above), elevations ``[6]`` absolute; the field of view is
    ``model.layout.fovy_deg`` (None: the input's, v1.1). Deterministic for a seeded ``generator``.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample_six_views takes one RGB image [3, H, W] in [0, 1], got {tuple(image.shape)}.")
    reference = model.encode_reference(image, generator)
    grid = sample_grid(model, reference, steps=steps, guidance_scale=guidance_scale, generator=generator)
    views = untile_views(grid.permute(0, 3, 1, 2))
    layout = model.layout
    return (views, torch.tensor(layout.azimuths_deg), torch.tensor(layout.elevations_deg))
