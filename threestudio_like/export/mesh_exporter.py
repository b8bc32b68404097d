"""Mesh export: the density's isosurface, cleaned, coloured (or UV-textured) and written as
GLB, OBJ (+MTL, PNG), PLY and USDZ.

The pipeline, one phase each (timed in :class:`ExportReport`):

1. **isosurface**: marching cubes of the geometry's density at the configured level; where the
   density never crosses it, another level is chosen (``on_threshold_miss: fit``, see
   :mod:`threestudio_like.geometry.isosurface`) and the run says so instead of failing;
2. **cleanup**: floaters off, holes closed, quadric decimation (:mod:`.cleanup`);
3. **colours**: the material's albedo at every vertex (material-free base colour);
4. **texture**: a UV atlas and a baked base-colour image where ``bake_texture`` is set and the
   baker (``threestudio_like.export.texture``) is installed; vertex colours otherwise. With
   ``normal_map`` (by default where the recipe's geometry computes normals) also a tangent-space
   normal map of the field's normals (:mod:`.tangents`), which keeps the detail that decimation
   removed; GLB carries it with ``TANGENT``s, OBJ as ``map_Bump``, USDZ as the surface's normal;
5. **write**: each format in its own frame (:mod:`.frames`: GLB and USDZ +Y up with the front at
   +Z; OBJ and PLY by ``up_axis``), each file through a ``.tmp`` and ``os.replace``
   (:mod:`.formats`).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseObject
from threestudio_like.errors import ConfigError, at_least, in_range
from threestudio_like.export import cleanup, formats
from threestudio_like.export.frames import UpAxis, to_export_frame
from threestudio_like.utils.progress import Progress

FormatChoice = Literal["all", "glb", "obj", "ply", "usdz"]


def import_baker() -> Optional[Callable[..., Any]]:
    """``bake_texture`` of the texture baker, or None where it is not installed."""
    try:
        from threestudio_like.export.texture import bake_texture  # type: ignore[import-not-found]
    except ImportError:
        return None
    return bake_texture


@dataclass
class ExportReport:
    """What an export did, as data: the system records it in the run's status."""

    level: Dict[str, Any]
    """The isosurface level used: requested, level, source, note."""
    cleanup: Dict[str, Any]
    """Faces and components before and after (:class:`.cleanup.CleanupReport`)."""
    textured: bool
    files: Dict[str, List[str]] = field(default_factory=dict)
    """Files written per format (the main file first, then its companions)."""
    seconds: Dict[str, float] = field(default_factory=dict)
    """Wall time of each phase."""
    notes: List[str] = field(default_factory=list)
    """What the user should know: a replaced level, a skipped format, no texture baker."""
    normal_map: bool = False
    """Whether a tangent-space normal map was baked and written."""

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@register("mesh-exporter")
class MeshExporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        formats: List[FormatChoice] = field(default_factory=lambda: ["all"])
        """Files to write: glb, obj (+mtl, png), ply, usdz, or all (usdz only where usd-core is installed)."""
        save_name: str = "model"
        """File name stem of every written file."""
        isosurface_resolution: Optional[int] = None
        """Marching-cubes lattice size; None: the geometry's own setting."""
        isosurface_threshold: Optional[float] = None
        """Density level of the surface; None: the geometry's own setting."""
        on_threshold_miss: Literal["fit", "raise"] = "fit"
        """When the density never crosses the level: fit one to the rendered opacity, or fail."""
        up_axis: UpAxis = "y"
        """Frame of OBJ and PLY: y (+Y up, front +Z, as GLB) or z (z up, front +x, the world frame)."""
        keep_volume_share: float = 0.95
        """Keep the largest connected pieces holding this share of the volume (1: keep all)."""
        keep_measure: Literal["volume", "area"] = "volume"
        """What keep_volume_share measures: enclosed volume or surface area."""
        fill_holes: bool = False
        """Close boundary loops (open cuts at the box's faces) with fans."""
        fill_cavities: bool = True
        """Drop the inward-facing walls of voids inside the object, so the mesh is solid."""
        target_faces: int = 20000
        """Quadric decimation to at most this many faces; 0: no decimation."""
        bake_texture: bool = True
        """UV-unwrap and bake a base-colour texture (needs the texture baker); else vertex colours."""
        texture_size: int = 1024
        """Texture width and height in pixels."""
        normal_map: Optional[bool] = None
        """Bake a tangent-space normal map of the field's normals; None: where the geometry has normals."""
        texture_padding: int = 4
        """Texels of seam padding (dilation) around each UV chart."""
        color_chunk: int = 262144
        """Points per colour-field evaluation."""

        def validate(self) -> None:
            if self.isosurface_resolution is not None:
                at_least("isosurface_resolution", self.isosurface_resolution, 2)
            at_least("color_chunk", self.color_chunk, 1)
            at_least("target_faces", self.target_faces, 0)
            at_least("texture_size", self.texture_size, 8)
            at_least("texture_padding", self.texture_padding, 0)
            in_range("keep_volume_share", self.keep_volume_share, 0, 1, open_low=True)
            if not self.formats:
                raise ConfigError("exporter formats is empty: list one or more of glb, obj, ply, usdz (or all).")
            if "usdz" in self.formats and not formats.usd_available():
                raise ConfigError(f"exporter formats asks for usdz, which needs usd-core: {formats.USDZ_EXTRA} "
                                  f"(or leave usdz out of system.exporter.formats).")

    cfg: Config

    def configure(self) -> None:
        self.last_report: Optional[ExportReport] = None
        """The report of the latest call (None before the first)."""

    # ------------------------------------------------------------------ surface and colour
    def build_mesh(self, geometry: Any, material: Any) -> "trimesh.Trimesh":  # noqa: F821
        """The raw isosurface (world frame, no clean-up) with vertex colours."""
        import trimesh

        verts, faces = geometry.isosurface(
            resolution=self.cfg.isosurface_resolution, threshold=self.cfg.isosurface_threshold
        )
        colours = self.vertex_colours(verts, geometry, material)
        return trimesh.Trimesh(
            vertices=verts.detach().cpu().numpy(), faces=faces.detach().cpu().numpy(),
            vertex_colors=_rgba(colours), process=False,
        )

    @torch.no_grad()
    def albedo(self, points: Tensor, geometry: Any, material: Any) -> Tensor:
        """Base colour ``[N, 3]`` in [0, 1] at world ``points`` (on the geometry's device)."""
        out = []
        device = next(iter(geometry.parameters()), torch.empty(0)).device
        for chunk in points.split(self.cfg.color_chunk):
            features = geometry.export(chunk.to(device).float())["features"]
            out.append(material.export(features)["albedo"][..., :3].clamp(0, 1))
        return torch.cat(out) if out else torch.zeros(0, 3, device=device)

    def field_normals(self, points: Tensor, geometry: Any) -> Tensor:
        """Unit outward normals ``[N, 3]`` of the field at world ``points``: the geometry's own
        (its ``normal_type``) or else the analytic gradient of the density, ``-grad / |grad|``."""
        out = []
        device = next(iter(geometry.parameters()), torch.empty(0)).device
        own = getattr(geometry.cfg, "normal_type", None) is not None
        for chunk in points.split(self.cfg.color_chunk):
            chunk = chunk.to(device).float()
            if own:
                out.append(geometry(chunk, output_normal=True)["normal"].detach())
                continue
            with torch.enable_grad():
                chunk = chunk.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(geometry.forward_density(chunk).sum(), chunk)
            out.append(torch.nn.functional.normalize(-grad, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 3, device=device)

    def wants_normal_map(self, geometry: Any) -> bool:
        """Whether to bake a normal map: as configured, else where the geometry has normals."""
        if self.cfg.normal_map is not None:
            return bool(self.cfg.normal_map)
        return getattr(getattr(geometry, "cfg", None), "normal_type", None) is not None

    def vertex_colours(self, verts: Tensor, geometry: Any, material: Any) -> np.ndarray:
        """sRGB bytes ``[V, 3]`` of the albedo at ``verts``."""
        rgb = self.albedo(torch.as_tensor(verts), geometry, material).cpu()
        return (rgb.numpy() * 255 + 0.5).astype(np.uint8)

    def wanted_formats(self) -> List[str]:
        """The formats to write, in order; ``all`` adds every format whose writer is installed."""
        wanted: List[str] = []
        for fmt in self.cfg.formats:
            for name in (formats.FORMATS if fmt == "all" else (fmt,)):
                if name not in wanted and not (fmt == "all" and name == "usdz" and not formats.usd_available()):
                    wanted.append(name)
        return wanted

    # ------------------------------------------------------------------ the export
    def __call__(self, geometry: Any, material: Any, out_dir: str) -> List[str]:
        """Write the mesh in every configured format; returns the main path of each format
        (companions such as ``.mtl`` and ``.png`` are listed in :attr:`last_report`)."""
        cfg = self.cfg
        notes: List[str] = []
        seconds: Dict[str, float] = {}
        clock = time.perf_counter()
        wanted = self.wanted_formats()
        progress = Progress("export: phase", 4 + len(wanted))  # isosurface, cleanup, colours, texture, files

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = round(now - clock, 3)
            clock = now
            progress.update()

        verts_t, faces_t, level = geometry.isosurface(
            resolution=cfg.isosurface_resolution, threshold=cfg.isosurface_threshold,
            on_miss=cfg.on_threshold_miss, with_level=True,
        )
        if level.note:
            notes.append(level.note)
        lap("isosurface")
        verts, faces, clean = cleanup.clean_mesh(
            verts_t.detach().cpu().numpy(), faces_t.detach().cpu().numpy(), cfg.keep_volume_share,
            cfg.keep_measure, cfg.fill_holes, cfg.target_faces, cfg.fill_cavities,
        )
        print(clean.summary())
        normals = cleanup.vertex_normals(verts, faces)
        lap("cleanup")
        colours = _rgba(self.vertex_colours(torch.from_numpy(verts), geometry, material))
        lap("colours")
        baked = self.bake(verts, faces, normals, geometry, material, notes,
                          lambda stage, fraction: progress.update(0))
        lap("texture")
        if "all" in cfg.formats and not formats.usd_available():
            notes.append(f"usdz skipped: usd-core is not installed ({formats.USDZ_EXTRA})")
        for note in notes:
            print(f"note: {note}")
        meshes = {axis: self.frame_mesh(verts, faces, normals, colours, baked, axis) for axis in ("y", cfg.up_axis)}
        plain = {axis: self.frame_mesh(verts, faces, normals, colours, None, axis) for axis in ("y", cfg.up_axis)}
        os.makedirs(out_dir, exist_ok=True)
        files: Dict[str, List[str]] = {}
        for fmt in wanted:
            path = os.path.join(out_dir, f"{cfg.save_name}.{fmt}")
            files[fmt] = self.write(fmt, path, meshes, plain, out_dir)
            lap(f"write {fmt}")
        progress.close()
        self.last_report = ExportReport(asdict(level), clean.as_dict(), baked is not None, files, seconds, notes,
                                        normal_map=getattr(baked, "tangents", None) is not None)
        return [paths[0] for paths in files.values()]

    def bake(self, verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, geometry: Any, material: Any,
             notes: List[str], progress: Optional[Callable[[str, float], None]] = None) -> Any:
        """The baked texture (``BakedTexture``) or None: not asked, no baker installed, or the
        bake failed (a note says which; the export goes on with vertex colours)."""
        if not self.cfg.bake_texture:
            return None
        bake_texture = import_baker()
        if bake_texture is None:
            notes.append("no texture baker installed (threestudio_like.export.texture): vertex colours only")
            return None
        device = next(iter(geometry.parameters()), torch.empty(0)).device
        extra: Dict[str, Any] = {}
        if self.wants_normal_map(geometry):
            extra = {"normal_fn": lambda p: self.field_normals(p, geometry), "normals": normals}
        try:
            return bake_texture(
                verts.astype(np.float32), faces.astype(np.int64), lambda p: self.albedo(p, geometry, material),
                texture_size=self.cfg.texture_size, padding=self.cfg.texture_padding, device=device,
                chunk=self.cfg.color_chunk, progress=progress, **extra,
            )
        except Exception as exc:  # noqa: BLE001 - a finished run keeps its mesh: vertex colours, and why
            notes.append(f"texture baking failed ({type(exc).__name__}: {exc}); vertex colours only")
            return None

    @staticmethod
    def frame_mesh(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, colours: np.ndarray,
                   baked: Any, up_axis: str) -> formats.ExportMesh:
        """The mesh (textured where ``baked`` is given: its seam-split vertices) in ``up_axis``'s frame."""
        if baked is None:
            return formats.ExportMesh(to_export_frame(verts.astype(np.float32), up_axis), faces,
                                      to_export_frame(normals, up_axis), colours)
        vmap = np.asarray(baked.vmapping, dtype=np.int64)
        tangents = getattr(baked, "tangents", None)
        if tangents is not None:  # the frame turns T; the handedness w stays (a proper rotation)
            tangents = np.concatenate([to_export_frame(tangents[:, :3], up_axis), tangents[:, 3:]], axis=1)
        return formats.ExportMesh(
            to_export_frame(np.asarray(baked.vertices, np.float32), up_axis), np.asarray(baked.faces, np.int64),
            to_export_frame(normals[vmap], up_axis), colours[vmap],
            np.asarray(baked.uvs, np.float32), np.asarray(baked.image, np.uint8),
            tangents, getattr(baked, "normal_map", None) if tangents is not None else None,
        )

    def write(self, fmt: str, path: str, meshes: Dict[str, formats.ExportMesh],
              plain: Dict[str, formats.ExportMesh], out_dir: str) -> List[str]:
        """Write one format; returns its files (main file first)."""
        axis = self.cfg.up_axis
        if fmt == "glb":
            return [formats.write_glb(path, meshes["y"], self.cfg.save_name)]
        if fmt == "usdz":
            return [formats.write_usdz(path, meshes["y"], self.cfg.save_name)]
        if fmt == "ply":  # vertex colours on the unsplit mesh
            return [formats.write_ply(path, plain[axis])]
        texture = normal_texture = None
        if meshes[axis].textured:
            texture = formats.write_texture(os.path.join(out_dir, f"{self.cfg.save_name}.png"), meshes[axis].image)
        if meshes[axis].normal_mapped:
            normal_texture = formats.write_texture(os.path.join(out_dir, f"{self.cfg.save_name}_normal.png"),
                                                   meshes[axis].normal_image)
        return formats.write_obj(path, meshes[axis], texture, frame_note=f"up_axis={axis}",
                                 normal_texture=normal_texture)


def _rgba(rgb: np.ndarray) -> np.ndarray:
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


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
