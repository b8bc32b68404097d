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
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MODES = ("unconditioned", "view-binned", "camera-conditioned", "multi-view-joint")
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
    raise ValueError(f"Unknown mode '{mode}'; choose one of {', '.join(MODES)}.")


def joint_sets(views: Tensor, n_view: int = 4) -> Tensor:
    """``[N, n_view, ...]``: for every rotation r of a turntable ``views`` ``[N, ...]`` (N
    uniform azimuths, N divisible by n_view), the views at r, r + 360/n_view, ... ."""
    n = views.shape[0]
    if n % n_view:
        raise ValueError(f"{n} turntable views are not divisible into {n_view} views 360/{n_view} apart.")
    step = n // n_view
    idx = (torch.arange(n)[:, None] + step * torch.arange(n_view)[None]) % n
    return views[idx]
