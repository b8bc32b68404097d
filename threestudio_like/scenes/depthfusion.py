"""DepthFusion-style scenes: an RGBD image (LDM3D's) -> a textured mesh around the viewer, a GLB
and a video.

**Equirectangular geometry** (:func:`equirect_directions`). Pixel ``(u, v)`` of a ``W x H``
panorama (centre ``(u + 0.5, v + 0.5)``) looks along longitude
``lon = pi - 2 pi (u + 0.5) / W`` and latitude ``lat = pi / 2 - pi (v + 0.5) / H``, i.e.
``d = (cos lat cos lon, cos lat sin lon, sin lat)`` in our world (z up): the centre column
looks along +x (the front), moving right in the image turns right (towards -y, as seen from a
viewer inside the sphere), the top row looks up and the left and right edges meet behind (-x).

**Depth.** LDM3D's depth is relative inverse depth (disparity) normalised per image to [0, 1]
(1 = nearest). It fixes distance only up to an affine map of ``1 / r``: with the scene's
``near`` and ``far`` distances, ``1 / r = 1 / far + x (1 / near - 1 / far)``
(:func:`distance_from_disparity`); panoramas measure ``r`` along the ray, perspective images
along the optical axis (planar depth).

**Meshes.** One vertex per pixel at ``d r`` (:func:`sphere_mesh`, :func:`perspective_mesh`),
two triangles per pixel quad, wound to face the viewer. The panorama's seam is closed by a
duplicated first column (same positions, ``u = 1`` texture coordinates) and each pole by a row
of vertices at the pole (at the mean distance of the first / last row). Quads spanning a depth
discontinuity (distance ratio above ``max_depth_ratio``) are cut rather than stretched.

**Export and video.** :func:`save_glb` writes through the asset exporter's GLB writer in glTF's +Y-up frame (our x -> their Z, z -> Y,
y -> X), the image as the base-colour texture. :func:`render_mesh` rasterises the mesh into a
pinhole camera (nearest triangle wins; a preview renderer); :func:`pano_video` turns a
full circle from the centre on a small parallax circle, :func:`orbit_video` swings around a
perspective 2.5D mesh.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from threestudio_like.cameras import focal_from_fovy, look_at, ray_directions
from threestudio_like.models.rgbd import depth16_to_unit
from threestudio_like.utils.files import atomic_path

# ------------------------------------------------------------------------------------------
# geometry


def equirect_directions(height: int, width: int) -> Tensor:
    """Unit directions ``[H, W, 3]`` of an equirectangular panorama's pixel centres (module doc)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    lon = math.pi - 2.0 * math.pi * u / width
    lat = 0.5 * math.pi - math.pi * v / height
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1)


def perspective_directions(height: int, width: int, fovy_deg: float) -> Tensor:
    """Camera-space pixel rays ``[H, W, 3]`` with unit depth along the view axis (-z, OpenGL)."""
    focal = focal_from_fovy(height, torch.tensor(math.radians(fovy_deg)))
    return ray_directions(height, width, float(focal)).double()


def distance_from_disparity(unit: Tensor, near: float, far: float) -> Tensor:
    """Normalised disparity in [0, 1] (1 = nearest) -> distance in ``[near, far]``."""
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}.")
    return 1.0 / (1.0 / far + unit.double().clamp(0, 1) * (1.0 / near - 1.0 / far))


def disparity_from_distance(distance: Tensor, near: float, far: float) -> Tensor:
    """The inverse of :func:`distance_from_disparity` (for synthetic panoramas and tests)."""
    return ((1.0 / distance.double() - 1.0 / far) / (1.0 / near - 1.0 / far)).clamp(0, 1)


@dataclass
class SceneMesh:
    """A textured triangle mesh in our world frame (z up)."""

    vertices: np.ndarray
    """``[V, 3]`` float."""
    faces: np.ndarray
    """``[F, 3]`` int, wound so that their normals face the viewer."""
    uv: np.ndarray
    """``[V, 2]`` texture coordinates (v = 0 at the image's bottom row, glTF flips it on export)."""
    texture: np.ndarray
    """``[H, W, 3]`` uint8 image."""
    colours: np.ndarray
    """``[V, 3]`` uint8 colour of each vertex (its pixel's), for the preview renderer."""


def _grid_faces(rows: int, cols: int, keep: np.ndarray) -> np.ndarray:
    """Two triangles per quad of a ``rows x cols`` vertex grid, where ``keep`` ``[rows-1, cols-1]``."""
    idx = np.arange(rows * cols).reshape(rows, cols)
    a, b = idx[:-1, :-1][keep], idx[:-1, 1:][keep]
    c, d = idx[1:, :-1][keep], idx[1:, 1:][keep]
    return np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)], 0)


