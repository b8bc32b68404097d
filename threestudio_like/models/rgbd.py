"""LDM3D's RGBD pixel layout: how RGB and depth are packed into its autoencoder, and back.

LDM3D (Intel) keeps Stable Diffusion's 4-channel latent and changes only the autoencoder's
input/output channel count:

* ``ldm3d-4c`` / ``ldm3d-pano`` (4 channels): ``[R, G, B, D]`` with ``D = depth16 / 65535``;
  every channel mapped to [-1, 1] by ``2 x - 1``. The pipeline's output depth is
  ``uint16((x + 1) / 2 * 65535)`` (clamped to [0, 1], then truncated, as numpy's ``astype``);
* ``ldm3d`` (6 channels): ``[R, G, B, R', G', B']`` where the 16-bit depth is split into bytes,
  ``G' = depth16 // 256``, ``B' = depth16 % 256`` (``R'`` is unused by the decoding
  ``depth16 = G' 256 + B'``; we write ``R' = G'``), each byte divided by 255 then mapped to [-1, 1].

**Depth convention.** LDM3D's training depth came from DPT (DPT-Large, per the ldm3d-pano model
card; DPT-BEiT for later checkpoints): *relative inverse depth* (disparity), larger = nearer,
normalised per image to the full 16-bit range. :func:`ldm3d_depth` turns a NeRF render
(expected ray distance and opacity) into that convention: planar depth ``z`` (ray distance times
the cosine to the optical axis), disparity ``opacity / z`` (the background, opacity 0, is at
infinity: disparity 0, the far end), min/max normalised per image to [0, 1]. The normalising
range is detached, so the gradient acts on the relative shape, which is all DPT's relative
depth fixes. ``metric`` is the deliberately wrong alternative (normalised depth, near = dark),
kept for tests that show the convention matters.
"""
from __future__ import annotations

from typing import Literal, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

DEPTH16_MAX = 65535
RGBD_CHANNELS = (4, 6)
"""Autoencoder channel counts of the LDM3D checkpoints (4c / pano, and the original 6c)."""
DepthConvention = Literal["inverse", "metric"]


# ------------------------------------------------------------------------------------------
# 16-bit depth <-> autoencoder pixels (exact integer packings)


def depth16_to_rgblike(depth16: np.ndarray) -> np.ndarray:
    """``uint16 [...]`` -> ``uint8 [..., 3]`` (R' = G' = high byte, B' = low byte)."""
    d = np.asarray(depth16).astype(np.uint16)
    high, low = (d >> 8).astype(np.uint8), (d & 0xFF).astype(np.uint8)
    return np.stack([high, high, low], axis=-1)


def rgblike_to_depth16(rgblike: np.ndarray) -> np.ndarray:
    """``uint8 [..., 3]`` -> ``uint16 [...]``: ``G' * 256 + B'`` (LDM3D's ``rgblike_to_depthmap``)."""
    x = np.asarray(rgblike).astype(np.int32)
    return (x[..., 1] * 256 + x[..., 2]).astype(np.uint16)


def depth16_to_unit(depth16: np.ndarray) -> np.ndarray:
    """``uint16`` depth -> float32 in [0, 1] (4c's depth channel before ``2 x - 1``)."""
    return np.asarray(depth16).astype(np.float32) / DEPTH16_MAX


def unit_to_depth16(unit: np.ndarray) -> np.ndarray:
    """Float depth in [0, 1] -> ``uint16``, as the pipeline writes it (clamped, ``* 65535``, truncated)."""
    return (np.clip(np.asarray(unit, dtype=np.float32), 0.0, 1.0) * float(DEPTH16_MAX)).astype(np.uint16)


# ------------------------------------------------------------------------------------------
# decoded autoencoder output -> images (the pipeline's post-processing)


