"""A small CPU/GPU ray caster for triangle meshes, to check exported assets without OpenGL.

Cameras follow :mod:`threestudio_like.cameras` (``c2w`` with OpenGL axes; pixel ``(row j, col i)``
looks along ``((i + 0.5 - W/2) / f, -(j + 0.5 - H/2) / f, -1)`` in camera space, ``f = H / 2 /
tan(fovy / 2)``). A vertex at camera-space ``(x, y, z)`` (depth ``d = -z > 0``) projects to the
pixel-centre coordinates ``(x f / d + W/2 - 0.5, -y f / d + H/2 - 0.5)``.

**Candidates, then exact hits.** Each triangle is projected, and only the pixels inside its
projected bounding box (:func:`.raster.candidate_pairs`) are tested against it, in 3D, with the
Moller-Trumbore ray/triangle test: for the ray ``o + t d`` and triangle ``(V0, V1, V2)`` with
``E1 = V1 - V0``, ``E2 = V2 - V0``, ``T = o - V0``, ``P = d x E2``, ``Q = T x E1`` and
``det = E1 . P``, the hit has ``u = T . P / det``, ``v = d . Q / det``, ``t = E2 . Q / det``; it
counts when ``u, v >= 0``, ``u + v <= 1`` and ``t > 0``, and ``(1 - u - v, u, v)`` are its
barycentrics (perspective-correct, being computed in 3D). The nearest hit per pixel wins (min
``t``, ties to the larger triangle index). Triangles with a vertex behind the camera are skipped:
the renderer is meant for whole objects in front of the camera.

**Shading.** A hit is coloured from a texture (UVs interpolated with the barycentrics, then
:func:`.texture.sample_texture`, bilinear, as a viewer would), from per-vertex colours
(interpolated), or from a colour function at the hit point. ``supersample = s`` casts ``s x s``
rays per pixel and averages them (box filter), i.e. an anti-aliased image.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.cameras import c2w_from_spherical
from threestudio_like.errors import ConfigError, at_least
from threestudio_like.export.raster import candidate_pairs
from threestudio_like.export.texture import sample_texture

ArrayLike = np.ndarray | Tensor
HIT_EPS = 1e-6
"""Barycentric tolerance of a hit, so that rays through shared edges hit one of the triangles."""


@dataclass
class Hits:
    """Nearest ray hits of one (supersampled) image of ``H*s x W*s`` rays."""

    face: Tensor
    """``[H*s, W*s]`` long: triangle hit, -1 for background."""
    bary: Tensor
    """``[H*s, W*s, 3]`` barycentrics of the hit in its triangle (0 for background)."""
    points: Tensor
    """``[H*s, W*s, 3]`` world position of the hit (0 for background)."""
    supersample: int
    """Rays per pixel along each axis."""


def turntable_cameras(
    n_views: int, elevation_deg: float = 15.0, distance: float = 2.5, start_deg: float = 0.0
) -> Tensor:
    """``c2w`` ``[n, 4, 4]`` of ``n_views`` cameras evenly around the z axis, looking at the origin."""
    at_least("n_views", n_views, 1)
    azimuth = torch.tensor([math.radians(start_deg + 360.0 * k / n_views) for k in range(n_views)])
    elevation = torch.full_like(azimuth, math.radians(elevation_deg))
    return c2w_from_spherical(elevation, azimuth, torch.full_like(azimuth, float(distance)))


def _moller_trumbore(origin: Tensor, d: Tensor, tri: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(t, barycentrics [N, 3], hit mask)`` of rays ``origin + t d`` (``[3]``, ``[N, 3]``) and
    triangles ``tri`` ``[N, 3, 3]``."""
    v0, v1, v2 = tri.unbind(1)
    e1, e2 = v1 - v0, v2 - v0
    p = torch.cross(d, e2, dim=-1)
    det = (e1 * p).sum(-1)
    ok = det.abs() > 1e-12
    inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
    tv = origin - v0
    u = (tv * p).sum(-1) * inv
    q = torch.cross(tv, e1, dim=-1)
    v = (d * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    hit = ok & (u >= -HIT_EPS) & (v >= -HIT_EPS) & (u + v <= 1 + HIT_EPS) & (t > 0)
    return t, torch.stack([1 - u - v, u, v], -1), hit


def cast(
    vertices: ArrayLike,
    faces: ArrayLike,
    c2w: Tensor,
    fovy_deg: float = 40.0,
    size: int = 128,
    supersample: int = 1,
    device: torch.device | None = None,
) -> Hits:
    """Cast one ray per sub-pixel of a ``size x size`` image (``supersample`` squared per pixel)
    from camera ``c2w`` ``[4, 4]`` and return the nearest hit of each."""
    at_least("size", size, 1)
    at_least("supersample", supersample, 1)
    device = torch.device(device) if device is not None else torch.device("cpu")
    verts = torch.as_tensor(vertices).to(device, torch.float32)
    faces_t = torch.as_tensor(faces).to(device, torch.long)
    c2w = torch.as_tensor(c2w).to(device, torch.float32).reshape(4, 4)
    n = int(size) * int(supersample)
    focal = 0.5 * n / math.tan(math.radians(fovy_deg) / 2)
    rot, origin = c2w[:3, :3], c2w[:3, 3]
    cam = (verts - origin) @ rot  # camera-space coordinates (x right, y up, z back)
    depth = -cam[:, 2]
    scale = focal / depth.clamp_min(1e-9)
    xy = torch.stack([cam[:, 0] * scale + n / 2 - 0.5, -cam[:, 1] * scale + n / 2 - 0.5], -1)
    keep = (depth[faces_t] > 1e-6).all(-1)
    kept = torch.nonzero(keep).squeeze(-1)

    def rays(rows: Tensor, cols: Tensor) -> Tensor:
        d_cam = torch.stack(
            [(cols + 0.5 - n / 2) / focal, -(rows + 0.5 - n / 2) / focal, -torch.ones_like(rows, dtype=torch.float32)],
            -1,
        )
        return d_cam @ rot.T

    keys, tris, ts = [], [], []
    for local, rows, cols in candidate_pairs(xy[faces_t[kept]], n, n, max_pairs=1 << 21):
        tri = kept[local]
        t, _, hit = _moller_trumbore(origin, rays(rows.float(), cols.float()), verts[faces_t[tri]])
        keys.append((rows * n + cols)[hit])
        tris.append(tri[hit])
        ts.append(t[hit])
    face = torch.full((n * n,), -1, dtype=torch.long, device=device)
    if keys:
        key, tri, t = torch.cat(keys), torch.cat(tris), torch.cat(ts)
        tmin = torch.full((n * n,), float("inf"), device=device).scatter_reduce(0, key, t, reduce="amin")
        front = t <= tmin[key]
        face.scatter_reduce_(0, key[front], tri[front], reduce="amax")
    face = face.view(n, n)
    bary = torch.zeros(n, n, 3, device=device)
    points = torch.zeros(n, n, 3, device=device)
    rows, cols = torch.nonzero(face >= 0, as_tuple=True)
    if len(rows):
        tri_v = verts[faces_t[face[rows, cols]]]
        _, weights, _ = _moller_trumbore(origin, rays(rows.float(), cols.float()), tri_v)
        bary[rows, cols] = weights
        points[rows, cols] = (weights[..., None] * tri_v).sum(1)
    return Hits(face=face, bary=bary, points=points, supersample=int(supersample))


def _interpolate(hits: Hits, faces: Tensor, attribute: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-vertex ``attribute`` ``[V, C]`` interpolated at the hits: ``(rows, cols, values [N, C])``."""
    rows, cols = torch.nonzero(hits.face >= 0, as_tuple=True)
    corner = attribute[faces[hits.face[rows, cols]]]  # [N, 3, C]
    return rows, cols, (hits.bary[rows, cols, :, None].to(corner.dtype) * corner).sum(1)


@torch.no_grad()
def shade(
    hits: Hits,
    faces: ArrayLike | None = None,
    uvs: ArrayLike | None = None,
    image: ArrayLike | None = None,
    vertex_colours: ArrayLike | None = None,
    colour_fn: Callable[[Tensor], Tensor] | None = None,
    background: float = 1.0,
    chunk: int = 262144,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour the hits with exactly one source: a texture (``faces``, ``uvs`` ``[V, 2]`` and
    ``image`` ``[H, W, 3]``), ``vertex_colours`` ``[V, 3]`` in [0, 1] (with ``faces``) or
    ``colour_fn`` (world points -> colours). Returns ``(rgb [H, W, 3] float32 in [0, 1],
    coverage [H, W] float32)`` after averaging the supersampled rays."""
    sources = [uvs is not None and image is not None, vertex_colours is not None, colour_fn is not None]
    if sum(sources) != 1:
        raise ConfigError("shade: give exactly one of (uvs and image), vertex_colours or colour_fn.")
    device = hits.face.device
    out = torch.full((*hits.face.shape, 3), float(background), device=device)
    faces_t = None if faces is None else torch.as_tensor(faces).to(device, torch.long)
    if colour_fn is not None:
        rows, cols = torch.nonzero(hits.face >= 0, as_tuple=True)
        pts = hits.points[rows, cols]
        values = torch.cat([colour_fn(p)[:, :3].float().to(device) for p in pts.split(chunk)]) if len(pts) else pts
    else:
        if faces_t is None:
            raise ConfigError("shade: a texture or vertex colours need the mesh's faces.")
        attribute = uvs if vertex_colours is None else vertex_colours
        attribute = torch.as_tensor(attribute).to(device, torch.float32)
        rows, cols, values = _interpolate(hits, faces_t, attribute)
        if vertex_colours is None:
            values = sample_texture(torch.as_tensor(image).to(device), values)
    out[rows, cols] = values.clamp(0, 1)
    s = hits.supersample
    cover = (hits.face >= 0).float()[None, None]
    rgb = F.avg_pool2d(out.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
    return rgb.cpu().numpy(), F.avg_pool2d(cover, s)[0, 0].cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (dB, peak 1) of two images in [0, 1], over ``mask`` pixels if given."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is not None:
        diff = diff[np.asarray(mask, bool)]
    mse = float(diff.mean()) if diff.size else 0.0
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)