def _continuous(dist: np.ndarray, max_ratio: float) -> np.ndarray:
    """``[R-1, C-1]``: quads whose four distances stay within ``max_ratio`` of each other."""
    quad = np.stack([dist[:-1, :-1], dist[:-1, 1:], dist[1:, :-1], dist[1:, 1:]], 0)
    return quad.max(0) <= max_ratio * quad.min(0)


def sphere_mesh(rgb: np.ndarray, depth16: np.ndarray, near: float, far: float,
                max_depth_ratio: float = 1.1) -> SceneMesh:
    """An equirectangular RGBD panorama (``uint8 [H, W, 3]``, ``uint16 [H, W]`` LDM3D depth) ->
    the spherical mesh around the viewer at the origin (module doc)."""
    height, width = depth16.shape
    dist = distance_from_disparity(torch.from_numpy(depth16_to_unit(depth16)), near, far).numpy()
    dirs = equirect_directions(height, width).numpy()
    cols = np.r_[np.arange(width), 0]  # the seam: column 0 again, at u = 1
    grid = dirs[:, cols] * dist[:, cols, None]
    top = np.repeat([[0.0, 0.0, dist[0].mean()]], width + 1, 0)
    bottom = np.repeat([[0.0, 0.0, -dist[-1].mean()]], width + 1, 0)
    vertices = np.concatenate([top[None], grid, bottom[None]], 0)  # [H + 2, W + 1, 3]
    u = np.r_[np.arange(width) + 0.5, width + 0.5] / width
    u[-1] = 1.0 + 0.5 / width
    v = np.r_[0.0, np.arange(height) + 0.5, height] / height
    uv = np.stack(np.broadcast_arrays(u[None, :], 1.0 - v[:, None]), -1)
    dist_grid = np.concatenate([np.full((1, width + 1), dist[0].mean()), dist[:, cols],
                                np.full((1, width + 1), dist[-1].mean())], 0)
    faces = _grid_faces(height + 2, width + 1, _continuous(dist_grid, max_depth_ratio))
    colour_rows = np.concatenate([rgb[:1], rgb, rgb[-1:]], 0)[:, cols]
    mesh = SceneMesh(vertices.reshape(-1, 3), faces, uv.reshape(-1, 2), rgb, colour_rows.reshape(-1, 3))
    return _facing_origin(mesh)


def perspective_mesh(rgb: np.ndarray, depth16: np.ndarray, fovy_deg: float, near: float, far: float,
                     max_depth_ratio: float = 1.1) -> SceneMesh:
    """A perspective RGBD image -> its 2.5D mesh in front of a camera at the origin looking along
    +x with z up (planar depth along the view axis)."""
    height, width = depth16.shape
    z = distance_from_disparity(torch.from_numpy(depth16_to_unit(depth16)), near, far).numpy()
    cam = perspective_directions(height, width, fovy_deg).numpy() * z[..., None]  # x right, y up, -z forward
    vertices = np.stack([-cam[..., 2], -cam[..., 0], cam[..., 1]], -1)  # forward -> +x, right -> -y, up -> z
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    uv = np.stack([u / width, 1.0 - v / height], -1)
    faces = _grid_faces(height, width, _continuous(z, max_depth_ratio))
    mesh = SceneMesh(vertices.reshape(-1, 3), faces, uv.reshape(-1, 2), rgb, rgb.reshape(-1, 3))
    return _facing_origin(mesh)


def _facing_origin(mesh: SceneMesh) -> SceneMesh:
    """Flip the winding if most faces turn their back on the viewer at the origin."""
    tri = mesh.vertices[mesh.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if (normal * tri.mean(1)).sum(-1).mean() > 0:
        mesh.faces = mesh.faces[:, ::-1].copy()
    return mesh


# ------------------------------------------------------------------------------------------
# export


def save_glb(mesh: SceneMesh, path: str) -> str:
    """The mesh with its texture as a GLB in glTF's +Y-up frame, through the asset exporter's
    writer (double-sided: the scene is seen from inside)."""
    from threestudio_like.export.cleanup import vertex_normals
    from threestudio_like.export.formats import ExportMesh, write_glb
    from threestudio_like.export.frames import to_export_frame

    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int64)
    normals = vertex_normals(vertices, faces)
    export = ExportMesh(to_export_frame(vertices, "y"), faces, to_export_frame(normals, "y"),
                        uvs=np.asarray(mesh.uv, np.float32), image=np.asarray(mesh.texture, np.uint8))
    return write_glb(path, export, os.path.splitext(os.path.basename(path))[0], double_sided=True)


# ------------------------------------------------------------------------------------------
# preview videos


