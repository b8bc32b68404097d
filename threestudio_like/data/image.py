"""Image conditioning: one RGBA image at a reference camera, plus random views around it.

The preprocessing functions are shared by every image-conditioned recipe (Zero-1-to-3 now,
multi-image priors later):

* :func:`load_rgba` reads an RGBA image (or an RGB image with a separate mask) as straight
  (non-premultiplied) RGBA in [0, 1], with clear errors for missing files, images without alpha
  and empty masks;
* :func:`resize_rgba` resizes it, optionally re-centring the object: the alpha bounding box is
  scaled so that its longer side spans ``object_fraction`` of the frame and placed in the centre
  (Zero-1-to-3's ``load_and_preprocess``: the object fits 200 px of a 256 px frame). Colours are
  resampled premultiplied, so whatever hides under alpha = 0 never bleeds into the edges;
* :func:`composite` puts it on a solid (white) background, as the models were trained.

The ``single-image-datamodule`` serves training batches made of the reference view (rays at
the default camera, the image and its mask at the render resolution, and the conditioning image
at ``condition_size``) with a batch of random cameras under ``random_camera``; validation and
test use the random-camera configuration's orbit.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from threestudio_like import register
from threestudio_like.base import Updateable
from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data.random_camera import (
    OrbitDataset,
    RandomCameraConfig,
    RandomCameraIterableDataset,
    _as_list,
    make_batch,
)

ZERO123_OBJECT_FRACTION = 200.0 / 256.0
"""Zero-1-to-3's framing: the object's longer side spans 200 of 256 pixels."""


class ImageLoadError(ConfigError):
    """An input image that cannot be used; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------
# preprocessing


def load_rgba(image_path: str, mask_path: Optional[str] = None) -> Tensor:
    """Straight RGBA ``[H, W, 4]`` float in [0, 1] from an RGBA image or an RGB image + mask.

    The mask (any image of the same size; its alpha channel if it has one, else its grey
    level) replaces the image's alpha. Raises :class:`ImageLoadError` for a missing or
    unreadable file, an image without alpha and no mask, a fully opaque alpha and an empty mask.
    """
    from PIL import Image

    def open_image(path: str, what: str) -> "Image.Image":
        if not path:
            raise ImageLoadError(f"No {what} given: set data.image_path (or pass image=path/to/object.png).")
        if not os.path.isfile(path):
            raise ImageLoadError(f"{what.capitalize()} not found: {os.path.abspath(path)}.")
        try:
            img = Image.open(path)
            img.load()
        except Exception as exc:  # truncated or not an image
            raise ImageLoadError(f"Could not read the {what} {path}: {exc}.") from None
        return img

    img = open_image(image_path, "image")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if mask_path:
        mask_img = open_image(mask_path, "mask")
        if mask_img.size != img.size:
            raise ImageLoadError(
                f"The mask {mask_path} is {mask_img.size[0]}x{mask_img.size[1]} but the image "
                f"{image_path} is {img.size[0]}x{img.size[1]}: they must have the same size."
            )
        if mask_img.mode in ("RGBA", "LA", "PA"):
            mask = np.asarray(mask_img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        else:
            mask = np.asarray(mask_img.convert("L"), dtype=np.float32) / 255.0
        rgba[..., 3] = mask
        source = f"mask {mask_path}"
    elif not has_alpha:
        raise ImageLoadError(
            f"The image {image_path} has no alpha channel, so the object cannot be told from the "
            f"background. Pass an RGBA image with the background transparent (e.g. segmented with "
            f"rembg or carvekit), or a mask: data.mask_path=path/to/mask.png."
        )
    else:
        source = f"alpha channel of {image_path}"
    alpha = rgba[..., 3]
    if not (alpha > 0.5).any():
        raise ImageLoadError(f"The {source} is empty: no pixel has alpha > 0.5, so there is no object.")
    if mask_path is None and (alpha > 0.5).all():
        raise ImageLoadError(
            f"The {source} is fully opaque: the object is not segmented. Remove the background "
            f"(transparent pixels) or pass data.mask_path=path/to/mask.png."
        )
    return torch.from_numpy(rgba)


def alpha_bbox(alpha: Tensor, threshold: float = 0.5) -> Tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (exclusive) of the pixels with ``alpha > threshold``."""
    rows = torch.nonzero((alpha > threshold).any(dim=1)).flatten()
    cols = torch.nonzero((alpha > threshold).any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ImageLoadError("The mask is empty: no pixel has alpha > 0.5.")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _resample(premultiplied: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of ``[h, w, 4]`` premultiplied RGBA."""
    x = premultiplied.permute(2, 0, 1)[None]
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0.0, 1.0)


