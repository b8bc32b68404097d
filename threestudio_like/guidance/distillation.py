"""The one place for distillation math shared by every guidance.

Notation (DDPM): ``x_t = alpha_t * x_0 + sigma_t * eps`` with ``alpha_t = sqrt(abar_t)`` and
``sigma_t = sqrt(1 - abar_t)``. Guidances supply a noise prediction; this module turns it into
an SDS gradient, an x0-reconstruction target, or (later) an SJC score, and into a loss whose
gradient with respect to the rendered latents is exactly that update.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def scaled_linear_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """``abar_t`` of the Stable Diffusion ("scaled linear") schedule, ``[num_steps]`` float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def linear_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """``abar_t`` of diffusers' "linear" schedule (betas linear in beta itself, not in its
    square root; Zero123++), ``[num_steps]`` float64."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
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


def eps_from_v(x_t: Tensor, v: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Noise prediction of a v-prediction ``v = alpha_t eps - sigma_t x_0``:
    ``eps = alpha_t v + sigma_t x_t`` (v-models such as Zero123++ feed every update rule this way)."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t, x_t)
    return alpha * v + sigma * x_t


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


# --------------------------------------------------------------------------------------------
# Score Jacobian Chaining (Wang et al. 2023), as in zero123's 3drec
#
# SJC works in the variance-exploding view of the DDPM forward process: ``z = x_t / alpha_t =
# x_0 + sigma eps`` with ``sigma = sqrt((1 - abar_t) / abar_t)``. A render ``y`` is perturbed to
# ``z = y + sigma n``; the network sees ``z / sqrt(1 + sigma^2)`` (= ``x_t``); its guided noise
# gives the denoised estimate ``D = z - sigma eps_hat``; the update ascends ``(D - y) / sigma``.
# "Perturb-and-average scoring" (PAAS) averages that over several noise draws ``n``.


def ve_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """SJC's noise levels ``sigma_t = sqrt((1 - abar_t) / abar_t)``, indexed by DDPM timestep."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def ve_network_input(z: Tensor, sigma: Tensor) -> Tensor:
    """The network input ``z / sqrt(1 + sigma^2)`` (= ``alpha_t z``, the DDPM ``x_t``) of a
    VE sample ``z``; ``sigma`` broadcasts against ``z``."""
    return z / (1 + sigma**2).sqrt()


def ve_denoised(z: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Denoised estimate ``D(z; sigma) = z - sigma eps_hat`` (equal to the DDPM x0 prediction)."""
    return z - sigma * eps


def sjc_gradient(denoised: Tensor, y: Tensor, z: Tensor, sigma: Tensor, var_red: bool = True) -> Tensor:
    """SJC's ascent direction on the render ``y`` from one perturbation ``z = y + sigma n``.

    ``(D - y) / sigma`` with variance reduction (= ``n - eps_hat``), else ``(D - z) / sigma``
    (= ``-eps_hat``). In expectation over ``n`` both equal ``sigma`` times the score of the
    data smoothed at ``sqrt(2) sigma`` (3drec drops one factor of ``1 / sigma``).
    """
    return (denoised - (y if var_red else z)) / sigma


def perturb_and_average(
    y: Tensor,
    t: Tensor,
    sigma: Tensor,
    predict_noise,
    n_perturb: int = 1,
    var_red: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """PAAS: the SJC ascent direction averaged over ``n_perturb`` noise draws (no grad).

    ``y`` ``[B, ...]``; ``t`` ``[B]`` timesteps whose noise levels are ``sigma`` ``[B]``. The
    draws are scored in one call ``predict_noise(x_t, t)`` on ``[n_perturb * B, ...]`` stacked
    draw-major (row ``k * B + b`` is draw ``k`` of view ``b``), so a closure repeats per-view
    conditions with ``.repeat(n_perturb, ...)``.
    """
    with torch.no_grad():
        y = y.detach()
        batch = y.shape[0]
        noise = torch.randn((n_perturb, *y.shape), generator=generator, device=y.device, dtype=y.dtype)
        s = _broadcast(sigma, y)[None]
        z = (y[None] + s * noise).reshape(n_perturb * batch, *y.shape[1:])
        s_flat = s.expand(n_perturb, *s.shape[1:]).reshape(n_perturb * batch, *s.shape[2:])
        eps = predict_noise(ve_network_input(z, s_flat), t.repeat(n_perturb)).to(y.dtype)
        denoised = ve_denoised(z, s_flat, eps)
        y_rep = y[None].expand(n_perturb, *y.shape).reshape(z.shape)
        grads = sjc_gradient(denoised, y_rep, z, s_flat, var_red)
        return torch.nan_to_num(grads.reshape(n_perturb, *y.shape).mean(0))


def sjc_update(
    latents: Tensor,
    predict_noise,
    alphas_cumprod: Tensor,
    min_step: int,
    max_step: int,
    n_perturb: int = 1,
    var_red: bool = True,
    shared_timestep: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    """One SJC step on ``latents`` ``[B, ...]`` (requires grad): ``loss_sjc`` and diagnostics.

    ``t`` is uniform in ``[min_step, max_step]`` (3drec: ``sigma`` uniform over the ticks
    ``us[30:-10]``, i.e. ``t`` in ``[10, 969]``) and ``sigma = sqrt((1 - abar_t) / abar_t)``; the
    ascent direction is :func:`perturb_and_average`'s. ``loss_sjc`` has gradient ``-ascent / B``
    with respect to ``latents`` (3drec calls ``y.backward(-grad)`` with B = 1).
    """
    batch = latents.shape[0]
    t = sample_timesteps(batch, min_step, max_step, shared_timestep, device=latents.device, generator=generator)
    sigma = ve_sigmas(alphas_cumprod.to(latents.device).double())[t].to(latents.dtype)
    ascent = perturb_and_average(latents, t, sigma, predict_noise, n_perturb, var_red, generator)
    return {
        "loss_sjc": loss_from_gradient(latents, -ascent),
        "grad_norm": ascent.norm(),
        "timestep": t.float().mean(),
        "sigma": sigma.mean(),
    }


# --------------------------------------------------------------------------------------------
# Perp-Neg (Armandpour et al. 2023), as in threestudio's stable_diffusion_guidance


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of ``x`` perpendicular to ``y``, per sample (first dimension)."""
    b = x.shape[0]
    xf, yf = x.reshape(b, -1), y.reshape(b, -1)
    coef = (xf * yf).sum(1, keepdim=True) / (yf * yf).sum(1, keepdim=True).clamp_min(1e-12)
    return (xf - coef * yf).reshape(x.shape)


def perp_neg_guidance(
    eps_uncond: Tensor, eps_pos: Tensor, eps_negs: Tensor, neg_weights: Tensor, scale: float
) -> Tensor:
    """``eps_u + s (e_pos + sum_i w_i perp(e_neg_i, e_pos))`` with ``e = eps - eps_u``.

    ``eps_negs`` ``[B, N, ...]`` (N negative prompts per view), ``neg_weights`` ``[B, N]``
    (negative numbers push away from the negative prompts).
    """
    e_pos = eps_pos - eps_uncond
    accum = torch.zeros_like(e_pos)
    for i in range(eps_negs.shape[1]):
        e_neg = eps_negs[:, i] - eps_uncond
        accum = accum + _broadcast(neg_weights[:, i], e_pos) * perpendicular_component(e_neg, e_pos)
    return eps_uncond + scale * (e_pos + accum)
