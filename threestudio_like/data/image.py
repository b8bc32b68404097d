"""The ``single-image-datamodule``: posed RGBA reference image(s), plus random views around the object.

It takes one image at the default camera (``data.image_path``) or N posed images
(``data.references``, parsed and checked by :mod:`.references`) and loads and frames them
(:mod:`.image_io`) when it is built, so that a bad image fails before any training work.

Training batches hold all N reference views, batched on dim 0: ``rays_o``/``rays_d``
``[N, H, W, 3]``, ``c2w``/``mvp_mtx`` ``[N, 4, 4]``, ``camera_positions``/``light_positions``
``[N, 3]``, ``elevation``/``azimuth``/``camera_distances``/``fovy`` ``[N]`` (degrees),
``height``, ``width``, ``rgb`` ``[N, H, W, 3]`` (white background), ``mask`` ``[N, H, W, 1]``,
the conditioning images ``cond_rgb`` ``[N, S, S, 3]`` and ``cond_mask`` ``[N, S, S, 1]`` at
``S = condition_size``, ``n_references = N``, ``n_views = 1``, and a batch of random cameras
under ``random_camera``. The render resolution follows ``height``/``width`` lists switched at
``resolution_milestones``. :meth:`SingleImageDataModule.reference_views` gives the posed
conditioning images alone. Validation and test use the random-camera configuration's orbit.

The image and reference helpers that other modules and tests use are re-exported here
(``from threestudio_like.data.image import load_reference_image``; see ``__all__``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from threestudio_like import register
from threestudio_like.config import parse_structured
from threestudio_like.data.image_io import (
    ZERO123_OBJECT_FRACTION,
    alpha_bbox,
    composite,
    load_reference_image,
    load_rgba,
    resize_rgba,
)
from threestudio_like.data.random_camera import (
    RandomCameraConfig,
    RandomCameraIterableDataset,
    StepNumberedDataset,
    _as_list,
    orbit_loader,
)
from threestudio_like.data.references import (
    check_rigid_c2w,
    load_reference_rgba,
    parse_references,
    reference_camera_batch,
    reference_views_from_config,
    spherical_from_position,
)
from threestudio_like.errors import ConfigError, FieldError, ImageLoadError, at_least, in_range

__all__ = [
    "SingleImageConfig",
    "SingleImageDataModule",
    "SingleImageIterableDataset",
    # re-exported for the modules and tests that import them from here
    "ImageLoadError",
    "alpha_bbox",
    "check_rigid_c2w",
    "composite",
    "load_reference_image",
    "load_rgba",
    "parse_references",
    "resize_rgba",
    "spherical_from_position",
]


@dataclass
class SingleImageConfig:
    """``data:`` of the image-conditioned recipes (``single-image-datamodule``)."""

    image_path: str = ""
    """The input image: RGBA with a transparent background (or RGB with mask_path)."""
    mask_path: Optional[str] = None
    """Optional object mask (same size as the image) replacing its alpha channel."""
    references: Any = None
    """Several posed images instead of image_path: a JSON/YAML file or an inline list of
    ``{image, mask?, elevation?, azimuth?, distance?, fovy?}`` or ``{image, mask?, c2w, fovy?}``
    entries (or a mapping of parallel lists ``{images, elevations, azimuths, distances}``)."""
    height: Any = 96
    """Reference-view render height; a list switches at resolution_milestones."""
    width: Any = 96
    """Reference-view render width; a list like height."""
    resolution_milestones: List[int] = field(default_factory=list)
    """Training steps at which the reference views (height/width lists) change resolution."""
    recenter: bool = True
    """Centre the object by its alpha bounding box and rescale it to object_fraction (each
    reference independently; set false to keep the framing of posed multi-view images)."""
    object_fraction: float = ZERO123_OBJECT_FRACTION
    """Longer side of the object's box over the frame size (Zero-1-to-3: 200/256)."""
    condition_size: int = 256
    """Size of the square conditioning images handed to the guidance (Zero-1-to-3: 256)."""
    condition_background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """RGB behind the object in the conditioning images (white for Zero-1-to-3; Zero123++: gray 0.5)."""
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

    def validate(self) -> None:
        for name in ("image_path", "mask_path"):
            path = str(getattr(self, name) or "")
            if path.strip() and not os.path.isfile(os.path.expanduser(path)):
                what = "is a folder, not an image file" if os.path.isdir(path) else "not found (no such file)"
                raise FieldError(name, f"{path!r} {what}")
        for name, value in (("height", self.height), ("width", self.width)):
            for size in _as_list(value):
                at_least(name, size, 1)
        at_least("condition_size", self.condition_size, 1)
        if len(self.condition_background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.condition_background):
            raise FieldError("condition_background", f"must be 3 numbers in [0, 1], got {list(self.condition_background)}")
        in_range("object_fraction", self.object_fraction, 0, 1, open_low=True)
        in_range("default_fovy_deg", self.default_fovy_deg, 0, 180, open_low=True)
        in_range("default_camera_distance", self.default_camera_distance, 0, float("inf"), open_low=True)