def postprocess_rgbd(decoded: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """The LDM3D pipeline's post-processing of decoded pixels ``[B, C, H, W]`` in [-1, 1]
    (C = 4 or 6): ``(rgb uint8 [B, H, W, 3], depth uint16 [B, H, W])``.

    ``x * 0.5 + 0.5`` clamped to [0, 1]; RGB ``round(255 x)``; 4c depth ``uint16(65535 x)``
    (truncated); 6c depth ``G' 256 + B'`` of the bytes ``round(255 x)``.
    """
    channels = decoded.shape[1]
    if channels not in RGBD_CHANNELS:
        raise ValueError(f"an RGBD image has 4 or 6 channels, got {channels}.")
    x = (decoded.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    rgb = (x[..., :3] * 255).round().astype(np.uint8)
    if channels == 4:
        depth = (x[..., 3] * float(DEPTH16_MAX)).astype(np.uint16)
    else:
        depth = rgblike_to_depth16((x[..., 3:] * 255).round().astype(np.uint8))
    return rgb, depth


# ------------------------------------------------------------------------------------------
# renders -> autoencoder input (differentiable)


def axis_cosines(fovy_deg: Tensor, height: int, width: int) -> Tensor:
    """``[B, H, W, 1]`` cosine between each pixel's ray and the optical axis, for cameras of
    vertical field of view ``fovy_deg`` ``[B]`` (ray distance times it is planar depth)."""
    from threestudio_like.cameras import focal_from_fovy, ray_directions

    focal = focal_from_fovy(height, torch.deg2rad(fovy_deg.float().reshape(-1)))
    dirs = torch.stack([ray_directions(height, width, f) for f in focal])
    return (1.0 / dirs.norm(dim=-1, keepdim=True)).to(fovy_deg.device)


def ldm3d_depth(
    depth: Tensor, opacity: Tensor, axis_cosine: Optional[Tensor] = None,
    convention: DepthConvention = "inverse", eps: float = 1e-3,
) -> Tensor:
    """Rendered ``depth`` (opacity-weighted ray distance) and ``opacity`` ``[B, H, W, 1]`` ->
    LDM3D depth in [0, 1] ``[B, H, W, 1]`` (see the module doc; ``axis_cosine`` ``[B, H, W, 1]``
    turns ray distance into planar depth)."""
    surface = depth / opacity.clamp_min(eps)
    if axis_cosine is not None:
        surface = surface * axis_cosine
    surface = surface.clamp_min(eps)
    if convention == "inverse":
        value = opacity / surface  # background: 0 = infinitely far
    elif convention == "metric":
        value = opacity * surface  # wrong on purpose: grows with distance, background near
    else:
        raise ValueError(f"unknown depth convention {convention!r} (inverse | metric).")
    flat = value.detach().flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (value - lo) / (hi - lo).clamp_min(1e-8)


def vae_pixels(rgbd: Tensor, channels: int) -> Tensor:
    """``[B, H, W, 4]`` RGB + LDM3D depth in [0, 1] -> the autoencoder's input ``[B, C, H, W]``
    in [-1, 1] for a ``channels``-channel (4 or 6) autoencoder.

    4c is differentiable throughout. 6c splits the 16-bit depth into bytes: the values are exact,
    and the gradient passes straight through the high byte (the low byte is a sawtooth).
    """
    x = rgbd.permute(0, 3, 1, 2)
    rgb, d = x[:, :3], x[:, 3:4].clamp(0, 1)
    if channels == 4:
        return torch.cat([rgb, d], 1) * 2 - 1
    if channels != 6:
        raise ValueError(f"LDM3D autoencoders have 4 or 6 channels, got {channels}.")
    d16 = torch.floor(d.detach() * DEPTH16_MAX + 0.5)
    high, low = torch.floor(d16 / 256) / 255, torch.remainder(d16, 256) / 255
    smooth = d * DEPTH16_MAX / 256 / 255
    high = smooth + (high - smooth).detach()
    return torch.cat([rgb, high, high, low], 1) * 2 - 1
