"""UV texture baking: a texture atlas of a triangle mesh, filled from a colour field.

**Atlas.** ``xatlas`` cuts the mesh into charts, flattens each and packs them into the unit
square. Vertices on chart boundaries (UV seams) are split: :class:`BakedTexture` keeps the split
vertices, with ``vmapping`` naming the input vertex each came from, and the input triangles in their
input order.

**UV convention** (OpenGL / OBJ / glTF after its flip): ``u`` runs left to right, ``v`` bottom to
top, while image row 0 is the *top* row (as PNG stores it). Texel (row ``r``, column ``c``) of an
``H x W`` image has its centre at ``u = (c + 0.5) / W``, ``v = 1 - (r + 0.5) / H``; conversely a UV
point sits at pixel-centre coordinates ``x = u W - 0.5``, ``y = (1 - v) H - 0.5``.

**Baking.** The UV triangles are rasterised at texel centres (:mod:`.raster`): each covered texel
gets its triangle ``t`` and barycentrics ``(w_0, w_1, w_2)``, and the surface point it shows is
``P = w_0 V_0 + w_1 V_1 + w_2 V_2`` with the triangle's 3D vertices (barycentrics are affine
invariants, so the UV weights locate the same point on the 3D triangle). The colour field is
queried at those points in chunks. Then ``padding`` steps of id dilation give the texels around
each chart the nearest triangle edge's surface point (queried too), and a push-pull fill gives every
remaining texel a smooth continuation of the nearby charts, so that bilinear filtering and
mip-mapping never blend in background black along seams.

**Sampling.** :func:`sample_texture` reads a texture bilinearly at UVs with the same convention
(clamped at the border), as a viewer does; :func:`sample_surface` draws area-uniform points on a
mesh: a face with probability proportional to its area, then ``w = (1 - sqrt(s), sqrt(s)(1 - t),
sqrt(s) t)`` for uniform ``s, t``, which is uniform over the triangle.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from threestudio_like.errors import ConfigError, at_least
from threestudio_like.export.cleanup import vertex_normals
from threestudio_like.export.raster import (
    barycentrics_of,
    dilate_ids,
    push_pull_fill,
    rasterise,
)
from threestudio_like.export.tangents import texel_frames, to_tangent_space, vertex_tangents

FieldFn = Callable[[Tensor], Tensor]
Progress = Callable[[str, float], None]


@dataclass
class BakedTexture:
    """A UV-mapped mesh and its baked textures."""

    vertices: np.ndarray
    """``[V', 3]`` float32 positions (vertices split along UV seams; same frame as the input)."""
    faces: np.ndarray
    """``[F, 3]`` int64 indices into ``vertices`` (same triangles, same order as the input faces)."""
    uvs: np.ndarray
    """``[V', 2]`` float32 in ``[0, 1]``, OpenGL/OBJ convention: ``v = 0`` is the bottom image row."""
    vmapping: np.ndarray
    """``[V']`` int64: index of the input vertex each output vertex came from."""
    image: np.ndarray
    """``[H, W, 3]`` uint8 base colour (row 0 = top of the image, as PNG stores it)."""
    normal_map: np.ndarray | None = None
    """``[H, W, 3]`` uint8 tangent-space normal map (glTF/OpenGL convention, :mod:`.tangents`);
    None when not baked."""
    tangents: np.ndarray | None = None
    """``[V', 4]`` float32 unit tangents and handedness ``(T, w)`` the normal map is relative to;
    None when no normal map was baked."""


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, dtype=np.float32)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ConfigError(f"bake_texture: vertices must have shape [V, 3], got {list(vertices.shape)}.")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ConfigError(f"bake_texture: faces must have shape [F, 3] with F >= 1, got {list(faces.shape)}.")
    if not np.issubdtype(faces.dtype, np.integer) or faces.min() < 0 or faces.max() >= len(vertices):
        raise ConfigError(
            f"bake_texture: faces must be integer indices in [0, {len(vertices) - 1}] "
            f"(got dtype {faces.dtype}, range [{faces.min()}, {faces.max()}])."
        )
    if not np.isfinite(vertices).all():
        raise ConfigError("bake_texture: vertices contain NaN or Inf; clean the mesh before baking.")
    return vertices, faces.astype(np.int64)


