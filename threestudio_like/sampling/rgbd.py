"""Writing RGBD samples (LDM3D): the RGB image, the 16-bit depth PNG and a coloured preview.

The prior hands back its autoencoder's raw decoded pixels (:class:`RGBDSamples`); the files are
post-processed exactly as ``StableDiffusionLDM3DPipeline`` does
(:func:`~threestudio_like.models.rgbd.postprocess_rgbd`): RGB ``round(255 x)``, depth ``uint16``
(4c: ``65535 x`` truncated; 6c: ``G' 256 + B'``), larger = nearer (relative inverse depth).
The preview maps each image's depth range onto a dark-to-bright colour ramp (near = bright).
With ``sample.scene`` (or ``image=`` + ``depth=``), :func:`save_scene` also builds the DepthFusion
scene (:mod:`threestudio_like.scenes.depthfusion`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
from torch import Tensor

from threestudio_like.errors import ConfigError, ImageLoadError
from threestudio_like.models.rgbd import postprocess_rgbd
from threestudio_like.utils.files import atomic_path


@dataclass
class RGBDSamples:
    """Decoded RGBD images straight from an RGBD prior."""

    decoded: Tensor
    """``[N, C, H, W]`` autoencoder output in [-1, 1] (C = 4 or 6)."""


# A perceptually ordered ramp (dark far -> bright near): black, indigo, magenta, orange, pale yellow.
_RAMP = np.array([[0, 0, 4], [60, 15, 110], [170, 50, 120], [245, 120, 80], [252, 250, 190]], dtype=np.float64)


def depth_preview(depth16: np.ndarray) -> np.ndarray:
    """``uint16 [H, W]`` depth -> ``uint8 [H, W, 3]``: its range stretched over a dark-to-bright
    colour ramp (LDM3D depth is disparity, so near is bright)."""
    d = depth16.astype(np.float64)
    lo, hi = d.min(), d.max()
    unit = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    stops = np.linspace(0.0, 1.0, len(_RAMP))
    rgb = np.stack([np.interp(unit, stops, _RAMP[:, c]) for c in range(3)], -1)
    return rgb.round().astype(np.uint8)


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


def read_rgbd(image_path: str, depth_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB image and its 16-bit depth PNG (LDM3D's convention) -> ``(uint8 [H, W, 3], uint16 [H, W])``."""
    from PIL import Image

    images = []
    for path, what in ((image_path, "image"), (depth_path, "depth")):
        try:
            images.append(Image.open(path))
        except (OSError, ValueError) as exc:
            raise ImageLoadError(f"cannot read the {what} {path!r}: {exc}. Pass {what}=path/to/file.png.") from None
    rgb = np.asarray(images[0].convert("RGB"))
    depth = np.asarray(images[1])
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.dtype != np.uint16:
        if depth.dtype == np.uint8:
            raise ImageLoadError(f"{depth_path!r} is an 8-bit image: pass the 16-bit depth PNG (sample-*-depth.png), "
                                 f"not the coloured preview.")
        depth = depth.astype(np.uint16)
    if depth.shape != rgb.shape[:2]:
        raise ImageLoadError(f"the depth {depth_path!r} is {depth.shape[1]}x{depth.shape[0]} but the image "
                             f"{image_path!r} is {rgb.shape[1]}x{rgb.shape[0]}: they must match.")
    return rgb, depth


def save_scene(rgb: np.ndarray, depth16: np.ndarray, settings: Any, folder: str, stem: str) -> Dict[str, str]:
    """The DepthFusion scene (``settings.scene``: pano | perspective) of one RGBD image: GLB + video."""
    from threestudio_like.scenes.depthfusion import build_scene

    kind = settings.scene or "pano"
    if kind == "pano" and rgb.shape[1] != 2 * rgb.shape[0]:
        raise ConfigError(f"sample.scene=pano takes an equirectangular panorama (width = 2 x height), got "
                          f"{rgb.shape[1]}x{rgb.shape[0]}; use sample.scene=perspective for other images.")
    return build_scene(rgb, depth16, folder, stem, kind=kind, near=settings.scene_near or 1.0,
                       far=settings.scene_far or 10.0, fovy_deg=settings.scene_fovy_deg or 60.0,
                       frames=settings.scene_frames)
