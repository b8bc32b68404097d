"""Exact, rotation-invariant Janus measures for an object whose true views are known.

Inputs are turntables: ``views`` and ``truth`` ``[N, ...]`` at the same N azimuths, uniformly
spaced starting at azimuth 0 (the true front). A view *shows the front* when it is closer to the
true front view than ``threshold`` (default: half the distance between the true front view and
the true view 45 degrees away). The measures:

* :func:`count_arcs` / face arcs — separate runs of azimuths on the circle whose view shows the
  front (one face = 1 arc; Janus >= 2). Comparing every view with the front view makes the count
  invariant to a rotation of the learned object.
* back-half fraction — after aligning the learned turntable to the truth by the best circular
  shift, the fraction of back-half views (|azimuth| > 90) closer to the true front view than to
  the true view at that azimuth.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor


def count_arcs(flags: Sequence[bool], min_gap: int = 1) -> int:
    """Number of separate runs of True on a circle; gaps shorter than ``min_gap`` are merged."""
    f = [bool(x) for x in flags]
    if not any(f):
        return 0
    if all(f):
        return 1
    n = len(f)
    start = next(i for i in range(n) if f[i] and not f[i - 1])  # the start of some arc
    f = f[start:] + f[:start]
    gaps, run = [], 0
    for x in f + [True]:  # the sentinel closes the wrap-around gap
        if x:
            if run:
                gaps.append(run)
            run = 0
        else:
            run += 1
    return max(1, sum(g >= min_gap for g in gaps))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).float()


def view_distances(a: Tensor, b: Tensor) -> Tensor:
    """RMS distance ``[Na, Nb]`` between every view of ``a`` and of ``b``."""
    fa, fb = _flat(a), _flat(b)
    return torch.cdist(fa, fb) / fa.shape[1] ** 0.5


def default_threshold(truth: Tensor) -> float:
    """Half the distance between the true front view and the true view 45 degrees away."""
    n = truth.shape[0]
    k = max(1, round(n * 45 / 360))
    d = view_distances(truth[:1], truth[[k, n - k]])[0]
    return 0.5 * float(d.mean())


def best_shift(views: Tensor, truth: Tensor) -> int:
    """Circular shift ``s`` minimising ``sum_i d(views[i + s], truth[i])``."""
    n = views.shape[0]
    d = view_distances(views, truth)  # [N, N]
    idx = torch.arange(n)
    costs = torch.stack([d[(idx + s) % n, idx].sum() for s in range(n)])
    return int(costs.argmin())


def janus_measures(
    views: Tensor, truth: Tensor, threshold: Optional[float] = None, min_gap_deg: float = 15.0
) -> Dict[str, float]:
    """Face arcs, back-half fraction and helpers for one learned turntable (see module doc)."""
    n = views.shape[0]
    tau = default_threshold(truth) if threshold is None else threshold
    d_front = view_distances(views, truth[:1])[:, 0]
    shows_front = (d_front < tau).tolist()
    arcs = count_arcs(shows_front, min_gap=max(1, round(n * min_gap_deg / 360)))
    s = best_shift(views, truth)
    aligned = torch.roll(views, shifts=-s, dims=0)
    az = torch.arange(n) * 360.0 / n
    az = torch.where(az > 180, az - 360, az)
    back = az.abs() > 90
    d_f = view_distances(aligned[back], truth[:1])[:, 0]
    d_true = (_flat(aligned[back]) - _flat(truth[back])).norm(dim=1) / _flat(truth).shape[1] ** 0.5
    return {
        "face_arcs": float(arcs),
        "back_front_fraction": float((d_f < d_true).float().mean()),
        "front_views_fraction": float(sum(shows_front) / n),
        "rotation_deg": float(s * 360.0 / n),
        "threshold": float(tau),
    }
