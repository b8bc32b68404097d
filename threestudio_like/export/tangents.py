"""Tangent frames of a UV-mapped mesh and tangent-space normal maps.

A tangent-space normal map stores a surface normal ``n_f`` (here: the field's, which holds detail
that decimation removed) relative to the mesh's own frame at that point: tangent ``T``
(direction of increasing ``u``), bitangent ``B`` (increasing ``v``) and the interpolated vertex
normal ``N``. The texel holds ``((T.n_f, B.n_f, N.n_f) + 1) / 2``; a viewer recovers
``n_f = x T + y B + z N``. The map does not change when the mesh is turned (the frame turns
with it), so one map serves every export frame.

**Convention** (glTF 2.0, also Blender's and USD's): ``+X`` of the map is ``+u`` and ``+Y`` is
*up in the image*, which is increasing ``v`` in the OpenGL UV convention this package holds
(``v = 0`` at the bottom row; see :mod:`.texture`). Per vertex, glTF stores ``TANGENT = (T, w)``
with ``B = w (N x T)``, ``w = +-1`` (``-1`` where the UV chart is mirrored).

**Per-vertex tangents** (Lengyel's method, as MikkTSpace does in spirit). For a triangle with
edges ``e1 = p1 - p0``, ``e2 = p2 - p0`` and UV edges ``d1 = (du1, dv1)``, ``d2 = (du2, dv2)``,
the directions of ``u`` and ``v`` on the triangle solve ``[e1 e2] = [T B] [d1 d2]``:

    T = (e1 dv2 - e2 dv1) / r,   B = (e2 du1 - e1 du2) / r,   r = du1 dv2 - du2 dv1.

Each triangle adds ``r T`` and ``r B`` (that is, weighted by its UV area) to its corners,
keeping sign consistency; then ``T`` is made orthogonal to the vertex normal (Gram-Schmidt) and
``w = sign((N x T) . B)``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def vertex_tangents(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """``[V, 4]`` float32 unit tangents ``(T, w)`` of a UV-mapped mesh (``uvs`` OpenGL convention).

    Vertices with no UV gradient (degenerate charts) get any unit vector orthogonal to their
    normal and ``w = 1``, so every tangent is valid for a viewer.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    uv = np.asarray(uvs, np.float64)
    n = np.asarray(normals, np.float64)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    d1, d2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    # r T and r B (the division by r cancels against the UV-area weight r).
    t_face = e1 * d2[:, 1:2] - e2 * d1[:, 1:2]
    b_face = e2 * d1[:, 0:1] - e1 * d2[:, 0:1]
    sign = np.sign(d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1])[:, None]
    t_sum = np.zeros_like(v)
    b_sum = np.zeros_like(v)
    for corner in range(3):
        np.add.at(t_sum, f[:, corner], t_face * sign)
        np.add.at(b_sum, f[:, corner], b_face * sign)
    t = t_sum - n * (t_sum * n).sum(-1, keepdims=True)
    length = np.linalg.norm(t, axis=-1, keepdims=True)
    bad = length[:, 0] < 1e-12
    if bad.any():  # any unit vector orthogonal to n
        helper = np.where(np.abs(n[bad, 0:1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        fallback = np.cross(n[bad], helper)
        t[bad] = fallback
        length[bad] = np.linalg.norm(fallback, axis=-1, keepdims=True)
    t /= np.maximum(length, 1e-30)
    w = np.where((np.cross(n, t) * b_sum).sum(-1) < 0, -1.0, 1.0)
    return np.concatenate([t, w[:, None]], axis=1).astype(np.float32)


def texel_frames(normals: Tensor, tangents: Tensor, tri: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal ``(T, B, N)`` ``[N, 3]`` each at surface points given by triangle corner indices
    ``tri`` ``[N, 3]`` and barycentric ``weights`` ``[N, 3]``: interpolated, re-orthonormalised."""
    n = torch.nn.functional.normalize((weights[..., None] * normals[tri]).sum(1), dim=-1)
    t = (weights[..., None] * tangents[tri, :3]).sum(1)
    t = torch.nn.functional.normalize(t - n * (t * n).sum(-1, keepdim=True), dim=-1)
    w = torch.where((weights * tangents[tri, 3]).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return t, torch.linalg.cross(n, t) * w, n


def to_tangent_space(field_normals: Tensor, frames: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """World ``field_normals`` ``[N, 3]`` in the texels' ``(T, B, N)`` frames, encoded to [0, 1]
    (``(x, y, z) / 2 + 1/2``)."""
    t, b, n = frames
    nf = torch.nn.functional.normalize(field_normals.to(t), dim=-1)
    local = torch.stack([(nf * t).sum(-1), (nf * b).sum(-1), (nf * n).sum(-1)], dim=-1)
    return torch.nn.functional.normalize(local, dim=-1) * 0.5 + 0.5


def decode_tangent_space(encoded: np.ndarray, frames: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The inverse of :func:`to_tangent_space` (as a viewer does): ``[N, 3]`` unit world normals
    from encoded texels ``[N, 3]`` in [0, 1] and their ``(T, B, N)`` frames."""
    x, y, z = np.moveaxis(np.asarray(encoded, np.float64) * 2.0 - 1.0, -1, 0)
    t, b, n = (np.asarray(a, np.float64) for a in frames)
    out = x[:, None] * t + y[:, None] * b + z[:, None] * n
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