class SingleImageIterableDataset(StepNumberedDataset):
    """Endless training batches: the N reference views, and random views around the object."""

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
        self.references = reference_views_from_config(cfg)
        rgbas = [load_reference_rgba(view) for view in self.references]
        size = int(cfg.condition_size)
        cond = torch.stack([resize_rgba(rgba, size, size, cfg.recenter, cfg.object_fraction) for rgba in rgbas])
        self.condition = {"cond_rgb": composite(cond, cfg.condition_background), "cond_mask": (cond[..., 3:] > 0.5).float()}
        t = torch.tensor
        self.cameras = {
            "c2w": torch.stack([view.c2w for view in self.references]),
            "fovy": t([view.fovy_deg for view in self.references]),
            "elevation": t([view.elevation_deg for view in self.references]),
            "azimuth": t([view.azimuth_deg for view in self.references]),
            "camera_distances": t([view.distance for view in self.references]),
        }
        cams = self.cameras
        self.views: List[Dict[str, Any]] = []
        for h, w in zip(heights, widths):
            view = reference_camera_batch(
                cams["c2w"], cams["fovy"], h, w, cams["elevation"], cams["azimuth"], cams["camera_distances"]
            )
            image = torch.stack([resize_rgba(rgba, h, w, cfg.recenter, cfg.object_fraction) for rgba in rgbas])
            view.update(rgb=composite(image), mask=(image[..., 3:] > 0.5).float())
            self.views.append(view)
        self.random_cameras = RandomCameraIterableDataset(cfg.random_camera) if cfg.use_random_camera else None
        self.milestones = list(cfg.resolution_milestones)

    @property
    def n_references(self) -> int:
        return len(self.references)

    def reference_views(self) -> Dict[str, Tensor]:
        """The posed conditioning images: ``cond_rgb`` ``[N, S, S, 3]``, ``cond_mask``
        ``[N, S, S, 1]``, ``c2w`` ``[N, 4, 4]``, ``camera_positions`` ``[N, 3]``, ``fovy``,
        ``elevation``, ``azimuth`` (degrees) and ``camera_distances`` ``[N]``."""
        out = dict(self.condition)
        out.update(self.cameras)
        out["camera_positions"] = self.cameras["c2w"][:, :3, 3]
        return out

    def collate(self, items: list) -> Dict[str, Any]:
        batch = dict(self.views[self.level_for(self.step_of(items))])
        batch.update(self.condition)
        batch["n_views"] = 1
        batch["n_references"] = self.n_references
        if self.random_cameras is not None:
            batch["random_camera"] = self.random_cameras.collate(items)
        return batch


@register("single-image-datamodule")
class SingleImageDataModule(pl.LightningDataModule):
    """Posed conditioning image(s) + random training views; orbit evaluation.

    The images are loaded (and checked) when the data module is built, before any training work.
    """

    Config = SingleImageConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.train_dataset = SingleImageIterableDataset(self.cfg)

    def reference_views(self) -> Dict[str, Tensor]:
        """See :meth:`SingleImageIterableDataset.reference_views`."""
        return self.train_dataset.reference_views()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=1, num_workers=0, collate_fn=self.train_dataset.collate)

    def val_dataloader(self) -> DataLoader:
        return orbit_loader(self.cfg.random_camera, self.cfg.random_camera.n_val_views)

    def test_dataloader(self) -> DataLoader:
        return orbit_loader(self.cfg.random_camera, self.cfg.random_camera.n_test_views, turntable=True)

    def predict_dataloader(self) -> DataLoader:
        return orbit_loader(self.cfg.random_camera, 1)