def render_mesh(mesh: SceneMesh, c2w: Tensor, fovy_deg: float, height: int, width: int,
                near: float = 1e-3) -> Tensor:
    """The mesh seen by a pinhole camera ``c2w`` ``[4, 4]`` (OpenGL axes): ``[H, W, 3]`` uint8,
    vertex colours interpolated, black where nothing is seen.

    Triangles with a vertex behind ``near`` are dropped; the rest are sorted far to near, so the
    rasteriser's "largest index wins" rule keeps the nearest one at every pixel (a painter's
    z-test, exact for meshes whose triangles do not interpenetrate).
    """
    from threestudio_like.export.raster import rasterise

    w2c = torch.linalg.inv(c2w.double())
    cam = torch.from_numpy(mesh.vertices).double() @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    faces = torch.from_numpy(mesh.faces).long()
    faces = faces[(depth[faces] > near).all(1)]
    faces = faces[torch.argsort(depth[faces].mean(1), descending=True)]
    focal = float(focal_from_fovy(height, torch.tensor(math.radians(fovy_deg))))
    z = depth.clamp_min(near)
    xy = torch.stack([cam[:, 0] / z * focal + 0.5 * width - 0.5, -cam[:, 1] / z * focal + 0.5 * height - 0.5], -1)
    ids, bary = rasterise(xy[faces].float(), height, width)
    colours = torch.from_numpy(mesh.colours).float()
    covered = ids >= 0
    tri_colours = colours[faces[ids[covered]]]  # [N, 3 vertices, 3]
    image = torch.zeros(height, width, 3)
    image[covered] = (bary[covered][..., None] * tri_colours).sum(1)
    return image.round().clamp(0, 255).to(torch.uint8)


def _write_video(frames: List[np.ndarray], path: str, fps: int) -> str:
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1, format="FFMPEG")
    return path


def pano_video(mesh: SceneMesh, path: str, n_frames: int = 60, size: Tuple[int, int] = (256, 384),
               fovy_deg: float = 75.0, parallax: float = 0.05, fps: int = 20) -> List[np.ndarray]:
    """A 360-degree turn from the centre while the camera moves on a circle of radius
    ``parallax`` (scene units); writes ``path`` (mp4) and returns the frames."""
    frames = []
    for k in range(n_frames):
        az = 2 * math.pi * k / n_frames
        eye = torch.tensor([parallax * math.cos(az), parallax * math.sin(az), 0.0], dtype=torch.float64)
        target = eye + torch.tensor([math.cos(az), math.sin(az), 0.0], dtype=torch.float64)
        c2w = look_at(eye[None], target[None])[0]
        frames.append(render_mesh(mesh, c2w, fovy_deg, *size).numpy())
    _write_video(frames, path, fps)
    return frames


def orbit_video(mesh: SceneMesh, path: str, n_frames: int = 40, size: Tuple[int, int] = (256, 256),
                fovy_deg: float = 60.0, swing_deg: float = 15.0, fps: int = 20) -> List[np.ndarray]:
    """A swing of +-``swing_deg`` around the 2.5D mesh's centre (at its median distance along
    +x), seen from the original camera distance; writes ``path`` (mp4), returns the frames."""
    centre = float(np.median(mesh.vertices[:, 0]))
    frames = []
    for k in range(n_frames):
        az = math.radians(swing_deg) * math.sin(2 * math.pi * k / n_frames)
        eye = torch.tensor([centre - centre * math.cos(az), -centre * math.sin(az), 0.0], dtype=torch.float64)
        c2w = look_at(eye[None], torch.tensor([[centre, 0.0, 0.0]], dtype=torch.float64))[0]
        frames.append(render_mesh(mesh, c2w, fovy_deg, *size).numpy())
    _write_video(frames, path, fps)
    return frames


def build_scene(rgb: np.ndarray, depth16: np.ndarray, folder: str, stem: str, kind: str = "pano",
                near: float = 1.0, far: float = 10.0, fovy_deg: float = 60.0,
                max_depth_ratio: float = 1.1, frames: Optional[int] = None) -> Dict[str, str]:
    """A panorama (``kind='pano'``) or perspective image -> ``<stem>-scene.glb`` and
    ``<stem>-scene.mp4`` (360-degree turn / orbit) in ``folder``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    if kind == "pano":
        mesh = sphere_mesh(rgb, depth16, near, far, max_depth_ratio)
    elif kind == "perspective":
        mesh = perspective_mesh(rgb, depth16, fovy_deg, near, far, max_depth_ratio)
    else:
        raise ValueError(f"unknown scene kind {kind!r} (pano | perspective).")
    glb = save_glb(mesh, os.path.join(folder, f"{stem}-scene.glb"))
    video = os.path.join(folder, f"{stem}-scene.mp4")
    if kind == "pano":
        pano_video(mesh, video, n_frames=frames or 60)
    else:
        orbit_video(mesh, video, n_frames=frames or 40)
    return {"glb": glb, "video": video}
