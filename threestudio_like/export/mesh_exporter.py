"""Mesh export: marching cubes over the density field, vertex colours from the colour field.

Meshes are written by trimesh in the world frame of the project (z up, front at +x) as
``.obj`` (vertex colours), ``.glb`` and ``.ply``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, List, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseObject
from threestudio_like.errors import at_least

MeshFormat = Literal["obj", "glb", "ply"]


@register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        formats: List[MeshFormat] = field(default_factory=lambda: ["obj", "glb", "ply"])
        """File formats to write (obj, glb, ply)."""
        save_name: str = "model"
        isosurface_resolution: Optional[int] = None
        """Marching-cubes lattice size; None: the geometry's own setting."""
        isosurface_threshold: Optional[float] = None
        """Density level of the surface; None: the geometry's own setting."""
        color_chunk: int = 262144

        def validate(self) -> None:
            if self.isosurface_resolution is not None:
                at_least("isosurface_resolution", self.isosurface_resolution, 2)
            at_least("color_chunk", self.color_chunk, 1)

    cfg: Config

    def build_mesh(self, geometry: Any, material: Any) -> "trimesh.Trimesh":  # noqa: F821
        """Extract the surface and colour its vertices."""
        import trimesh

        verts, faces = geometry.isosurface(
            resolution=self.cfg.isosurface_resolution, threshold=self.cfg.isosurface_threshold
        )
        colours = self.vertex_colours(verts, geometry, material)
        rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(
            vertices=verts.detach().cpu().numpy(),
            faces=faces.detach().cpu().numpy(),
            vertex_colors=rgba,
            process=False,
        )

    @torch.no_grad()
    def vertex_colours(self, verts: Tensor, geometry: Any, material: Any) -> np.ndarray:
        out = []
        device = next(iter(geometry.parameters()), torch.empty(0)).device
        for chunk in verts.split(self.cfg.color_chunk):
            features = geometry.export(chunk.to(device))["features"]
            albedo = material.export(features)["albedo"]
            out.append(albedo[..., :3].clamp(0, 1).cpu())
        rgb = torch.cat(out) if out else torch.zeros(0, 3)
        return (rgb.numpy() * 255 + 0.5).astype(np.uint8)

    def __call__(self, geometry: Any, material: Any, out_dir: str) -> List[str]:
        """Write the mesh in every configured format; returns the paths written."""
        mesh = self.build_mesh(geometry, material)
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for fmt in self.cfg.formats:
            path = os.path.join(out_dir, f"{self.cfg.save_name}.{fmt}")
            tmp = path + ".tmp"
            mesh.export(tmp, file_type=fmt)
            os.replace(tmp, path)
            paths.append(path)
        return paths


def volume_iou(
    mesh: "trimesh.Trimesh",  # noqa: F821
    occupancy: Callable[[Tensor], Tensor],
    resolution: int = 64,
    radius: float = 1.0,
) -> float:
    """Volume IoU between a closed mesh and an occupancy function on a ``resolution^3`` lattice
    of cell centres spanning ``[-radius, radius]^3`` (inside-tests by ray parity)."""
    lin = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 * radius - radius
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    truth = occupancy(pts).reshape(-1).cpu().numpy().astype(bool)
    inside = mesh_contains(mesh, pts.numpy())
    union = np.logical_or(truth, inside).sum()
    return float(np.logical_and(truth, inside).sum() / union) if union else 0.0


def mesh_contains(mesh: "trimesh.Trimesh", points: np.ndarray) -> np.ndarray:  # noqa: F821
    """Inside-test for a closed mesh by counting crossings of +z rays (vectorised, no rtree)."""
    tris = mesh.vertices[mesh.faces]  # [F, 3, 3]
    inside = np.zeros(len(points), dtype=bool)
    # Bin points by their (x, y) so that each triangle only meets the points under it.
    xy_min = tris[:, :, :2].min(1)
    xy_max = tris[:, :, :2].max(1)
    a, b, c = tris[:, 0, :2], tris[:, 1, :2], tris[:, 2, :2]
    for start in range(0, len(points), 65536):
        p = points[start : start + 65536]
        counts = np.zeros(len(p), dtype=np.int64)
        order = np.lexsort((p[:, 1], p[:, 0]))
        ps = p[order]
        for fi in range(0, len(tris), 4096):
            sl = slice(fi, fi + 4096)
            lo, hi = xy_min[sl], xy_max[sl]
            # candidate pairs: points whose x lies in the triangle's x range (sorted search)
            i0 = np.searchsorted(ps[:, 0], lo[:, 0], side="left")
            i1 = np.searchsorted(ps[:, 0], hi[:, 0], side="right")
            n = i1 - i0
            if n.sum() == 0:
                continue
            tri_idx = np.repeat(np.arange(len(n)), n)
            pt_idx = np.concatenate([np.arange(s, e) for s, e in zip(i0, i1) if e > s])
            q = ps[pt_idx]
            ok = (q[:, 1] >= lo[tri_idx, 1]) & (q[:, 1] <= hi[tri_idx, 1])
            tri_idx, pt_idx, q = tri_idx[ok], pt_idx[ok], q[ok]
            ta, tb, tc = a[sl][tri_idx], b[sl][tri_idx], c[sl][tri_idx]
            # barycentric coordinates of q in the projected triangle
            v0, v1, v2 = tb - ta, tc - ta, q[:, :2] - ta
            den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
            nz = np.abs(den) > 1e-12
            den = np.where(nz, den, 1.0)
            u = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
            v = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
            hit = nz & (u >= 0) & (v >= 0) & (u + v < 1)  # half-open edges: no double count
            z = tris[sl][tri_idx, 0, 2] * (1 - u - v) + tris[sl][tri_idx, 1, 2] * u + tris[sl][tri_idx, 2, 2] * v
            hit &= z > q[:, 2]
            np.add.at(counts, pt_idx[hit], 1)
        inside[start + order] = counts % 2 == 1
    return inside
