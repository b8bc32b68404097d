"""A small vectorised triangle rasteriser in PyTorch (same code on CPU and CUDA).

Coordinates are *pixel-centre coordinates*: pixel (row r, column c) of an H x W grid has its centre
at ``(x, y) = (c, r)``. A triangle covers a pixel when the pixel centre lies inside it.

**Candidates.** Every triangle's bounding box, rounded inwards to pixel centres
(``ceil(min) .. floor(max)``), lists the only pixels it can cover. The boxes are enumerated for all
triangles at once: with ``n_t`` pixels in box ``t``, ``repeat_interleave`` gives each (triangle,
pixel) pair its triangle and ``k - offset_t`` its index inside the box, turned into a row and a
column by ``divmod`` with the box width. Triangles are taken in chunks so that the number of pairs
stays bounded; there is no loop over pixels.

**Barycentrics.** With the 2D cross product ``a x b = a_x b_y - a_y b_x`` and triangle ``(A, B, C)``,
``D = (B - A) x (C - A)`` is twice the signed area, and a point ``P`` has
``w_B = (P - A) x (C - A) / D``, ``w_C = (B - A) x (P - A) / D``, ``w_A = 1 - w_B - w_C``
(``P = w_A A + w_B B + w_C C``). ``P`` is inside when all three are >= 0 (a small tolerance keeps
pixels on shared edges); either winding works because the sign of ``D`` cancels. Degenerate
triangles (``|D|`` ~ 0) cover nothing. When several triangles claim a pixel (shared edges, overlaps),
the largest triangle index wins (``scatter_reduce`` with ``amax``), so the result does not depend on
the order of the scatter.

**Dilation.** :func:`dilate_ids` grows the covered region one pixel per step: an uncovered pixel
takes the largest triangle index among its 8 neighbours (a 3x3 max-pool of ``id + 1``). The
barycentrics of its centre with respect to that triangle fall slightly outside ``[0, 1]``;
:func:`clamp_barycentrics` moves them back onto the triangle (negative weights set to 0,
renormalised), so the pixel shows the surface at the nearby triangle edge.

**Push-pull fill.** :func:`push_pull_fill` fills every remaining pixel. *Push*: halve the image
repeatedly, each coarse pixel being the weighted mean of its 2x2 valid children (weights = valid
fraction). *Pull*: from the coarsest level down, every invalid pixel takes the (upsampled) coarse
value. The background then holds smooth continuations of the nearest charts, so mip-map levels,
which average covered and uncovered texels, never blend in black.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

BARY_EPS = 1e-4
"""Tolerance of the inside test (barycentric units): pixel centres on a shared edge stay covered."""


def bounding_boxes(xy: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel-centre boxes ``(x0, y0, w, h)`` (each ``[F]`` long) of triangles ``xy`` ``[F, 3, 2]``,
    clipped to the grid; ``w`` or ``h`` is 0 for triangles that cover no pixel centre."""
    lo = torch.ceil(xy.amin(1) - BARY_EPS)
    hi = torch.floor(xy.amax(1) + BARY_EPS)
    lo = torch.maximum(lo, lo.new_zeros(2))
    hi = torch.minimum(hi, hi.new_tensor([width - 1, height - 1]))
    size = (hi - lo + 1).clamp_min(0).long()
    return lo[:, 0].long(), lo[:, 1].long(), size[:, 0], size[:, 1]


