"""The one place for distillation math shared by every guidance.

Notation (DDPM): ``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t = sqrt(abar_t)`` and
``sigma_t = sqrt(1 - abar_t)``. Guidances supply a noise prediction; this module turns it into
an SDS gradient, an x0-reconstruction target, or (later) an SJC score, and into a loss whose
gradient with respect to the rendered latents is exactly that update.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def scaled_linear_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """``abar_t`` of the Stable Diffusion ("scaled linear") schedule, ``[num_steps]`` float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like).reshape(-1, *([1] * (like.dim() - 1)))


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tuple[Tensor, Tensor]:
    """``alpha_t, sigma_t`` for timesteps ``t`` ``[B]``, broadcastable against ``like``."""
    abar = _broadcast(alphas_cumprod.to(like.device)[t], like)
    return abar.sqrt(), (1 - abar).sqrt()


def sample_timesteps(
    batch: int, min_step: int, max_step: int, shared: bool, device=None, generator=None
) -> Tensor:
    """Integer timesteps in ``[min_step, max_step]``; one for the whole batch when ``shared``."""
    n = 1 if shared else batch
    t = torch.randint(min_step, max_step + 1, (n,), device=device, generator=generator)
    return t.expand(batch).clone() if shared else t


def add_noise(x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process ``x_t = alpha_t x_0 + sigma_t eps``."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t, x0)
    return alpha * x0 + sigma * noise


def x0_from_eps(x_t: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Predicted clean sample from a noise prediction."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t, x_t)
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Noise prediction equivalent to a clean-sample prediction (exact denoisers give x0)."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t, x_t)
    return (x_t - alpha * x0) / sigma


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """``eps_u + s (eps_c - eps_u)`` (the convention of MVDream, Zero123 and EscherNet)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_weight(t: Tensor, alphas_cumprod: Tensor, strategy: str, like: Tensor) -> Tensor:
    """Timestep weighting ``w(t)``: "sds" (1 - abar, DreamFusion), "uniform", "fantasia3d"."""
    abar = _broadcast(alphas_cumprod.to(like.device)[t], like)
    if strategy == "sds":
        return 1 - abar
    if strategy == "uniform":
        return torch.ones_like(abar)
    if strategy == "fantasia3d":
        return abar.sqrt() * (1 - abar)
    raise ValueError(f"Unknown weighting_strategy '{strategy}' (use sds, uniform or fantasia3d).")


def sds_gradient(
    eps_pred: Tensor, noise: Tensor, weight: Tensor, grad_clip: Optional[float] = None
) -> Tensor:
    """``w(t) (eps_hat - eps)``, with NaNs zeroed and optional clamping."""
    grad = torch.nan_to_num(weight * (eps_pred - noise))
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


def loss_from_gradient(latents: Tensor, grad: Tensor) -> Tensor:
    """A loss whose gradient w.r.t. ``latents`` is ``grad / B`` (the SDS reparametrisation)."""
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]


def rescale_x0(x0_cfg: Tensor, x0_cond: Tensor, rescale: float, group: int = 1) -> Tensor:
    """CFG rescale on x0 (Lin et al.): match the std of the guided prediction to the
    unguided one, per group of ``group`` consecutive views, then blend by ``rescale``."""
    b = x0_cfg.shape[0]
    if b % group:
        raise ValueError(f"Batch {b} is not a multiple of the view group size {group}.")
    shape = (b // group, -1)
    std_cfg = x0_cfg.reshape(shape).std(dim=1)
    std_cond = x0_cond.reshape(shape).std(dim=1)
    factor = (std_cond / std_cfg.clamp_min(1e-8)).repeat_interleave(group)
    factor = _broadcast(factor, x0_cfg)
    return rescale * (x0_cfg * factor) + (1 - rescale) * x0_cfg


def reconstruction_loss(latents: Tensor, x0_target: Tensor) -> Tensor:
    """``0.5 ||latents - sg(x0)||^2_sum / B`` (MVDream's x0-reconstruction SDS variant)."""
    return 0.5 * F.mse_loss(latents, x0_target.detach(), reduction="sum") / latents.shape[0]


def exact_posterior_mean(
    x_t: Tensor, alpha: Tensor, sigma: Tensor, data: Tensor, log_prior: Optional[Tensor] = None
) -> Tensor:
    """``E[x_0 | x_t]`` when ``x_0`` is drawn from a finite set of samples.

    ``x_t`` ``[B, ...]``; ``data`` ``[B, K, ...]`` (K candidates per query, e.g. renders of a
    known object) or ``[K, ...]`` shared by the batch; ``log_prior`` ``[B, K]`` or ``[K]``
    (uniform when None). The posterior over candidates is a softmax of
    ``log p_k - ||x_t - alpha x_k||^2 / (2 sigma^2)``. With one candidate this is that candidate.
    """
    batch = x_t.shape[0]
    if data.dim() == x_t.dim():
        data = data.unsqueeze(0).expand(batch, *data.shape)
    flat_x = x_t.reshape(batch, 1, -1)
    flat_d = data.reshape(batch, data.shape[1], -1)
    a = alpha.reshape(batch, 1, 1)
    s = sigma.reshape(batch, 1)
    logits = -((flat_x - a * flat_d) ** 2).sum(-1) / (2 * s**2)
    if log_prior is not None:
        logits = logits + (log_prior if log_prior.dim() == 2 else log_prior[None])
    weights = torch.softmax(logits, dim=1)
    return (weights[..., None] * flat_d).sum(1).reshape(x_t.shape)
