"""Random cameras around the object (single-view and multi-view groups) and turntables.

Training batches hold ``batch_size`` views. With ``n_view > 1`` they are ``batch_size // n_view``
objects' worth of view groups, contiguous in the batch: the views of one group share elevation,
fov, distance and perturbations, and their azimuths are ``360 / n_view`` degrees apart (MVDream).
Resolution and batch size may be lists switched at ``resolution_milestones`` (progressive
training). All cameras follow :mod:`threestudio_like.cameras`.

Training batches are numbered by the step that trains on them, and the cameras of step ``s`` are
drawn from a generator seeded by ``(seed, s)`` (:mod:`threestudio_like.utils.rng`): the same
cameras whatever ran before, so a resumed run sees the uninterrupted run's cameras, although
Lightning collates each batch one step ahead of its training step.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from threestudio_like import register
from threestudio_like.base import Updateable
from threestudio_like.cameras import (
    deg2rad,
    focal_from_fovy,
    get_rays,
    look_at,
    mvp_matrix,
    projection_matrix,
    ray_directions,
    spherical_to_position,
)
from threestudio_like.config import parse_structured
from threestudio_like.errors import FieldError, at_least, in_range
from threestudio_like.utils.rng import step_generator


@dataclass
class RandomCameraConfig:
    height: Any = 64
    """Training render height; a list switches at ``resolution_milestones``."""
    width: Any = 64
    batch_size: Any = 1
    """Views per training batch (a multiple of ``n_view``); may be a list like height."""
    resolution_milestones: List[int] = field(default_factory=list)
    n_view: int = 1
    """Views per object: 1 for single-view priors, 4 for multi-view priors (90 degrees apart)."""
    elevation_range: Tuple[float, float] = (-10.0, 90.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: Tuple[float, float] = (1.0, 1.5)
    fovy_range: Tuple[float, float] = (40.0, 70.0)
    relative_radius: bool = False
    """Scale distances by 1/tan(fovy/2) so the object keeps its size in the image (MVDream)."""
    camera_perturb: float = 0.1
    center_perturb: float = 0.2
    up_perturb: float = 0.02
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    batch_uniform_azimuth: bool = True
    """Stratify azimuths over the batch instead of drawing them independently."""
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 1
    n_test_views: int = 120
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    eval_relative_radius: bool = False
    """Apply ``relative_radius`` to the evaluation distance too."""
    test_height: Optional[int] = None
    """Turntable frame height; None: eval_height (validation keeps eval size, so a large
    turntable does not slow the validations during training)."""
    test_width: Optional[int] = None
    """Turntable frame width; None: eval_width."""
    test_elevations_deg: List[float] = field(default_factory=list)
    """Extra turntable orbits after the one at eval_elevation_deg, e.g. [45] for a pass from above."""

    def validate(self) -> None:
        sizes = {k: _as_list(getattr(self, k)) for k in ("height", "width", "batch_size")}
        for name, values in sizes.items():
            for value in values:
                at_least(name, value, 1)
        n = len(sizes["height"])
        if not (len(sizes["width"]) == n and len(sizes["batch_size"]) in (1, n)):
            raise FieldError("height", "data.width (and a list batch_size) must have the same length")
        if len(self.resolution_milestones) != n - 1:
            raise FieldError("resolution_milestones", f"needs {n - 1} step(s) for {n} resolutions, "
                                                      f"got {list(self.resolution_milestones)}")
        if list(self.resolution_milestones) != sorted(set(self.resolution_milestones)) or min(self.resolution_milestones, default=1) < 1:
            raise FieldError("resolution_milestones", f"must be increasing steps >= 1, got {list(self.resolution_milestones)}")
        at_least("n_view", self.n_view, 1)
        for b in sizes["batch_size"]:
            if b % self.n_view != 0:
                raise FieldError("batch_size", f"must be a multiple of data.n_view={self.n_view}, got {b}")
        for name in ("eval_height", "eval_width", "eval_batch_size", "n_val_views", "n_test_views"):
            at_least(name, getattr(self, name), 1)
        for name in ("test_height", "test_width"):
            if getattr(self, name) is not None:
                at_least(name, getattr(self, name), 1)
        for elevation in self.test_elevations_deg:
            in_range("test_elevations_deg", elevation, -90, 90)
        in_range("elevation_range", self.elevation_range, -90, 90, pair=True)
        in_range("azimuth_range", self.azimuth_range, -360, 360, pair=True)
        for name in ("camera_distance_range", "light_distance_range"):
            in_range(name, getattr(self, name), 0, float("inf"), pair=True, open_low=True)
        in_range("fovy_range", self.fovy_range, 0, 180, pair=True, open_low=True)
        in_range("eval_fovy_deg", self.eval_fovy_deg, 0, 180, open_low=True)
        in_range("eval_camera_distance", self.eval_camera_distance, 0, float("inf"), open_low=True)


def _as_list(value: Any) -> list:
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]


def make_batch(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    distance: torch.Tensor,
    fovy: torch.Tensor,
    height: int,
    width: int,
    positions: Optional[torch.Tensor] = None,
    center: Optional[torch.Tensor] = None,
    up: Optional[torch.Tensor] = None,
    light_positions: Optional[torch.Tensor] = None,
) -> Dict[str, Any]:
    """A batch dict for cameras given in degrees (elevation, azimuth, fovy) and distances.

    ``positions``/``center``/``up`` override the exact spherical pose (training perturbations);
    the angles then describe the unperturbed camera.
    """
    if positions is None:
        positions = spherical_to_position(deg2rad(elevation), deg2rad(azimuth), distance)
    c2w = look_at(positions, center, up)
    fovy_rad = deg2rad(fovy)
    focal = focal_from_fovy(height, fovy_rad)
    directions = ray_directions(height, width, 1.0)[None].repeat(len(focal), 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w)
    proj = projection_matrix(fovy_rad, width / height)
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "c2w": c2w,
        "mvp_mtx": mvp_matrix(c2w, proj),
        "camera_positions": positions,
        "light_positions": positions if light_positions is None else light_positions,
        "elevation": elevation,
        "azimuth": azimuth,
        "camera_distances": distance,
        "fovy": fovy,
        "height": height,
        "width": width,
    }


class StepNumberedDataset(IterableDataset, Updateable):
    """An endless training stream whose items are numbered by the training step they feed.

    The numbering starts at the step training starts from (0, or the resumed step, which the
    system passes through ``update_step(..., on_load_weights=True)`` before the stream starts).
    ``collate`` reads the step of its items: called directly (tests, ``--sample``) with items
    that carry none, it uses the current level and the global random generators instead.
    """

    milestones: List[int] = []
    """Steps at which the resolution level goes up (``resolution_milestones``)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_step = 0
        self.level = 0
        # the run's seed: the command line seeds everything before it builds the data module
        self.seed = torch.initial_seed()

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        self.level = self.level_at(global_step)

    def level_at(self, step: int) -> int:
        return bisect.bisect_right(list(self.milestones), step)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        step = self.global_step
        while True:
            yield {"step": step}
            step += 1

    @staticmethod
    def step_of(items: list) -> Optional[int]:
        """The training step of a batch's items; None for items that carry none."""
        first = items[0] if items else None
        return int(first["step"]) if isinstance(first, dict) and "step" in first else None

    def level_for(self, step: Optional[int]) -> int:
        """The resolution level of a batch of ``step`` (None: the current level)."""
        return self.level if step is None else self.level_at(step)

    def generator_for(self, step: Optional[int], stream: str) -> Optional[torch.Generator]:
        """The generator of ``stream`` at ``step``; None (the global generators) without a step."""
        return None if step is None else step_generator(self.seed, step, stream)