def resize_rgba(
    rgba: Tensor, height: int, width: int, recenter: bool = True, object_fraction: float = ZERO123_OBJECT_FRACTION
) -> Tensor:
    """Straight RGBA ``[height, width, 4]`` from straight RGBA ``[h, w, 4]``.

    With ``recenter`` the object's alpha bounding box keeps its aspect ratio, its longer side
    becomes ``object_fraction * min(height, width)`` pixels and its centre the image centre;
    otherwise the whole image is resized.
    """
    premultiplied = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1)
    if recenter:
        if not 0.0 < object_fraction <= 1.0:
            raise ConfigError(f"data.object_fraction must be in (0, 1], got {object_fraction}.")
        top, left, bottom, right = alpha_bbox(rgba[..., 3])
        crop = premultiplied[top:bottom, left:right]
        scale = object_fraction * min(height, width) / max(bottom - top, right - left)
        box_h = max(1, min(height, round((bottom - top) * scale)))
        box_w = max(1, min(width, round((right - left) * scale)))
        out = torch.zeros(height, width, 4, dtype=rgba.dtype)
        y0, x0 = (height - box_h) // 2, (width - box_w) // 2
        out[y0 : y0 + box_h, x0 : x0 + box_w] = _resample(crop, box_h, box_w)
    else:
        out = _resample(premultiplied, height, width)
    alpha = out[..., 3:]
    straight = torch.where(alpha > 1e-6, out[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(out[..., :3]))
    return torch.cat([straight.clamp(0.0, 1.0), alpha], dim=-1)


def composite(rgba: Tensor, background: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """RGB ``[..., 3]`` of straight RGBA ``[..., 4]`` over a solid background (white default)."""
    bg = rgba.new_tensor(list(background))
    return rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])


def load_reference_image(
    image_path: str,
    height: int,
    width: int,
    mask_path: Optional[str] = None,
    recenter: bool = True,
    object_fraction: float = ZERO123_OBJECT_FRACTION,
) -> Dict[str, Tensor]:
    """``rgb`` (white background) ``[1, H, W, 3]``, ``alpha`` and ``mask`` (alpha > 0.5)
    ``[1, H, W, 1]`` of an input image, loaded and framed as above."""
    rgba = resize_rgba(load_rgba(image_path, mask_path), height, width, recenter, object_fraction)
    return {
        "rgb": composite(rgba)[None],
        "alpha": rgba[None, ..., 3:],
        "mask": (rgba[None, ..., 3:] > 0.5).float(),
    }


# ------------------------------------------------------------------------------------------
# data module


