"""Marching cubes over a scalar field sampled on a regular lattice (CPU, PyMCubes).

The field is a density (higher inside). The extracted faces are oriented outward: face normals
point towards decreasing density, away from the object. The orientation is checked against the
field's gradient rather than assumed from PyMCubes' conventions.

**A level that misses** (the density never crosses it) need not end an export: with
``on_miss="fit"`` the level is chosen so that the mesh's silhouette matches the rendered opacity
(:func:`opacity_matched_level`). Along every lattice column parallel to an axis the volume
renderer's opacity is ``1 - exp(-sum(sigma) * step)``; a pixel counts as covered when that is
above 1/2. A level ``tau`` covers the columns whose maximum density exceeds ``tau``. The level
chosen makes the two counts equal, summed over the three axis directions: the ``N``-th largest
column maximum, ``N`` the number of covered columns (midway to the next one). Where no column is
half opaque, the fallback is threestudio's "auto" level (the mean of the positive densities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from threestudio_like.errors import ConfigError, IsosurfaceError

FieldFn = Callable[[torch.Tensor], torch.Tensor]
Threshold = Union[float, str]
OnMiss = Literal["raise", "fit"]

COVERED_OPACITY = 0.5
"""Rendered opacity above which a lattice column counts as covered (see opacity_matched_level)."""

AUTO_THRESHOLD_EPS = 1e-5


def _as_vec3(value: Union[float, Sequence[float], torch.Tensor]) -> Tuple[float, float, float]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise ValueError(f"Expected 3 bounding-box coordinates, got {vals}.")
    return vals  # type: ignore[return-value]


@torch.no_grad()
def evaluate_lattice(
    field_fn: FieldFn,
    resolution: int,
    bbox_min: Union[float, Sequence[float], torch.Tensor],
    bbox_max: Union[float, Sequence[float], torch.Tensor],
    chunk: int = 2**20,
    device: Optional[Union[str, torch.device]] = None,
) -> np.ndarray:
    """Sample ``field_fn`` on ``resolution^3`` lattice points spanning the box (both ends included).

    Returns a float32 array ``grid[i, j, k] = field(x_i, y_j, z_k)``. ``field_fn`` takes world
    points ``[M, 3]`` and returns ``[M]`` or ``[M, 1]`` values; it runs under ``torch.no_grad``
    in chunks of ``chunk`` points on ``device`` (default CPU).
    """
    if resolution < 2:
        raise ConfigError(f"Isosurface resolution must be >= 2, got {resolution}.")
    lo, hi = _as_vec3(bbox_min), _as_vec3(bbox_max)
    device = torch.device(device) if device is not None else torch.device("cpu")
    axes = [torch.linspace(lo[d], hi[d], resolution, device=device) for d in range(3)]
    n = resolution
    total = n**3
    out = np.empty(total, dtype=np.float32)
    for start in range(0, total, chunk):
        flat = torch.arange(start, min(start + chunk, total), device=device)
        i, j, k = flat // (n * n), (flat // n) % n, flat % n
        points = torch.stack((axes[0][i], axes[1][j], axes[2][k]), dim=-1)
        values = field_fn(points).reshape(-1)
        if values.numel() != points.shape[0]:
            raise ValueError(
                f"field_fn returned {values.numel()} values for {points.shape[0]} points; expected one each."
            )
        out[start : start + points.shape[0]] = values.float().cpu().numpy()
    return out.reshape(n, n, n)


def auto_threshold(grid: np.ndarray) -> float:
    """threestudio's "auto" level: the mean of the field values above 1e-5 (density > 0)."""
    positive = grid[grid > AUTO_THRESHOLD_EPS]
    if positive.size == 0:
        raise IsosurfaceError(
            "isosurface_threshold='auto': the density is (almost) zero everywhere in the box "
            f"(max {float(grid.max()):.4g}); the geometry is empty."
        )
    return float(positive.mean())


