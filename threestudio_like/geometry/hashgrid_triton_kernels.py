"""Triton JIT kernels of the hash grid (imported lazily by :mod:`.hashgrid_triton`: importing
this module imports ``triton``). See :mod:`.hashgrid_triton` for the math."""

import triton
import triton.language as tl

BLOCK = 128
"""Points per program."""


@triton.jit
def _setup(x_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr, hashed_ptr, N, F: tl.constexpr,
           FP: tl.constexpr, BLOCK: tl.constexpr):
    """This program's level and points, the level's constants, and each point's lower cell and
    interpolation weights (``pos = fma(x, scale, 0.5)``: one rounding, as tcnn)."""
    lvl = tl.program_id(1)
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = n < N
    f = tl.arange(0, FP)
    fm = m[:, None] & (f[None, :] < F)
    scale = tl.load(scale_ptr + lvl)
    level = (tl.load(offset_ptr + lvl), tl.load(res_ptr + lvl), tl.load(size_ptr + lvl),
             tl.load(hashed_ptr + lvl))
    p0 = tl.fma(tl.load(x_ptr + n * 3 + 0, mask=m, other=0.0), scale, 0.5)
    p1 = tl.fma(tl.load(x_ptr + n * 3 + 1, mask=m, other=0.0), scale, 0.5)
    p2 = tl.fma(tl.load(x_ptr + n * 3 + 2, mask=m, other=0.0), scale, 0.5)
    cell = (tl.floor(p0).to(tl.int32), tl.floor(p1).to(tl.int32), tl.floor(p2).to(tl.int32))
    frac = (p0 - tl.floor(p0), p1 - tl.floor(p1), p2 - tl.floor(p2))
    return lvl, n, m, f, fm, scale, level, cell, frac


@triton.jit
def _corner(level, cell, frac, C: tl.constexpr, HASH_MASK: tl.constexpr):
    """Table row (index within the level plus its offset) and weight factors of corner ``C``."""
    offset, res, size, hashed = level
    c0 = cell[0] + ((C >> 2) & 1)
    c1 = cell[1] + ((C >> 1) & 1)
    c2 = cell[2] + (C & 1)
    w0 = frac[0] if (C >> 2) & 1 else 1.0 - frac[0]
    w1 = frac[1] if (C >> 1) & 1 else 1.0 - frac[1]
    w2 = frac[2] if C & 1 else 1.0 - frac[2]
    h = c0.to(tl.uint32) ^ (c1.to(tl.uint32) * 2654435761) ^ (c2.to(tl.uint32) * 805459861)
    h = (h & HASH_MASK).to(tl.int32)
    dense = c0 + c1 * res + c2 * (res * res)
    dense = tl.where(dense >= size, dense - size, dense)
    index = tl.where(hashed != 0, h, dense)
    return (offset + index).to(tl.int64), w0, w1, w2


@triton.jit
def forward_kernel(x_ptr, params_ptr, out_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr,
                   hashed_ptr, N, out_stride, F: tl.constexpr, FP: tl.constexpr,
                   HASH_MASK: tl.constexpr, BLOCK: tl.constexpr):
    lvl, n, m, f, fm, scale, level, cell, frac = _setup(
        x_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr, hashed_ptr, N, F, FP, BLOCK
    )
    acc = tl.zeros([BLOCK, FP], dtype=tl.float32)
    for c in tl.static_range(8):
        row, w0, w1, w2 = _corner(level, cell, frac, c, HASH_MASK)
        feat = tl.load(params_ptr + (row * F)[:, None] + f[None, :], mask=fm, other=0.0)
        acc += ((w0 * w1) * w2)[:, None] * feat
    dst = n.to(tl.int64)[:, None] * out_stride + lvl * F + f[None, :]
    tl.store(out_ptr + dst, acc, mask=fm)


@triton.jit
def backward_kernel(x_ptr, params_ptr, grad_out_ptr, grad_params_ptr, grad_x_ptr, scale_ptr,
                    res_ptr, size_ptr, offset_ptr, hashed_ptr, N, out_stride,
                    F: tl.constexpr, FP: tl.constexpr, HASH_MASK: tl.constexpr,
                    X_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    lvl, n, m, f, fm, scale, level, cell, frac = _setup(
        x_ptr, scale_ptr, res_ptr, size_ptr, offset_ptr, hashed_ptr, N, F, FP, BLOCK
    )
    src = n.to(tl.int64)[:, None] * out_stride + lvl * F + f[None, :]
    go = tl.load(grad_out_ptr + src, mask=fm, other=0.0)
    gx0 = tl.zeros([BLOCK], dtype=tl.float32)
    gx1 = tl.zeros([BLOCK], dtype=tl.float32)
    gx2 = tl.zeros([BLOCK], dtype=tl.float32)
    for c in tl.static_range(8):
        row, w0, w1, w2 = _corner(level, cell, frac, c, HASH_MASK)
        ptr = params_ptr + (row * F)[:, None] + f[None, :]
        gptr = grad_params_ptr + (row * F)[:, None] + f[None, :]
        tl.atomic_add(gptr, ((w0 * w1) * w2)[:, None] * go, mask=fm)
        if X_GRAD:
            dot = tl.sum(go * tl.load(ptr, mask=fm, other=0.0), axis=1)  # sum_f go_f * feature_cf
            s0 = 1.0 if (c >> 2) & 1 else -1.0
            s1 = 1.0 if (c >> 1) & 1 else -1.0
            s2 = 1.0 if c & 1 else -1.0
            gx0 += dot * (s0 * (w1 * w2)) * scale
            gx1 += dot * (s1 * (w0 * w2)) * scale
            gx2 += dot * (s2 * (w0 * w1)) * scale
    if X_GRAD:
        tl.atomic_add(grad_x_ptr + n * 3 + 0, gx0, mask=m)
        tl.atomic_add(grad_x_ptr + n * 3 + 1, gx1, mask=m)
        tl.atomic_add(grad_x_ptr + n * 3 + 2, gx2, mask=m)