@dataclass
class SingleImageConfig:
    image_path: str = ""
    """The input image: RGBA with a transparent background (or RGB with mask_path)."""
    mask_path: Optional[str] = None
    """Optional object mask (same size as the image) replacing its alpha channel."""
    height: Any = 96
    """Reference-view render height; a list switches at resolution_milestones."""
    width: Any = 96
    """Reference-view render width; a list like height."""
    resolution_milestones: List[int] = field(default_factory=list)
    """Training steps at which the reference view (height/width lists) changes resolution."""
    recenter: bool = True
    """Centre the object by its alpha bounding box and rescale it to object_fraction."""
    object_fraction: float = ZERO123_OBJECT_FRACTION
    """Longer side of the object's box over the frame size (Zero-1-to-3: 200/256)."""
    condition_size: int = 256
    """Size of the square conditioning image handed to the guidance (Zero-1-to-3: 256)."""
    default_elevation_deg: float = 0.0
    """Elevation of the reference camera (degrees above the horizon)."""
    default_azimuth_deg: float = 0.0
    """Azimuth of the reference camera (0 = +x = the object's front)."""
    default_camera_distance: float = 2.0
    """Distance of the reference camera from the origin."""
    default_fovy_deg: float = 49.1
    """Vertical field of view of the reference camera (degrees)."""
    use_random_camera: bool = True
    """Add a batch of random training cameras under batch["random_camera"]."""
    random_camera: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    """Random training views and the validation/test orbit (a random-camera-datamodule config)."""


class SingleImageIterableDataset(IterableDataset, Updateable):
    """Endless training batches: the reference view, and random views around the object."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        heights = [int(h) for h in _as_list(cfg.height)]
        widths = [int(w) for w in _as_list(cfg.width)]
        if len(heights) != len(widths):
            raise ConfigError("data.height and data.width must have the same length.")
        if len(cfg.resolution_milestones) != len(heights) - 1:
            raise ConfigError(
                f"data.resolution_milestones needs {len(heights) - 1} step(s) for {len(heights)} "
                f"resolutions, got {list(cfg.resolution_milestones)}."
            )
        rgba = load_rgba(cfg.image_path, cfg.mask_path)
        size = int(cfg.condition_size)
        cond = resize_rgba(rgba, size, size, cfg.recenter, cfg.object_fraction)
        self.condition = {"cond_rgb": composite(cond)[None], "cond_mask": (cond[None, ..., 3:] > 0.5).float()}
        t = torch.tensor
        self.views: List[Dict[str, Any]] = []
        for h, w in zip(heights, widths):
            view = make_batch(
                t([float(cfg.default_elevation_deg)]), t([float(cfg.default_azimuth_deg)]),
                t([float(cfg.default_camera_distance)]), t([float(cfg.default_fovy_deg)]), h, w,
            )
            image = resize_rgba(rgba, h, w, cfg.recenter, cfg.object_fraction)
            view.update(rgb=composite(image)[None], mask=(image[None, ..., 3:] > 0.5).float())
            self.views.append(view)
        self.random_cameras = RandomCameraIterableDataset(cfg.random_camera) if cfg.use_random_camera else None
        self.level = 0

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.level = bisect.bisect_right(list(self.cfg.resolution_milestones), global_step)

    def get_all_images(self) -> Tensor:
        """The conditioning image ``[1, S, S, 3]`` (white background)."""
        return self.condition["cond_rgb"]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            yield {}

    def collate(self, _items: list) -> Dict[str, Any]:
        batch = dict(self.views[self.level])
        batch.update(self.condition)
        batch["n_views"] = 1
        if self.random_cameras is not None:
            batch["random_camera"] = self.random_cameras.collate(_items)
        return batch


@register("single-image-datamodule")
class SingleImageDataModule(pl.LightningDataModule):
    """One conditioning image at a reference camera + random training views; orbit evaluation.

    The image is loaded (and checked) when the data module is built, before any training work.
    """

    Config = SingleImageConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.train_dataset = SingleImageIterableDataset(self.cfg)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=1, num_workers=0, collate_fn=self.train_dataset.collate)

    def _eval_loader(self, n_views: int) -> DataLoader:
        dataset = OrbitDataset(self.cfg.random_camera, n_views)
        return DataLoader(
            dataset, batch_size=self.cfg.random_camera.eval_batch_size, num_workers=0,
            collate_fn=dataset.collate, shuffle=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.cfg.random_camera.n_val_views)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.cfg.random_camera.n_test_views)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(1)