def uv_atlas(
    vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024, padding: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap a mesh with xatlas into one atlas: ``(vmapping [V'], faces [F, 3], uvs [V', 2])``.

    Charts are packed for a ``texture_size`` square image with ``padding`` texels between them
    (random placement, not brute force: seconds for ~20k faces). The output faces are the input
    triangles in input order, indexing the split vertices.
    """
    import xatlas

    chart = xatlas.ChartOptions()
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bruteForce = False
    pack.bilinear = True
    pack.blockAlign = False
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    atlas.generate(chart, pack)
    if atlas.atlas_count != 1:
        # The texel density estimate overflowed one atlas: pack again into a single one with a
        # lower density (the UVs are normalised to [0, 1] either way).
        pack.texels_per_unit = float(atlas.texels_per_unit) / np.sqrt(atlas.atlas_count)
        pack.resolution = 0
        atlas = xatlas.Atlas()
        atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
        atlas.generate(chart, pack)
    vmapping, out_faces, uvs = atlas[0]
    vmapping = vmapping.astype(np.int64)
    out_faces = out_faces.astype(np.int64)
    if out_faces.shape != faces.shape or not np.array_equal(vmapping[out_faces], faces):
        raise RuntimeError("xatlas changed the triangles of the mesh; cannot keep the face order.")
    return vmapping, out_faces, np.clip(uvs.astype(np.float32), 0.0, 1.0)


def uv_to_pixel(uv: Tensor, height: int, width: int) -> Tensor:
    """Pixel-centre coordinates ``(x, y)`` of UVs ``[..., 2]`` (texel (r, c) centre is (c, r))."""
    return torch.stack([uv[..., 0] * width - 0.5, (1.0 - uv[..., 1]) * height - 0.5], dim=-1)


@torch.no_grad()
def _query(fn: FieldFn, points: Tensor, chunk: int, name: str, progress: Progress | None) -> Tensor:
    """``fn`` at ``points`` ``[N, 3]`` in chunks -> ``[N, 3]`` float32 on the points' device."""
    out = torch.empty(len(points), 3, dtype=torch.float32, device=points.device)
    if progress is not None:
        progress(name, 0.0)
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk]
        values = fn(part)
        if not isinstance(values, Tensor) or values.ndim != 2 or len(values) != len(part) or values.shape[1] < 3:
            shape = list(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"bake_texture: {name} must return [N, 3] for [N, 3] points; got {shape} for N={len(part)}."
            )
        out[start : start + len(part)] = values[:, :3].to(out)
        if progress is not None:
            progress(name, min(1.0, (start + len(part)) / len(points)))
    return out


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    colour_fn: FieldFn,
    texture_size: int = 1024,
    padding: int = 4,
    normal_fn: FieldFn | None = None,
    normals: np.ndarray | None = None,
    device: torch.device | None = None,
    chunk: int = 262144,
    progress: Progress | None = None,
) -> BakedTexture:
    """UV-unwrap a mesh and bake ``colour_fn`` (world points ``[N, 3]`` -> colours in [0, 1]) into a
    ``texture_size`` square texture, and ``normal_fn`` (-> unit normals) into a tangent-space
    normal map relative to the vertex ``normals`` ``[V, 3]`` (default: area-weighted face normals),
    the ones the written mesh carries, and the per-vertex tangents it returns.

    ``padding`` texels around every chart get the colour of the nearest chart edge; the rest of
    the background is push-pull filled. Fields run on ``device`` (default CPU) in chunks of ``chunk``
    points; ``progress(stage, fraction)`` is told of each stage (atlas, rasterise, dilate, colour,
    normal, fill) at its start (0.0), its end (1.0) and, for the field queries, after each chunk.
    """
    at_least("texture_size", texture_size, 8)
    at_least("padding", padding, 0)
    at_least("chunk", chunk, 1)
    vertices, faces = _check_mesh(vertices, faces)
    device = torch.device(device) if device is not None else torch.device("cpu")
    report = progress or (lambda stage, fraction: None)

    report("atlas", 0.0)
    vmapping, out_faces, uvs = uv_atlas(vertices, faces, texture_size, padding)
    report("atlas", 1.0)
    size = int(texture_size)
    out_vertices = vertices[vmapping]

    report("rasterise", 0.0)
    uv_t = torch.from_numpy(uvs).to(device)
    faces_t = torch.from_numpy(out_faces).to(device)
    xy = uv_to_pixel(uv_t, size, size)[faces_t]  # [F, 3, 2]
    ids, _ = rasterise(xy, size, size, barycentrics=False)
    report("rasterise", 1.0)
    report("dilate", 0.0)
    ids = dilate_ids(ids, int(padding))
    bary = barycentrics_of(xy, ids, clamp=True)
    report("dilate", 1.0)

    rows, cols = torch.nonzero(ids >= 0, as_tuple=True)
    tri = faces_t[ids[rows, cols]]  # [N, 3] vertex indices
    verts_t = torch.from_numpy(out_vertices).to(device)
    weights = bary[rows, cols].to(torch.float32)
    points = (weights[..., None] * verts_t[tri]).sum(1)

    def bake(fn: FieldFn, name: str, encode: Callable[[Tensor], Tensor]) -> np.ndarray:
        values = encode(_query(fn, points, int(chunk), name, progress)).nan_to_num(0.5)
        image = torch.zeros(size, size, 3, dtype=torch.float32, device=device)
        image[rows, cols] = values
        report("fill", 0.0)
        image = push_pull_fill(image, ids >= 0)
        report("fill", 1.0)
        return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    image = bake(colour_fn, "colour", lambda c: c.clamp(0, 1))
    normal_map = tangents = None
    if normal_fn is not None:
        if normals is None:
            normals = vertex_normals(vertices, faces)
        split_normals = np.asarray(normals, np.float32)[vmapping]
        tangents = vertex_tangents(out_vertices, out_faces, uvs, split_normals)
        frames = texel_frames(torch.from_numpy(split_normals).to(device), torch.from_numpy(tangents).to(device),
                              tri, weights)
        normal_map = bake(normal_fn, "normal", lambda n: to_tangent_space(n, frames))
    return BakedTexture(
        vertices=out_vertices.astype(np.float32),
        faces=out_faces,
        uvs=uvs,
        vmapping=vmapping,
        image=image,
        normal_map=normal_map,
        tangents=tangents,
    )