def candidate_pairs(
    xy: Tensor, height: int, width: int, max_pairs: int = 1 << 22
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(triangle, row, col)`` index triples, each ``[N]`` long, of every pixel centre inside
    the bounding box of each triangle of ``xy`` ``[F, 3, 2]``, in chunks of about ``max_pairs``."""
    x0, y0, w, h = bounding_boxes(xy, height, width)
    counts = w * h
    ends = counts.cumsum(0)
    total = int(ends[-1]) if len(ends) else 0
    start_tri = 0
    done = 0
    while done < total:
        # The first triangle whose cumulative count passes the chunk budget closes this chunk.
        stop_tri = int(torch.searchsorted(ends, torch.tensor(done + max_pairs, device=ends.device), right=True))
        stop_tri = max(stop_tri, start_tri + 1)
        tri = torch.arange(start_tri, stop_tri, device=xy.device)
        n = counts[start_tri:stop_tri]
        tri = tri.repeat_interleave(n)
        first = (ends[start_tri:stop_tri] - n).repeat_interleave(n)
        local = torch.arange(done, done + len(tri), device=xy.device) - first
        row = y0[tri] + torch.div(local, w[tri], rounding_mode="floor")
        col = x0[tri] + local % w[tri].clamp_min(1)
        yield tri, row, col
        done += len(tri)
        start_tri = stop_tri


def barycentric_2d(tri_xy: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric weights ``[N, 3]`` of points ``p`` ``[N, 2]`` in triangles ``tri_xy`` ``[N, 3, 2]``,
    and a ``[N]`` mask of non-degenerate triangles (weights of degenerate ones are meaningless)."""
    a, b, c = tri_xy.unbind(1)
    ab, ac, ap = b - a, c - a, p - a
    den = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    ok = den.abs() > 1e-12
    den = torch.where(ok, den, torch.ones_like(den))
    wb = (ap[:, 0] * ac[:, 1] - ap[:, 1] * ac[:, 0]) / den
    wc = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / den
    return torch.stack([1.0 - wb - wc, wb, wc], dim=-1), ok


def pixel_centres(rows: Tensor, cols: Tensor, dtype: torch.dtype) -> Tensor:
    """``[N, 2]`` pixel-centre coordinates ``(x, y) = (col, row)``."""
    return torch.stack([cols, rows], dim=-1).to(dtype)


def rasterise(
    xy: Tensor, height: int, width: int, max_pairs: int = 1 << 22, barycentrics: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Cover an ``height x width`` grid with triangles ``xy`` ``[F, 3, 2]`` (pixel-centre coordinates).

    Returns ``ids`` ``[H, W]`` long (covering triangle, -1 where none) and ``bary`` ``[H, W, 3]``
    (barycentrics of each pixel centre in its triangle, 0 where uncovered; None unless
    ``barycentrics``).
    """
    xy = xy.float()
    flat = torch.full((height * width,), -1, dtype=torch.long, device=xy.device)
    for tri, row, col in candidate_pairs(xy, height, width, max_pairs):
        bary, ok = barycentric_2d(xy[tri], pixel_centres(row, col, xy.dtype))
        inside = ok & (bary >= -BARY_EPS).all(-1)
        flat.scatter_reduce_(0, (row * width + col)[inside], tri[inside], reduce="amax")
    ids = flat.view(height, width)
    return ids, barycentrics_of(xy, ids, clamp=False) if barycentrics else None


def barycentrics_of(xy: Tensor, ids: Tensor, clamp: bool) -> Tensor:
    """Barycentrics ``[H, W, 3]`` of every pixel centre in its triangle ``ids`` ``[H, W]`` (-1: none,
    weights 0); with ``clamp`` they are moved onto the triangle (:func:`clamp_barycentrics`)."""
    height, width = ids.shape
    out = torch.zeros(height, width, 3, dtype=xy.dtype, device=xy.device)
    rows, cols = torch.nonzero(ids >= 0, as_tuple=True)
    if len(rows) == 0:
        return out
    bary, _ = barycentric_2d(xy[ids[rows, cols]], pixel_centres(rows, cols, xy.dtype))
    out[rows, cols] = clamp_barycentrics(bary) if clamp else bary
    return out


def clamp_barycentrics(bary: Tensor) -> Tensor:
    """Weights ``[N, 3]`` moved onto the triangle: negatives to 0, then renormalised to sum 1."""
    bary = bary.clamp_min(0.0)
    total = bary.sum(-1, keepdim=True)
    return torch.where(total > 0, bary / total.clamp_min(1e-12), torch.full_like(bary, 1.0 / 3.0))


def dilate_ids(ids: Tensor, steps: int) -> Tensor:
    """Grow the covered region of ``ids`` ``[H, W]`` (-1 = uncovered) by ``steps`` pixels: each step,
    uncovered pixels take the largest triangle index among their 8 neighbours."""
    grid = (ids + 1).double()[None, None]  # exact integers up to 2**53 faces
    for _ in range(steps):
        grown = F.max_pool2d(grid, kernel_size=3, stride=1, padding=1)
        grid = torch.where(grid > 0, grid, grown)
    return grid[0, 0].long() - 1


def push_pull_fill(image: Tensor, valid: Tensor) -> Tensor:
    """Fill pixels of ``image`` ``[H, W, C]`` where ``valid`` ``[H, W]`` is False with the push-pull
    continuation of the valid ones (see the module docstring); valid pixels are unchanged."""
    if bool(valid.all()) or not bool(valid.any()):
        return image
    colour = image.permute(2, 0, 1)[None].float()
    weight = valid[None, None].float()
    levels = [(colour * weight, weight)]
    while max(levels[-1][1].shape[-2:]) > 1:
        col, w = levels[-1]
        # ceil_mode keeps odd sizes; both sums share the divisor, which cancels in col / w.
        levels.append(
            (F.avg_pool2d(col, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True))
        )
    filled = levels[-1][0] / levels[-1][1].clamp_min(1e-12)
    for col, w in reversed(levels[:-1]):
        coarse = F.interpolate(filled, size=col.shape[-2:], mode="nearest")
        # A pixel with any valid child keeps the mean of those children; empty ones take the coarse value.
        filled = torch.where(w > 0, col / w.clamp_min(1e-12), coarse)
    out = filled[0].permute(1, 2, 0).to(image.dtype)
    return torch.where(valid[..., None], image, out)
