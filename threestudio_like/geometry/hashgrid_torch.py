"""Pure-PyTorch hash-grid kernels (the ``"torch"`` backend of :class:`.hashgrid.HashGridEncoding`).

Grid position with tiny-cuda-nn's single rounding
-------------------------------------------------
tcnn computes a level's grid position as ``pos = fmaf(scale, x, 0.5f)``: the exact value
``x * scale + 1/2`` rounded ONCE to float32. Evaluating ``x * scale + 0.5`` in float32 rounds twice
(after the product and after the sum), which differs in the last bit for a few percent of inputs and
then moves ``floor(pos)`` or the interpolation weight. :func:`grid_positions` reproduces the single
rounding exactly without an fma instruction:

1. ``p = double(x) * double(scale)`` is exact (two 24-bit significands give at most 48 bits).
2. ``s = p + 0.5`` in float64 is rounded; Knuth's TwoSum gives its exact error ``e`` (``s + e`` is
   the exact sum), with plain float64 operations.
3. If ``e != 0`` and the last bit of ``s`` is even, ``s`` is moved one float64 ulp towards the exact
   value: that makes the float64 rounding *round-to-odd*.
4. Casting to float32 (round to nearest even) then equals rounding the exact value directly, because
   rounding to odd with ``53 >= 24 + 2`` bits followed by round-to-nearest is a correct rounding
   (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding
   to odd", IEEE TC 2008). A plain float64 sum followed by the cast is NOT always exact for a fused
   multiply-add: when ``p < 2^-6`` the float64 sum itself is inexact and may land on a float32 tie.

Float64 inputs (used by tests for reference-precision checks) are computed as ``x * scale + 0.5``
in float64; tcnn has no float64 path.

Index math
----------
Positions, cells and weights of all levels are computed as batched ``[L, D, N]`` tensors (points
innermost: contiguous, vectorised); indices are computed for groups of levels of one kind
(``LEVEL_GROUP``). Gathers and scatters then run level by level on ``[2^D, N]`` blocks: one level
touches one table slice and its temporaries stay in cache. Corner ``c`` (dimension 0 is its most
significant bit) of level ``l`` has

* dense levels: ``index = sum_d (cell_d + bit_d) * res^d``, reduced ``% table_size`` by one
  conditional subtraction (the index stays below twice the table size for inputs in ``[0,1]``);
* hashed levels: ``index = XOR_d ((cell_d + bit_d) * prime_d) & (2^log2T - 1)``; the mask commutes
  with XOR, so each per-dimension term is masked first (two terms per dimension, then ``2^D`` XORs);

within the level's table slice (``offset`` entries into the flat table). The weight of corner ``c`` is
``prod_d (bit_d ? frac_d : 1 - frac_d)`` with ``frac = pos - floor(pos)``.

Backward
--------
:class:`HashGridFunction` (used when the input needs no gradient) saves the indices and weights of
the forward pass; its backward is one ``index_add_`` of ``weight * grad_out`` into a zero gradient
table, level by level (with two features per entry, pairs are gathered and added as complex
numbers: one 8-byte element per corner). When the input needs a gradient (analytic normals, possibly ``create_graph=True``), the
same forward is built from differentiable tensor operations instead, so it is twice differentiable.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch

# Levels whose index math runs as one batched op (bounds the [group, 2^D, N] temporaries; fewer,
# larger ops also suffer less when other processes hold the cores).
LEVEL_GROUP = 16
# Points per chunk of the fast path (HashGridFunction).
POINT_CHUNK = 1 << 16

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class LevelConstants(NamedTuple):
    """Per-level constants of a hash grid (tensors on the encoding's device, plus Python copies)."""

    scale_bits: torch.Tensor
    """[L] int32: float32 bit patterns of the level scales (a dtype cast must not round them)."""
    multipliers: torch.Tensor
    """[L, D] int64: ``res^d`` on dense levels, the hash primes on hashed levels."""
    offsets: Tuple[int, ...]
    """First table entry of each level."""
    table_sizes: Tuple[int, ...]
    """Table entries per level."""
    hashed: Tuple[bool, ...]
    """Whether each level is indexed by the spatial hash (else densely)."""
    hash_mask: int
    """``2^log2_hashmap_size - 1``."""


def grid_positions(x: torch.Tensor, scale_bits: torch.Tensor) -> torch.Tensor:
    """``x [N, D]``, level scales (float32 bits) ``[L]`` -> ``pos = x * scale + 0.5`` ``[L, D, N]``.

    For float32 ``x`` in ``[0, 1]`` the result is the exact value rounded once (tcnn's ``fmaf``);
    see the module docstring for why this is exact. Not differentiable.
    """
    scale = scale_bits.view(torch.float32)
    xt = x.t()[None]  # [1, D, N]
    if x.dtype != torch.float32:
        return xt * scale.to(x.dtype)[:, None, None] + 0.5
    p = xt.double() * scale.double()[:, None, None]  # exact
    # p >= 2^-6: the float64 sum is exact; below: 0.5 + (p rounded to a multiple of 2^-24).
    small = 0.5 + torch.round(p * 2.0**24) * 2.0**-24
    return torch.where(p < 2.0**-6, small, p + 0.5).float()


def _combine(terms: torch.Tensor, op: Callable, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``terms [..., D, 2, N]`` (value of dimension d for bit 0 / 1) -> ``[..., 2^D, N]`` by ``op``.

    Corner ``c`` combines ``terms[..., d, bit_d(c), :]`` over d; dimension 0 is the most
    significant bit. The last step writes into ``out`` when given.
    """
    res = terms[..., 0, :, :]
    D = terms.shape[-3]
    for d in range(1, D):
        a, b = res[..., :, None, :], terms[..., d, None, :, :]
        if d == D - 1 and out is not None:
            op(a, b, out=out.view(torch.broadcast_shapes(a.shape, b.shape)))
            return out
        res = op(a, b).flatten(-3, -2)
    if out is not None:
        return out.copy_(res)
    return res


def corner_weights(frac: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``frac [..., D, N]`` -> N-linear corner weights ``[..., 2^D, N]`` (differentiable)."""
    return _combine(torch.stack((1.0 - frac, frac), dim=-2), torch.mul, out)


def level_indices(
    cell: torch.Tensor, consts: LevelConstants, l0: int, l1: int, out: torch.Tensor
) -> torch.Tensor:
    """Lower cells ``[Lb, D, N]`` int64 of levels ``l0:l1`` (all dense or all hashed) -> in-level
    corner indices ``out [Lb, 2^D, N]`` int64."""
    mult = consts.multipliers[l0:l1, :, None, None]  # [Lb, D, 1, 1]
    lo = cell[:, :, None, :] * mult
    terms = torch.cat((lo, lo + mult), dim=2)  # [Lb, D, 2, N]
    if consts.hashed[l0]:
        return _combine(terms.bitwise_and_(consts.hash_mask), torch.bitwise_xor, out)
    _combine(terms, torch.add, out)
    size = torch.tensor(consts.table_sizes[l0:l1], device=out.device)[:, None, None]
    return out.sub_((out >= size) * size)


def level_groups(hashed: Tuple[bool, ...], n_active: int, group: int) -> List[Tuple[int, int]]:
    """Consecutive level ranges of one kind (dense / hashed), at most ``group`` levels each."""
    groups = []
    start = 0
    for level in range(1, n_active + 1):
        if level == n_active or hashed[level] != hashed[start] or level - start == group:
            groups.append((start, level))
            start = level
    return groups


def _entries(table: torch.Tensor) -> torch.Tensor:
    """``[E, F]`` -> ``[E]`` complex for two features (one 8/16-byte element per entry), else as is."""
    if table.shape[1] == 2 and table.dtype in _COMPLEX:
        return torch.view_as_complex(table)
    return table


def _level_part(entries: torch.Tensor, consts: LevelConstants, level: int) -> torch.Tensor:
    """The view of ``entries`` (flat over table entries) on ``level``'s slice."""
    start = consts.offsets[level]
    return entries[start : start + consts.table_sizes[level]]


def _as_features(rows: torch.Tensor, F: int) -> torch.Tensor:
    """Gathered rows ``[M]`` complex or ``[M, F]`` -> ``[M, F]`` real."""
    return torch.view_as_real(rows) if rows.is_complex() else rows.view(-1, F)


def _positions_and_cells(
    x: torch.Tensor, consts: LevelConstants, n_active: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions ``[n_active, D, N]``, their floors, and the in-level indices ``[n_active, 2^D, N]``."""
    pos = grid_positions(x, consts.scale_bits[:n_active])
    floor = torch.floor(pos)
    cell = floor.to(torch.int64)
    index = torch.empty(n_active, 1 << x.shape[1], x.shape[0], dtype=torch.int64, device=x.device)
    for l0, l1 in level_groups(consts.hashed, n_active, LEVEL_GROUP):
        level_indices(cell[l0:l1], consts, l0, l1, index[l0:l1])
    return pos, floor, index


class HashGridFunction(torch.autograd.Function):
    """Hash-grid forward with a one-scatter-per-level backward to the table (no input gradient).

    Points are processed in chunks of ``POINT_CHUNK`` (temporaries stay cache-sized: time grows
    linearly with the number of points); each chunk's indices and weights are kept for backward.
    """

    @staticmethod
    def forward(ctx, params, x, consts, n_active, n_features):  # type: ignore[override]
        F, N = n_features, x.shape[0]
        entries = _entries(params.view(-1, F))
        out = x.new_empty(n_active, N, F)
        saved = []
        for n0 in range(0, N, POINT_CHUNK):
            n1 = min(n0 + POINT_CHUNK, N)
            pos, floor, index = _positions_and_cells(x[n0:n1], consts, n_active)
            weight = corner_weights(pos.sub_(floor))  # [L, C, n]
            for level in range(n_active):
                rows = _level_part(entries, consts, level).index_select(0, index[level].view(-1))
                feats = _as_features(rows, F).view(-1, n1 - n0, F)
                torch.sum(feats * weight[level, :, :, None], dim=0, out=out[level, n0:n1])
            saved += [index, weight]
        ctx.save_for_backward(*saved)
        ctx.consts, ctx.n_entries, ctx.F = consts, entries.shape[0], F
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = ctx.saved_tensors
        F = ctx.F
        g = grad_out.transpose(0, 1).contiguous()  # [L, N, F]
        grad = g.new_zeros(ctx.n_entries, F)
        entries = _entries(grad)
        n0 = 0
        for index, weight in zip(saved[0::2], saved[1::2]):
            n1 = n0 + index.shape[2]
            for level in range(index.shape[0]):
                src = (weight[level, :, :, None] * g[level, n0:n1]).view(-1, F)  # [C * n, F]
                part = _level_part(entries, ctx.consts, level)
                part.index_add_(0, index[level].view(-1), _entries(src))
            n0 = n1
        return grad.view(-1), None, None, None, None


def encode(
    params: torch.Tensor,
    x: torch.Tensor,
    consts: LevelConstants,
    n_active: int,
    n_features: int,
) -> torch.Tensor:
    """Encode ``x [N, D]`` (clamped to ``[0,1]``) on the first ``n_active`` levels -> ``[N, n_active, F]``.

    ``params`` and ``x`` share one floating dtype. With ``x.requires_grad`` the result is built from
    differentiable operations (twice differentiable in ``x``); otherwise :class:`HashGridFunction`.
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return HashGridFunction.apply(params, x, consts, n_active, n_features)
    F = n_features
    with torch.no_grad():
        pos, floor, index = _positions_and_cells(x, consts, n_active)
        offsets = torch.tensor(consts.offsets[:n_active], device=x.device)
        flat = (index + offsets[:, None, None]).view(-1)
    # Exact value of pos, gradient of x * scale: pos + (a - a.detach()) adds an exact zero.
    scale = consts.scale_bits[:n_active].view(torch.float32).to(x.dtype)
    scaled = x.t()[None] * scale[:, None, None]
    weight = corner_weights((pos - floor) + (scaled - scaled.detach()))  # [L, C, N]
    feats = _as_features(_entries(params.view(-1, F)).index_select(0, flat), F)
    feats = feats.view(*index.shape, F)
    return (weight[..., None] * feats).sum(dim=1).transpose(0, 1)


def padded_output(
    out: Optional[torch.Tensor], N: int, n_levels: int, n_features: int, like: torch.Tensor
) -> torch.Tensor:
    """``[N, n_active, F]`` (or None for no active level) -> ``[N, n_levels * F]``, zeros beyond."""
    n_active = 0 if out is None else out.shape[1]
    if n_active == n_levels:
        return out.reshape(N, n_levels * n_features)
    pad = like.new_zeros(N, n_levels - n_active, n_features)
    full = pad if out is None else torch.cat((out, pad), dim=1)
    return full.reshape(N, n_levels * n_features)