@dataclass
class IsosurfaceLevel:
    """The level a mesh was extracted at and why (reported by exports and the run status)."""

    requested: Threshold
    """The configured threshold (a number or "auto")."""
    level: float
    """The density level used."""
    source: str
    """configured | auto | opacity-matched | positive-mean."""
    note: str = ""
    """Why the configured level was replaced (empty when it was used)."""


def opacity_matched_level(grid: np.ndarray, step: Sequence[float]) -> Optional[float]:
    """The level whose axis silhouettes cover as many lattice columns as the rendered opacity
    does (see the module docstring); None when no column is half opaque or no level in the
    open density range does it. ``step``: lattice spacing per axis (world units)."""
    covered = 0
    maxima = []
    for axis in range(3):
        optical_depth = np.clip(grid, 0, None).sum(axis=axis) * float(step[axis])
        covered += int(np.count_nonzero(1.0 - np.exp(-optical_depth) > COVERED_OPACITY))
        maxima.append(grid.max(axis=axis).reshape(-1))
    if covered == 0:
        return None
    values = -np.sort(-np.concatenate(maxima))
    nth = values[covered - 1]
    after = values[covered] if covered < len(values) else float(grid.min())
    level = 0.5 * (float(nth) + float(after))
    lo, hi = float(grid.min()), float(grid.max())
    return level if lo < level < hi else None


def _threshold_error(grid: np.ndarray, threshold: float) -> IsosurfaceError:
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    side = "below" if hi < threshold else "above"
    hints = []
    if hi > lo:
        hints.append(f"system.geometry.isosurface_threshold={lo + 0.5 * (hi - lo):.4g} (midway)")
    if (grid > AUTO_THRESHOLD_EPS).any():
        hints.append("system.geometry.isosurface_threshold=auto (mean positive density)")
    hint = (
        " Try " + " or ".join(hints) + "."
        if hints
        else " The field is constant: the geometry is empty or degenerate."
    )
    return IsosurfaceError(
        f"The density never crosses the isosurface threshold {threshold:.4g}: it stays {side} it "
        f"everywhere on the lattice (min {lo:.4g}, max {hi:.4g}).{hint}"
    )


