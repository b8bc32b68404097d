"""Writing images, image grids and videos to a trial's ``save/`` folder."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from torch import Tensor

ImageLike = Union[Tensor, np.ndarray]


def to_uint8(img: ImageLike) -> np.ndarray:
    """``[H, W, C]`` float in [0, 1] (C = 1 or 3) -> ``[H, W, 3]`` uint8 (uint8 passes through)."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return np.repeat(img, 3, axis=-1) if img.ndim == 3 and img.shape[-1] == 1 else img
    if isinstance(img, Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.nan_to_num(np.asarray(img, dtype=np.float32))
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def normalize_depth(depth: ImageLike, mask: ImageLike) -> np.ndarray:
    """Map the depth of covered pixels to [0, 1] (near = bright) for display."""
    d = depth.detach().float().cpu().numpy() if isinstance(depth, Tensor) else np.asarray(depth)
    m = mask.detach().float().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    covered = m > 0.5
    out = np.zeros_like(d)
    if covered.any():
        lo, hi = d[covered].min(), d[covered].max()
        out = np.where(covered, 1.0 - (d - lo) / max(hi - lo, 1e-6), 0.0)
    return out


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 (alpha dropped)."""
    import imageio.v2 as imageio

    image = np.asarray(imageio.imread(str(path)))
    return to_uint8(image[..., :3] if image.ndim == 3 else image)


def save_image(path: Union[str, Path], img: ImageLike) -> str:
    import imageio.v2 as imageio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(str(path), to_uint8(img))
    return str(path)


def image_grid(panels: Sequence[ImageLike]) -> np.ndarray:
    """Panels (``[H, W, C]`` in [0, 1], same height) side by side, ``[H, sum W, 3]`` uint8."""
    return np.concatenate([to_uint8(p) for p in panels], axis=1)


def save_image_grid(path: Union[str, Path], panels: Sequence[ImageLike]) -> str:
    """Save panels (``[H, W, C]`` in [0, 1], same height) side by side."""
    return save_image(path, image_grid(panels))


def frame_paths(folder: Union[str, Path]) -> List[str]:
    """PNG frames of a folder in numeric order (``0.png, 1.png, ... 10.png``)."""
    pattern = re.compile(r"(\d+)\.png$")
    items = [(int(m.group(1)), f) for f in os.listdir(folder) if (m := pattern.search(f))]
    return [os.path.join(folder, f) for _, f in sorted(items)]


def save_video(path: Union[str, Path], frames: Sequence[str], fps: int = 30) -> str:
    """Encode PNG frames to ``.mp4`` (h264, bundled ffmpeg) or ``.gif`` by the path's suffix."""
    import imageio.v2 as imageio

    images = [imageio.imread(f) for f in frames]
    if not images:
        raise ValueError(f"No frames to write to {path}.")
    path = str(path)
    if path.endswith(".gif"):
        imageio.mimsave(path, images, duration=1000.0 / fps, loop=0)
    else:
        imageio.mimsave(path, images, fps=fps, macro_block_size=1)
    return path
