"""Which candidate renders each query gets, per mode of the reference-object prior.

The exact denoiser of a finite data set is a softmax over candidates (see
:func:`~threestudio_like.guidance.distillation.exact_posterior_mean`); the modes that reproduce
Janus and its cures differ only in the candidates and their prior weights:

* ``unconditioned`` — every view of the object, azimuths drawn from a front-biased von Mises
  distribution (web photos show fronts): the query camera is ignored.
* ``view-binned`` — the same, restricted to the query's front/side/back bin (view-dependent
  prompting: front |azi| < 45, back |azi| > 135, side otherwise).
* ``camera-conditioned`` — the one view at the query camera.
* ``multi-view-joint`` — sets of 4 views 90 degrees apart at any rotation, scored jointly
  (what MVDream learns: relative cameras, no absolute azimuth); see :func:`joint_sets`.

The unconditional branch of classifier-free guidance is the exact denoiser over views of many
other objects (uniform azimuths) plus ours, combined with the conditional one by
:func:`~threestudio_like.guidance.distillation.classifier_free_guidance`.

Both the 1-D lab (:mod:`threestudio_like.janus.lab`) and the 3-D prior
(:class:`~threestudio_like.guidance.reference_object.ReferenceObjectGuidance`) build their
candidates with :func:`conditional_candidates` / :func:`unconditional_candidates` and predict
noise with :func:`guided_noise`; they differ only in what a "view" is (a window of the turntable
texture or a render).
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Tuple, get_args

import torch
from torch import Tensor

from threestudio_like.errors import ConfigError
from threestudio_like.guidance import distillation as D

Mode = Literal["unconditioned", "view-binned", "camera-conditioned", "multi-view-joint"]
MODES: Tuple[str, ...] = get_args(Mode)
FRONT_THRESHOLD_DEG = 45.0
BACK_THRESHOLD_DEG = 45.0


def wrap_deg(az: Tensor) -> Tensor:
    """Azimuths in degrees wrapped to ``(-180, 180]``."""
    return torch.remainder(az + 180.0, 360.0) - 180.0


def view_bin(az_deg: Tensor) -> Tensor:
    """0 = front (|azi| < 45), 1 = side, 2 = back (|azi| > 135), threestudio's thresholds."""
    a = wrap_deg(az_deg).abs()
    bins = torch.ones_like(a, dtype=torch.long)
    bins[a < FRONT_THRESHOLD_DEG] = 0
    bins[a > 180.0 - BACK_THRESHOLD_DEG] = 2
    return bins


def front_biased_log_prior(az_deg: Tensor, kappa: float) -> Tensor:
    """Unnormalised von Mises log density ``kappa cos(azi)`` around the front (azimuth 0)."""
    return kappa * torch.cos(az_deg * math.pi / 180.0)


def conditional_log_prior(mode: str, query_az: Tensor, bank_az: Tensor, kappa: float) -> Tensor:
    """``[B, K]`` log prior weights of the K candidate views ``bank_az`` for each query
    azimuth (``-inf`` = not a candidate). Not for ``multi-view-joint`` (see :func:`joint_sets`)."""
    base = front_biased_log_prior(bank_az, kappa)[None].expand(query_az.shape[0], -1)
    if mode == "unconditioned":
        return base.clone()
    if mode == "view-binned":
        same = view_bin(query_az)[:, None] == view_bin(bank_az)[None]
        return torch.where(same, base, torch.full_like(base, -math.inf))
    if mode == "camera-conditioned":
        diff = wrap_deg(query_az[:, None] - bank_az[None]).abs()
        nearest = diff == diff.min(dim=1, keepdim=True).values
        return torch.where(nearest, torch.zeros_like(base), torch.full_like(base, -math.inf))
    check_mode(mode)
    raise ValueError(f"conditional_log_prior does not apply to mode '{mode}' (see joint_sets).")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"Unknown mode '{mode}'; choose one of {', '.join(MODES)}.")