def _orient_outward(grid: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip the winding if most face normals point up the density gradient (inward)."""
    if len(faces) == 0:
        return faces
    tri = verts[faces]  # [F, 3, 3] in index coordinates
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centres = tri.mean(axis=1)
    # Sample a subset of faces: the density gradient at the nearest lattice point.
    sel = np.linspace(0, len(faces) - 1, num=min(len(faces), 2048)).astype(np.int64)
    n = np.array(grid.shape) - 1
    idx = np.clip(np.rint(centres[sel]).astype(np.int64), 1, np.maximum(n - 1, 1))
    grad = np.empty((len(sel), 3))
    for d in range(3):
        hi, lo = idx.copy(), idx.copy()
        hi[:, d] = np.minimum(hi[:, d] + 1, n[d])
        lo[:, d] = np.maximum(lo[:, d] - 1, 0)
        grad[:, d] = grid[hi[:, 0], hi[:, 1], hi[:, 2]] - grid[lo[:, 0], lo[:, 1], lo[:, 2]]
    dots = np.einsum("fd,fd->f", normals[sel], grad)
    if np.sum(dots > 0) > np.sum(dots < 0):  # normals follow increasing density: inward
        return faces[:, ::-1].copy()
    return faces


def _fit_level(grid: np.ndarray, step: np.ndarray, threshold: Threshold, missed: float) -> IsosurfaceLevel:
    """A level for a field that never crosses ``missed``, or the error that says so."""
    level, source = opacity_matched_level(grid, step), "opacity-matched"
    if level is None and (grid > AUTO_THRESHOLD_EPS).any():
        level, source = auto_threshold(grid), "positive-mean"
    if level is None or not (grid.min() < level < grid.max()):
        raise _threshold_error(grid, missed)
    lo, hi = float(grid.min()), float(grid.max())
    note = (
        f"the density never crosses the isosurface threshold {missed:.4g} (range {lo:.4g}..{hi:.4g}); "
        f"extracted at {level:.4g} instead ({source} level)"
    )
    return IsosurfaceLevel(threshold, level, source, note)


def extract_isosurface(
    grid: np.ndarray,
    bbox_min: Union[float, Sequence[float], torch.Tensor],
    bbox_max: Union[float, Sequence[float], torch.Tensor],
    threshold: Threshold,
    on_miss: OnMiss = "raise",
    with_level: bool = False,
):
    """Marching cubes on a sampled lattice -> (verts ``[V, 3]`` float32 world, faces ``[F, 3]`` long).

    ``on_miss``: ``"raise"`` an :class:`IsosurfaceError` when the field never crosses the level,
    or ``"fit"`` another level (module docstring). ``with_level`` appends the
    :class:`IsosurfaceLevel` used to the returned tuple.
    """
    import mcubes

    if on_miss not in ("raise", "fit"):
        raise ConfigError(f"on_miss must be 'raise' or 'fit', got {on_miss!r}.")
    grid = np.nan_to_num(np.asarray(grid, dtype=np.float32), nan=0.0, posinf=1e10, neginf=-1e10)
    lo = np.array(_as_vec3(bbox_min))
    hi = np.array(_as_vec3(bbox_max))
    step = (hi - lo) / (np.array(grid.shape) - 1)
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ConfigError(f"isosurface threshold must be a number or 'auto', got {threshold!r}.")
        info = IsosurfaceLevel(threshold, auto_threshold(grid), "auto")
    else:
        info = IsosurfaceLevel(threshold, float(threshold), "configured")
    verts = faces = None
    if grid.min() < info.level < grid.max():
        verts, faces = mcubes.marching_cubes(grid, info.level)
    if faces is None or len(faces) == 0:
        if on_miss == "raise":
            raise _threshold_error(grid, info.level)
        info = _fit_level(grid, step, threshold, info.level)
        verts, faces = mcubes.marching_cubes(grid, info.level)
        if len(faces) == 0:
            raise _threshold_error(grid, info.level)
    faces = _orient_outward(grid, verts, faces.astype(np.int64))
    verts_world = lo + verts * step
    out = (
        torch.from_numpy(verts_world.astype(np.float32)),
        torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64)),
    )
    return (*out, info) if with_level else out


def marching_cubes(
    field_fn: FieldFn,
    resolution: int,
    bbox_min: Union[float, Sequence[float], torch.Tensor],
    bbox_max: Union[float, Sequence[float], torch.Tensor],
    threshold: Threshold,
    chunk: int = 2**20,
    device: Optional[Union[str, torch.device]] = None,
    on_miss: OnMiss = "raise",
    with_level: bool = False,
):
    """Extract the ``threshold`` level set of a density field inside a box.

    ``field_fn`` maps world points ``[M, 3]`` to densities (``[M]`` or ``[M, 1]``); it is
    evaluated on ``resolution^3`` lattice points including both box ends. ``threshold`` is a
    number or ``"auto"`` (mean of densities above 1e-5, as threestudio). Returns CPU tensors:
    vertices ``[V, 3]`` float32 in world coordinates and faces ``[F, 3]`` int64 whose normals point
    outward (towards lower density). Raises :class:`IsosurfaceError` naming the density range
    when the field never crosses the threshold, unless ``on_miss="fit"`` (then another level is
    chosen, see the module docstring); ``with_level`` appends the :class:`IsosurfaceLevel` used.
    """
    grid = evaluate_lattice(field_fn, resolution, bbox_min, bbox_max, chunk=chunk, device=device)
    return extract_isosurface(grid, bbox_min, bbox_max, threshold, on_miss=on_miss, with_level=with_level)
