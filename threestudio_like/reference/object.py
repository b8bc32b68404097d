"""The bundled reference object: a small procedural shape with a known answer.

Analytic signed distances and colours of a few primitives: a body, a head with a face (eyes and
nose) on the front at +x, a tail on the back, front and back halves of the body in different
colours, so that front/back confusions (the Janus problem) are visible and measurable. The
reference-object prior (``reference-object-guidance``) renders it as its data set, the Janus lab
unrolls it into a turntable texture, and tests measure reconstructions against
:meth:`ReferenceObjectGeometry.occupancy`. :func:`variant_parts` makes procedural relatives of it,
the "other objects" of the prior's unconditional branch.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseModule
from threestudio_like.errors import ConfigError
from threestudio_like.geometry.isosurface import marching_cubes

# (kind, centre, size, colour): spheres have a radius, ellipsoids radii, capsules an end point
# and a radius. The front (+x) carries a face; the back (-x) a tail.
_PRIMITIVES: List[Tuple[str, Tuple[float, ...], Tuple[float, ...], Tuple[float, float, float]]] = [
    ("ellipsoid", (0.0, 0.0, -0.05), (0.42, 0.32, 0.34), (0.95, 0.55, 0.12)),  # body (front colour)
    ("sphere", (0.36, 0.0, 0.26), (0.21,), (0.96, 0.86, 0.70)),  # head
    ("sphere", (0.53, 0.085, 0.33), (0.05,), (0.05, 0.05, 0.05)),  # eye
    ("sphere", (0.53, -0.085, 0.33), (0.05,), (0.05, 0.05, 0.05)),  # eye
    ("sphere", (0.57, 0.0, 0.24), (0.05,), (0.85, 0.10, 0.10)),  # nose
    ("capsule", (-0.35, 0.0, 0.0, -0.62, 0.0, 0.38), (0.075,), (0.10, 0.45, 0.15)),  # tail
]
_BACK_COLOUR = (0.15, 0.35, 0.90)  # body colour behind the x = 0 plane
_FLOATERS = ((0.75, 0.7, 0.7, 0.07), (-0.7, -0.7, -0.6, 0.05), (0.0, 0.75, -0.75, 0.06))  # centre, radius


def _sdf_primitive(kind: str, centre: Tuple[float, ...], size: Tuple[float, ...], p: Tensor) -> Tensor:
    if kind == "sphere":
        return (p - p.new_tensor(centre)).norm(dim=-1) - size[0]
    if kind == "ellipsoid":
        # A standard first-order distance bound for ellipsoids (exact on the axes).
        radii = p.new_tensor(size)
        q = (p - p.new_tensor(centre)) / radii
        k0 = q.norm(dim=-1)
        k1 = (q / radii).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1.0) / k1
    if kind == "capsule":
        a, b = p.new_tensor(centre[:3]), p.new_tensor(centre[3:])
        ab = b - a
        h = (((p - a) * ab).sum(-1) / (ab * ab).sum()).clamp(0, 1)
        return (p - a - h[..., None] * ab).norm(dim=-1) - size[0]
    raise ConfigError(f"Unknown primitive kind {kind!r}.")


def variant_parts(variant: int):
    """``(primitives, back colour, yaw in degrees)`` of the reference object (``variant`` 0) or of
    one of its procedural relatives (``variant`` > 0, seeded): every primitive recoloured,
    resized (x0.7-1.3) and nudged, the face (eyes and nose) or the tail dropped at random, the
    whole turned by a random yaw. They are the "other objects" of the reference prior's
    unconditional data set."""
    if variant == 0:
        return _PRIMITIVES, _BACK_COLOUR, 0.0
    rng = random.Random(variant)
    drop_face, drop_tail = rng.random() < 0.5, rng.random() < 0.3
    prims = []
    for i, (kind, centre, size, _) in enumerate(_PRIMITIVES):
        if (drop_face and i in (2, 3, 4)) or (drop_tail and kind == "capsule"):
            continue
        shift = [rng.uniform(-0.05, 0.05) for _ in range(3)]
        centre = tuple(c + shift[j % 3] for j, c in enumerate(centre))
        factor = rng.uniform(0.7, 1.3)
        colour = tuple(rng.random() for _ in range(3))
        prims.append((kind, centre, tuple(x * factor for x in size), colour))
    back = tuple(rng.random() for _ in range(3))
    return prims, back, rng.uniform(0.0, 360.0)


@register("reference-object-geometry")
class ReferenceObjectGeometry(BaseModule):
    """The procedural reference object as a geometry: analytic density and colour features."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        """Half size of the scene box the renderer marches through."""
        density_scale: float = 200.0
        """Density deep inside the object."""
        softness: float = 0.01
        """Width of the surface transition (world units)."""
        isosurface_threshold: float = 100.0
        """Density level at the surface (half of density_scale)."""
        variant: int = 0
        """0: the reference object; k > 0: its k-th procedural relative (:func:`variant_parts`)."""
        ripple: float = 0.0
        """Amplitude (world units) of a sinusoidal ripple on the density's surface (export tests)."""
        floaters: bool = False
        """Add three small blobs floating off the object to the density (export clean-up tests)."""

    cfg: Config

    def configure(self) -> None:
        self.primitives, self.back_colour, self.yaw_deg = variant_parts(self.cfg.variant)

    def _local(self, points: Tensor) -> Tensor:
        """World points in the object's own frame (undoes the variant's yaw)."""
        if self.yaw_deg == 0.0:
            return points
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        x, y = points[..., 0], points[..., 1]
        return torch.stack([c * x + s * y, -s * x + c * y, points[..., 2]], -1)

    def sdf(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Signed distance to the object and the index of the closest primitive."""
        p = self._local(points)
        dists = torch.stack([_sdf_primitive(k, c, s, p) for k, c, s, _ in self.primitives], dim=-1)
        return dists.min(dim=-1)

    def occupancy(self, points: Tensor) -> Tensor:
        """Boolean inside-test, the ground truth for IoU."""
        return self.sdf(points)[0] < 0

    def colour(self, points: Tensor, nearest: Tensor) -> Tensor:
        palette = points.new_tensor([c for *_, c in self.primitives])
        rgb = palette[nearest]
        back = points.new_tensor(self.back_colour)
        is_back_body = (nearest == 0) & (self._local(points)[..., 0] < 0)
        return torch.where(is_back_body[..., None], back.expand_as(rgb), rgb)

    def _density(self, points: Tensor, sdf: Tensor) -> Tensor:
        """Density ``[..., 1]`` from the object's distance, with the configured ripple and
        floaters (which :meth:`occupancy`, the object itself, leaves out)."""
        if self.cfg.ripple:
            wave = torch.sin(37 * points[..., 0]) * torch.sin(41 * points[..., 1]) * torch.sin(29 * points[..., 2])
            sdf = sdf + self.cfg.ripple * wave
        if self.cfg.floaters:
            for *centre, radius in _FLOATERS:
                sdf = torch.minimum(sdf, (points - points.new_tensor(centre)).norm(dim=-1) - radius)
        return (self.cfg.density_scale * torch.sigmoid(-sdf / self.cfg.softness))[..., None]

    def forward_density(self, points: Tensor) -> Tensor:
        return self._density(points, self.sdf(points)[0])

    def forward(self, points: Tensor, output_normal: bool = False) -> Dict[str, Tensor]:
        sdf, nearest = self.sdf(points)
        return {"density": self._density(points, sdf), "features": self.colour(points, nearest)}

    def export(self, points: Tensor) -> Dict[str, Tensor]:
        return {"features": self.colour(points, self.sdf(points)[1])}

    def isosurface(self, resolution: Optional[int] = None, threshold: Optional[float] = None,
                   on_miss: str = "raise", with_level: bool = False):
        """Marching-cubes mesh of the object (``vertices [V, 3]``, ``faces [F, 3]``; ``on_miss`` and
        ``with_level`` as :func:`~threestudio_like.geometry.isosurface.marching_cubes`)."""
        r = self.cfg.radius
        return marching_cubes(
            lambda x: self.forward_density(x)[..., 0],
            resolution or 128,
            (-r, -r, -r),
            (r, r, r),
            self.cfg.isosurface_threshold if threshold is None else threshold,
            on_miss=on_miss,
            with_level=with_level,
        )
