"""Writing RGBD samples (LDM3D): the RGB image, the 16-bit depth PNG and a coloured preview.

The prior hands back its autoencoder's raw decoded pixels (:class:`RGBDSamples`); the files are
post-processed exactly as ``StableDiffusionLDM3DPipeline`` does
(:func:`~threestudio_like.models.rgbd.postprocess_rgbd`): RGB ``round(255 x)``, depth ``uint16``
(4c: ``65535 x`` truncated; 6c: ``G' 256 + B'``), larger = nearer (relative inverse depth).
The preview maps each image's depth range onto a perceptual colour map (near = bright).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
from torch import Tensor

from threestudio_like.models.rgbd import postprocess_rgbd
from threestudio_like.utils.files import atomic_path


@dataclass
class RGBDSamples:
    """Decoded RGBD images straight from an RGBD prior."""

    decoded: Tensor
    """``[N, C, H, W]`` autoencoder output in [-1, 1] (C = 4 or 6)."""


def depth_preview(depth16: np.ndarray, colormap: str = "magma") -> np.ndarray:
    """``uint16 [H, W]`` depth -> ``uint8 [H, W, 3]``: its range stretched over ``colormap``."""
    from matplotlib import colormaps

    d = depth16.astype(np.float64)
    lo, hi = d.min(), d.max()
    unit = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    return (colormaps[colormap](unit)[..., :3] * 255).round().astype(np.uint8)


def _write_png(path: str, image: np.ndarray) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_rgbd_samples(samples: RGBDSamples, folder: str, stem: str) -> Dict[str, List[str]]:
    """Write ``<stem>-<i>-rgb.png``, ``-depth.png`` (16-bit) and ``-depth-preview.png`` per
    sample into ``folder``; returns the paths by kind."""
    rgb, depth = postprocess_rgbd(samples.decoded)
    paths: Dict[str, List[str]] = {"rgb": [], "depth": [], "depth_preview": []}
    for i in range(rgb.shape[0]):
        base = os.path.join(folder, f"{stem}-{i}")
        paths["rgb"].append(_write_png(base + "-rgb.png", rgb[i]))
        paths["depth"].append(_write_png(base + "-depth.png", depth[i]))
        paths["depth_preview"].append(_write_png(base + "-depth-preview.png", depth_preview(depth[i])))
    return paths
