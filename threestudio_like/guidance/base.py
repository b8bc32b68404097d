"""Base class of every guidance: timestep schedule, weighting and the SDS procedure.

A concrete guidance turns renders into the space its model works in (latents or pixels) and
predicts the noise (with classifier-free guidance); everything else — sampling ``t``, adding
noise, weighting, clipping, and the loss whose gradient is the update — happens here, through
:mod:`threestudio_like.guidance.distillation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from threestudio_like.base import BaseObject
from threestudio_like.config import schedule_value
from threestudio_like.guidance import distillation as D


class BaseGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        guidance_scale: float = 1.0
        """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
        min_step_percent: Any = 0.02
        """Lowest timestep as a fraction of the schedule (may be a schedule)."""
        max_step_percent: Any = 0.98
        """Highest timestep as a fraction of the schedule (may be a schedule)."""
        weighting_strategy: str = "sds"
        """w(t): sds (1 - abar), uniform, fantasia3d."""
        grad_clip: Any = None
        """Clamp the per-element SDS gradient to +-value (may be a schedule); None: off."""
        shared_timestep: bool = False
        """Draw one timestep for the whole batch (multi-view priors) instead of one per view."""
        num_train_timesteps: int = 1000

    cfg: Config

    def configure(self) -> None:
        self.alphas_cumprod = D.scaled_linear_alphas_cumprod(self.cfg.num_train_timesteps).float()
        self.global_step = 0
        self.update_step(0, 0)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        n = self.cfg.num_train_timesteps
        self.min_step = int(n * schedule_value(self.cfg.min_step_percent, epoch, global_step))
        self.max_step = int(n * schedule_value(self.cfg.max_step_percent, epoch, global_step))
        self.max_step = max(self.max_step, self.min_step)
        clip = self.cfg.grad_clip
        self.grad_clip_value = None if clip is None else schedule_value(clip, epoch, global_step)

    def sds(
        self,
        latents: Tensor,
        predict_noise: Callable[[Tensor, Tensor], Tensor],
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Tensor]:
        """Score distillation on ``latents`` (``[B, C, H, W]``, requires grad).

        ``predict_noise(x_t, t)`` returns the guided noise prediction; it runs without grad.
        """
        batch = latents.shape[0]
        t = D.sample_timesteps(
            batch, self.min_step, self.max_step, self.cfg.shared_timestep,
            device=latents.device, generator=generator,
        )
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        with torch.no_grad():
            x_t = D.add_noise(latents.detach(), noise, t, self.alphas_cumprod)
            eps_pred = predict_noise(x_t, t)
        weight = D.sds_weight(t, self.alphas_cumprod, self.cfg.weighting_strategy, latents)
        grad = D.sds_gradient(eps_pred, noise, weight, self.grad_clip_value)
        return {
            "loss_sds": D.loss_from_gradient(latents, grad),
            "grad_norm": grad.norm(),
            "timestep": t.float().mean(),
        }

    def x0_reconstruction(
        self,
        latents: Tensor,
        predict_noise: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]],
        std_rescale: float = 0.0,
        group: int = 1,
    ) -> Dict[str, Tensor]:
        """MVDream's x0-reconstruction loss on ``latents`` ``[B, C, H, W]`` (requires grad).

        ``predict_noise(x_t, t)`` returns ``(guided eps, conditional eps)`` without grad. The
        guided x0 is rescaled towards the conditional one's std per ``group`` consecutive views
        (``std_rescale`` r; 0 disables), and the loss is ``0.5 ||latents - x0||^2 / B``, whose
        gradient equals SDS with w(t) = sigma / alpha.
        """
        batch = latents.shape[0]
        t = D.sample_timesteps(
            batch, self.min_step, self.max_step, self.cfg.shared_timestep, device=latents.device
        )
        noise = torch.randn_like(latents)
        with torch.no_grad():
            x_t = D.add_noise(latents.detach(), noise, t, self.alphas_cumprod)
            eps, eps_cond = predict_noise(x_t, t)
            x0 = D.x0_from_eps(x_t, eps, t, self.alphas_cumprod)
            if std_rescale > 0:
                x0_cond = D.x0_from_eps(x_t, eps_cond, t, self.alphas_cumprod)
                x0 = D.rescale_x0(x0, x0_cond, std_rescale, group=group)
        return {
            "loss_sds": D.reconstruction_loss(latents, x0),
            "grad_norm": ((latents.detach() - x0) / batch).norm(),
            "timestep": t.float().mean(),
        }