def joint_sets(views: Tensor, n_view: int = 4) -> Tensor:
    """``[N, n_view, ...]``: for every rotation r of a turntable ``views`` ``[N, ...]`` (N
    uniform azimuths, N divisible by n_view), the views at r, r + 360/n_view, ... ."""
    n = views.shape[0]
    if n % n_view:
        raise ValueError(f"{n} turntable views are not divisible into {n_view} views 360/{n_view} apart.")
    step = n // n_view
    idx = (torch.arange(n)[:, None] + step * torch.arange(n_view)[None]) % n
    return views[idx]


def joint_azimuths(n: int, n_view: int = 4) -> Tensor:
    """``[n, n_view]`` azimuths (degrees) of :func:`joint_sets` of a turntable of ``n`` views."""
    return joint_sets(torch.arange(n, dtype=torch.float32) * 360.0 / n, n_view)


def conditional_candidates(
    mode: str,
    ours: Tensor,
    bank_az: Tensor,
    query_az: Tensor,
    kappa: float,
    n_view: int = 4,
    at_query: Optional[Tensor] = None,
    per_query: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """``(data, log_prior)`` of the conditional exact denoiser, ready for
    :func:`~threestudio_like.guidance.distillation.exact_posterior_mean`.

    ``ours``: our views at the uniform azimuths ``bank_az`` ``[N]``, shared ``[N, ...]`` or, with
    ``per_query``, ``[B, N, ...]``; ``query_az`` ``[B]`` degrees. ``camera-conditioned`` with ``at_query``
    ``[B, ...]`` (renders at the exact query cameras) uses those; without, the nearest bank view.
    ``multi-view-joint`` returns the joint sets ``[N, n_view, ...]`` (``[B, N, n_view, ...]``) of
    ``ours`` for queries that are groups of ``n_view`` views (the query azimuth is not used).
    """
    check_mode(mode)
    if mode == "multi-view-joint":
        if per_query:
            return torch.stack([joint_sets(o, n_view) for o in ours]), None
        return joint_sets(ours, n_view), None
    if mode == "camera-conditioned" and at_query is not None:
        return at_query[:, None], None
    return ours, conditional_log_prior(mode, query_az, bank_az, kappa)


def unconditional_candidates(mode: str, everyone: Tensor, n_view: int = 4) -> Tensor:
    """Data of the unconditional exact denoiser: ``everyone`` ``[O, N, ...]`` holds the views of
    O objects (ours among them) at N uniform azimuths; returns all ``[O N, ...]`` views, or for
    ``multi-view-joint`` all ``[O N, n_view, ...]`` joint sets."""
    check_mode(mode)
    if mode == "multi-view-joint":
        return torch.cat([joint_sets(v, n_view) for v in everyone], 0)
    return everyone.reshape(-1, *everyone.shape[2:])


def guided_noise(
    x_t: Tensor,
    t: Tensor,
    alphas_cumprod: Tensor,
    cond: Tuple[Tensor, Optional[Tensor]],
    uncond: Optional[Tensor],
    scale: float,
) -> Tensor:
    """The noise prediction of the exact denoisers: ``cond = (data, log_prior)`` and the
    unconditional data, combined by CFG with ``scale`` (the unconditional branch is skipped at
    ``scale == 1``)."""
    alpha, sigma = D.alpha_sigma(alphas_cumprod, t, x_t)
    x0_c = D.exact_posterior_mean(x_t, alpha, sigma, cond[0], cond[1])
    eps_c = D.eps_from_x0(x_t, x0_c, t, alphas_cumprod)
    if scale == 1.0:
        return eps_c
    if uncond is None:
        raise ValueError("guidance_scale != 1 needs the unconditional data set.")
    x0_u = D.exact_posterior_mean(x_t, alpha, sigma, uncond)
    eps_u = D.eps_from_x0(x_t, x0_u, t, alphas_cumprod)
    return D.classifier_free_guidance(eps_u, eps_c, scale)