def sample_texture(image: np.ndarray | Tensor, uv: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Bilinear texture lookup at ``uv`` ``[N, 2]`` (v = 0 at the bottom row, clamped at the border).

    ``image`` is ``[H, W, C]``, uint8 (read as ``/255``) or float. Returns ``[N, C]`` float32, a
    numpy array for numpy input and a tensor (on the image's device) otherwise.
    """
    as_numpy = isinstance(image, np.ndarray)
    img = torch.as_tensor(image if not isinstance(image, np.ndarray) or image.flags.writeable else image.copy())
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=img.device)
    height, width = img.shape[:2]
    p = uv_to_pixel(uv_t, height, width)
    x0 = torch.floor(p[:, 0])
    y0 = torch.floor(p[:, 1])
    fx = (p[:, 0] - x0)[:, None]
    fy = (p[:, 1] - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xa, xb = x0.clamp(0, width - 1), (x0 + 1).clamp(0, width - 1)
    ya, yb = y0.clamp(0, height - 1), (y0 + 1).clamp(0, height - 1)
    top = img[ya, xa] * (1 - fx) + img[ya, xb] * fx
    bottom = img[yb, xa] * (1 - fx) + img[yb, xb] * fx
    out = top * (1 - fy) + bottom * fy
    return out.cpu().numpy() if as_numpy else out


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` area-uniform random points on a mesh: ``(points [n, 3], face ids [n], barycentrics [n, 3])``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    if not area.sum() > 0:
        raise ConfigError("sample_surface: the mesh has no area.")
    rng = np.random.default_rng(seed)
    face_ids = rng.choice(len(faces), size=int(n), p=area / area.sum())
    s, t = rng.random(int(n)), rng.random(int(n))
    root = np.sqrt(s)
    bary = np.stack([1.0 - root, root * (1.0 - t), root * t], axis=-1)
    points = (bary[..., None] * tri[face_ids]).sum(1)
    return points.astype(np.float32), face_ids, bary.astype(np.float32)
