"""The one camera convention of the project, and the ray helpers built on it.

World: right-handed, z up, object at the origin. Azimuth 0 looks at the object from +x (the
object's front), azimuth grows counter-clockwise seen from above (+x towards +y); elevation 0 is
the horizon, 90 the top. Angles are radians here (configs use degrees).

Cameras are ``c2w`` 4x4 matrices with OpenGL camera axes: columns are right, up, back (= minus the
look direction) and the position. Pixel (i, j) of an H x W image looks along
``((i + 0.5 - W/2) / f, -(j + 0.5 - H/2) / f, -1)`` in camera space, ``f = H / 2 / tan(fovy / 2)``.
Models with other conventions convert from this one inside their guidance module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Number = Union[float, Tensor]


def spherical_to_position(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """Camera positions ``[B, 3]`` for elevation/azimuth (radians) and distance ``[B]``."""
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )


def spherical_coordinates(positions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(polar, azimuth, radius)`` of positions ``[..., 3]``: polar angle from +z (radians),
    azimuth ``atan2(y, x)`` (our azimuth), distance from the origin."""
    x, y, z = positions.unbind(-1)
    polar = torch.atan2(torch.sqrt(x**2 + y**2), z)
    return polar, torch.atan2(y, x), positions.norm(dim=-1)


def look_at(position: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """``c2w`` ``[B, 4, 4]`` for cameras at ``position`` ``[B, 3]`` looking at ``target``.

    ``up`` (``[3]`` or ``[B, 3]``) defaults to +z; cameras straight above or below the target use +x as the hint
    instead so that the frame stays well defined.
    """
    batch = position.shape[0]
    if target is None:
        target = torch.zeros_like(position)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device)
    up = up.to(position.dtype).expand(batch, 3)
    forward = F.normalize(target - position, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.tensor([1.0, 0.0, 0.0], dtype=position.dtype, device=position.device).expand(batch, 3)
    right = torch.where(degenerate, torch.cross(forward, alt, dim=-1), right)
    right = F.normalize(right, dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(batch, 4, 4, dtype=position.dtype, device=position.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def c2w_from_spherical(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """``c2w`` ``[B, 4, 4]`` of cameras on a sphere looking at the origin (radians)."""
    return look_at(spherical_to_position(elevation, azimuth, distance))


def focal_from_fovy(height: int, fovy: Tensor) -> Tensor:
    """Focal length in pixels for a vertical field of view ``fovy`` (radians)."""
    return 0.5 * height / torch.tan(0.5 * fovy)


def ray_directions(height: int, width: int, focal: Number, device=None) -> Tensor:
    """Camera-space ray directions ``[H, W, 3]`` (not normalised) through pixel centres."""
    if isinstance(focal, Tensor):
        focal = focal.item()
    j, i = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device) + 0.5,
        torch.arange(width, dtype=torch.float32, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack(
        [(i - 0.5 * width) / focal, -(j - 0.5 * height) / focal, -torch.ones_like(i)], dim=-1
    )


def get_rays(directions: Tensor, c2w: Tensor, normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """World-space rays for camera-space ``directions`` ``[B, H, W, 3]`` (or ``[H, W, 3]``).

    Returns ``rays_o``, ``rays_d``, both ``[B, H, W, 3]``.
    """
    if directions.dim() == 3:
        directions = directions.unsqueeze(0).expand(c2w.shape[0], -1, -1, -1)
    rot = c2w[:, None, None, :3, :3]
    rays_d = (rot * directions[..., None, :]).sum(-1)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    return rays_o, rays_d


def rays_for_cameras(c2w: Tensor, fovy: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Rays ``[B, H, W, 3]`` of cameras with per-camera vertical fov ``fovy`` ``[B]`` (radians)."""
    focal = focal_from_fovy(height, fovy)
    dirs = torch.stack([ray_directions(height, width, f, device=c2w.device) for f in focal])
    return get_rays(dirs.to(c2w.dtype), c2w)


def projection_matrix(fovy: Tensor, aspect: float, near: float = 0.1, far: float = 1000.0) -> Tensor:
    """OpenGL perspective projection ``[B, 4, 4]``."""
    batch = fovy.shape[0]
    proj = torch.zeros(batch, 4, 4, dtype=fovy.dtype, device=fovy.device)
    t = torch.tan(fovy / 2)
    proj[:, 0, 0] = 1.0 / (t * aspect)
    proj[:, 1, 1] = 1.0 / t
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def mvp_matrix(c2w: Tensor, proj: Tensor) -> Tensor:
    """Model-view-projection ``[B, 4, 4]`` (world -> clip space)."""
    return proj @ torch.linalg.inv(c2w)


def deg2rad(x: Union[float, Tensor]) -> Union[float, Tensor]:
    return x * math.pi / 180.0


# ------------------------------------------------------------------------------------------
# the cameras handed to a guidance


@dataclass
class Cameras:
    """A batch of cameras in this convention, as every guidance receives them.

    Systems build it from a data batch (:meth:`from_batch`), tests and samplers from matrices
    (:meth:`from_c2w`); a guidance never reads loose batch keys, so a missing camera is an error,
    not a silently disabled feature.
    """

    c2w: Tensor
    """``[B, 4, 4]`` camera-to-world matrices."""
    elevation: Tensor
    """``[B]`` degrees above the horizon."""
    azimuth: Tensor
    """``[B]`` degrees, 0 = +x = the object's front."""
    distance: Tensor
    """``[B]`` distance from the origin."""
    fovy: Optional[Tensor] = None
    """``[B]`` vertical field of view in degrees (None where the caller has none)."""
    n_views: int = 1
    """Views per object; the batch holds groups of ``n_views`` consecutive views."""

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @classmethod
    def from_c2w(cls, c2w: Tensor, fovy: Optional[Tensor] = None, n_views: int = 1) -> "Cameras":
        """Cameras whose angles and distances are read off their positions."""
        c2w = c2w.reshape(-1, 4, 4)
        polar, azimuth, radius = spherical_coordinates(c2w[:, :3, 3].float())
        return cls(c2w, 90.0 - torch.rad2deg(polar), torch.rad2deg(azimuth), radius, fovy, n_views)

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> "Cameras":
        """The cameras of a data batch (``c2w``, ``elevation``, ``azimuth``, ``camera_distances``,
        ``fovy``, ``n_views``), with angles in degrees as the data modules give them."""
        missing = [k for k in ("c2w", "elevation", "azimuth", "camera_distances") if k not in batch]
        if missing:
            raise KeyError(f"The data batch has no {', '.join(missing)}: use a data module of this package "
                           f"(random-camera-datamodule or single-image-datamodule).")
        n_views = batch.get("n_views", 1)
        n_views = int(n_views.reshape(-1)[0]) if torch.is_tensor(n_views) else int(n_views or 1)
        return cls(batch["c2w"], batch["elevation"], batch["azimuth"], batch["camera_distances"],
                   batch.get("fovy"), n_views)