class RandomCameraIterableDataset(StepNumberedDataset):
    """Endless random training cameras; resolution follows the training step."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.milestones = list(cfg.resolution_milestones)
        self.heights = [int(h) for h in _as_list(cfg.height)]
        self.widths = [int(w) for w in _as_list(cfg.width)]
        self.batch_sizes = [int(b) for b in _as_list(cfg.batch_size)]
        if len(self.batch_sizes) == 1:
            self.batch_sizes = self.batch_sizes * len(self.heights)

    @property
    def height(self) -> int:
        return self.heights[self.level]

    @property
    def width(self) -> int:
        return self.widths[self.level]

    @property
    def batch_size(self) -> int:
        return self.batch_sizes[self.level]

    def collate(self, items: list) -> Dict[str, Any]:
        """The random cameras of the step the items belong to."""
        step = self.step_of(items)
        level = self.level_for(step)
        gen = self.generator_for(step, "cameras")
        return self.sample(gen, self.heights[level], self.widths[level], self.batch_sizes[level])

    def sample(self, gen: Optional[torch.Generator], height: int, width: int, batch_size: int) -> Dict[str, Any]:
        """``batch_size`` random views at ``height`` x ``width``, every draw taken from ``gen``
        (None: the global generator)."""
        cfg = self.cfg
        n_view = cfg.n_view
        n_obj = batch_size // n_view

        def per_object(values: torch.Tensor) -> torch.Tensor:
            return values.repeat_interleave(n_view, dim=0)

        e0, e1 = cfg.elevation_range
        if torch.rand((), generator=gen) < 0.5:  # uniform in degrees
            elevation = torch.rand(n_obj, generator=gen) * (e1 - e0) + e0
        else:  # uniform on the sphere
            s0, s1 = math.sin(math.radians(e0)), math.sin(math.radians(e1))
            elevation = torch.rad2deg(torch.asin(torch.rand(n_obj, generator=gen) * (s1 - s0) + s0))
        a0, a1 = cfg.azimuth_range
        if n_view > 1:
            offsets = (torch.rand(n_obj, generator=gen)[:, None] + torch.arange(n_view)[None]) / n_view
            azimuth = (offsets * (a1 - a0) + a0).reshape(-1)
        elif cfg.batch_uniform_azimuth:
            azimuth = (torch.rand(n_obj, generator=gen) + torch.arange(n_obj)) / n_obj * (a1 - a0) + a0
        else:
            azimuth = torch.rand(n_obj, generator=gen) * (a1 - a0) + a0
        fovy = torch.rand(n_obj, generator=gen) * (cfg.fovy_range[1] - cfg.fovy_range[0]) + cfg.fovy_range[0]
        d0, d1 = cfg.camera_distance_range
        distance = torch.rand(n_obj, generator=gen) * (d1 - d0) + d0
        if cfg.relative_radius:
            distance = distance / torch.tan(deg2rad(fovy) / 2)
        elevation, fovy, distance = per_object(elevation), per_object(fovy), per_object(distance)

        pos = spherical_to_position(deg2rad(elevation), deg2rad(azimuth), distance)
        pos = pos + per_object((torch.rand(n_obj, 3, generator=gen) * 2 - 1) * cfg.camera_perturb)
        center = per_object(torch.randn(n_obj, 3, generator=gen) * cfg.center_perturb)
        up = torch.tensor([0.0, 0.0, 1.0]) + per_object(torch.randn(n_obj, 3, generator=gen) * cfg.up_perturb)
        light_dir = F.normalize(pos + torch.randn(len(pos), 3, generator=gen) * cfg.light_position_perturb, dim=-1)
        l0, l1 = cfg.light_distance_range
        light = light_dir * (torch.rand(len(pos), 1, generator=gen) * (l1 - l0) + l0)

        batch = make_batch(
            elevation, azimuth, distance, fovy, height, width,
            positions=pos, center=center, up=up, light_positions=light,
        )
        batch["n_views"] = n_view
        return batch


class OrbitDataset(Dataset):
    """Evaluation cameras on circles at fixed elevations: validation views or the turntable.

    Each orbit's first view looks at the front (azimuth 0); views are evenly spaced and the last
    one stops short of 360 degrees, so the turntable video loops without a repeated frame. Several
    elevations give consecutive orbits (``n_views`` each) in one video.
    """

    def __init__(self, cfg: Any, n_views: int, height: Optional[int] = None, width: Optional[int] = None,
                 elevations: Optional[List[float]] = None) -> None:
        self.cfg = cfg
        self.height = int(height or cfg.eval_height)
        self.width = int(width or cfg.eval_width)
        elevations = list(elevations) if elevations else [cfg.eval_elevation_deg]
        self.n_views = n_views * len(elevations)
        azimuth = (torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)).repeat(len(elevations))
        elevation = torch.tensor([float(e) for e in elevations]).repeat_interleave(n_views)
        fovy = torch.full_like(azimuth, cfg.eval_fovy_deg)
        distance = torch.full_like(azimuth, cfg.eval_camera_distance)
        if cfg.eval_relative_radius:
            distance = distance / torch.tan(deg2rad(fovy) / 2)
        self.batch = make_batch(elevation, azimuth, distance, fovy, self.height, self.width)

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = {
            k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in self.batch.items()
        }
        item["index"] = index
        return item

    def collate(self, items: list) -> Dict[str, Any]:
        out = torch.utils.data.default_collate(items)
        out["height"] = self.height
        out["width"] = self.width
        out["n_views"] = 1
        return out


def orbit_loader(cfg: Any, n_views: int, turntable: bool = False) -> DataLoader:
    """Evaluation cameras of a camera config: validation orbits (eval size) or, with
    ``turntable``, the test video (test size, every elevation of ``test_elevations_deg``)."""
    if turntable:
        elevations = [cfg.eval_elevation_deg, *cfg.test_elevations_deg]
        dataset = OrbitDataset(cfg, n_views, cfg.test_height, cfg.test_width, elevations)
    else:
        dataset = OrbitDataset(cfg, n_views)
    return DataLoader(dataset, batch_size=cfg.eval_batch_size, num_workers=0, collate_fn=dataset.collate,
                      shuffle=False)


@register("random-camera-datamodule")
class RandomCameraDataModule(pl.LightningDataModule):
    """Random training cameras (single or multi-view groups), orbit validation, turntable test."""

    Config = RandomCameraConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.train_dataset = RandomCameraIterableDataset(self.cfg)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset, batch_size=1, num_workers=0,
            collate_fn=self.train_dataset.collate,
        )

    def val_dataloader(self) -> DataLoader:
        return orbit_loader(self.cfg, self.cfg.n_val_views)

    def test_dataloader(self) -> DataLoader:
        return orbit_loader(self.cfg, self.cfg.n_test_views, turntable=True)

    def predict_dataloader(self) -> DataLoader:
        # Export needs no cameras; one item drives a single predict step.
        return orbit_loader(self.cfg, 1)
