"""Regularisers on renders shared by image-conditioned systems (SJC's, Zero123's, later others).

All images are ``[B, H, W, C]``. Depths are the renderer's expected ray distance; where a ray
is partly empty its depth is completed with a far background distance (3drec's ``bg_dist``
of 10) so that silhouettes show up as depth edges.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def composite_depth(depth: Tensor, opacity: Tensor, background_depth: float = 10.0) -> Tensor:
    """Expected depth with the empty part of each ray at ``background_depth`` (3drec)."""
    return depth + (1.0 - opacity) * background_depth


def depth_smoothness(depth: Tensor) -> Tensor:
    """Mean absolute finite differences of a depth map, averaged over both image axes.

    ``depth`` ``[B, H, W, 1]`` (or ``[B, H, W]`` / ``[H, W]``); 3drec's ``depth_smooth_loss``:
    ``(mean|D[:, :-1] - D[:, 1:]| + mean|D[:-1, :] - D[1:, :]|) / 2``. Zero for a constant
    depth, e.g. a plane facing an orthographic camera.
    """
    if depth.dim() == 4:
        depth = depth[..., 0]
    dx = (depth[..., :, :-1] - depth[..., :, 1:]).abs().mean()
    dy = (depth[..., :-1, :] - depth[..., 1:, :]).abs().mean()
    return (dx + dy) / 2


def near_view_positions(
    positions: Tensor, offset: float = 0.05, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Camera positions ``[B, 3]`` moved by ``offset`` in a uniformly random direction
    (3drec's ``sample_near_eye``); the cameras keep looking at the origin."""
    direction = torch.randn(positions.shape, generator=generator, dtype=positions.dtype)
    return positions + offset * F.normalize(direction, dim=-1).to(positions.device)


def near_view_loss(render: Tensor, depth: Tensor, render_near: Tensor, depth_near: Tensor) -> Tensor:
    """Pixel-aligned consistency of two nearby views (no warping, as in 3drec):
    ``mean|render_near - render| + mean|depth_near - depth|``."""
    return (render_near - render).abs().mean() + (depth_near - depth).abs().mean()


def emptiness_loss(weights: Tensor, scale: float = 10.0) -> Tensor:
    """SJC's emptiness prior ``mean log(1 + scale * w)`` over the per-sample render weights."""
    return torch.log1p(scale * weights).mean()


def centered_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of images in [0, 1] measured in [-1, 1] (3drec's input-view loss)."""
    return F.mse_loss(prediction * 2.0 - 1.0, target * 2.0 - 1.0)


def normal_smoothness_2d(comp_normal: Tensor) -> Tensor:
    """Squared finite differences of the rendered normal map (threestudio's ``normal_smooth``)."""
    return (comp_normal[:, 1:] - comp_normal[:, :-1]).square().mean() + (
        comp_normal[:, :, 1:] - comp_normal[:, :, :-1]
    ).square().mean()


def normal_smoothness_3d(normal: Tensor, normal_perturb: Tensor) -> Tensor:
    """Mean absolute change of the surface normal under a small 3D jitter of the sample points
    (threestudio's ``3d_normal_smooth``)."""
    return (normal - normal_perturb).abs().mean()
