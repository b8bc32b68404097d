"""Ray marching through nerfacc's occupancy grid, on any device.

threestudio marches rays with ``nerfacc.OccGridEstimator.sampling`` and composites them with
nerfacc's packed ``render_weight_from_density``. Both reach nerfacc's CUDA extension, which has no
CPU kernels (and on a CPU-only torch its JIT build fails at once). This module keeps nerfacc for
what it does in pure torch (the estimator's buffers and its cell sampling) and provides:

* :func:`update_occupancy_ema` -- nerfacc's EMA refresh of the grid,
  ``occ_c = max(decay * occ_c, sigma(x) * dt)`` at a jittered point ``x`` of each refreshed cell
  ``c``, with cells drawn twice in one refresh merged by a maximum (nerfacc's indexed write keeps
  an arbitrary one of them, which varies with thread scheduling): the same grid on every run.

* :func:`occgrid_sampling_torch` -- the same sampling semantics as nerfacc's CUDA traversal, driven
  by the same ``estimator.binaries``: samples ``[t, t + dt]`` on a lattice anchored at the
  (jittered) near plane, kept where their midpoint lies inside the box and in an occupied cell,
  then nerfacc's visibility test (``alpha >= alpha_thre`` and transmittance ``>= early_stop_eps``).
* packed scans and compositing in torch (:func:`exclusive_sum_packed`,
  :func:`render_weight_from_density_packed`, :func:`accumulate_along_rays`), the same maths as
  nerfacc's ``render_weight_from_density`` (``alpha = 1 - exp(-sigma dt)``,
  ``T_i = exp(-sum_{j<i} sigma_j dt_j)``, ``w = T alpha``).
* dispatchers :func:`occgrid_sampling` / :func:`render_weight_from_density` that take nerfacc's
  CUDA kernels only for CUDA tensors with a working extension, and the torch code otherwise.

Packed sample tensors follow nerfacc's layout: flat ``[n_samples]`` with the samples of one ray
contiguous and in marching order, and ``ray_indices`` non-decreasing.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

# Rays marched at once by the torch sampler (bounds its memory: ~100 floats per ray).
DEFAULT_MAX_RAYS = 1 << 16

SigmaFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@functools.lru_cache(maxsize=None)
def _nerfacc_extension_loads() -> bool:
    try:  # only ever reached with CUDA tensors on a machine where CUDA is available
        from nerfacc.cuda._backend import _C  # noqa: F401  (may JIT-compile on first use)
    except Exception:  # noqa: BLE001  (no toolkit, failed build, ...)
        return False
    return _C is not None


def nerfacc_cuda_available(device: torch.device) -> bool:
    """True when nerfacc's CUDA kernels can run on ``device``.

    CPU devices return False without importing anything from ``nerfacc.cuda``.
    """
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    return _nerfacc_extension_loads()


def use_nerfacc_kernels(device: torch.device, backend: str = "auto") -> bool:
    """Resolve a ``backend`` setting (``auto`` | ``nerfacc`` | ``torch``) for ``device``."""
    if backend == "torch":
        return False
    if backend == "nerfacc":
        if not nerfacc_cuda_available(device):
            raise RuntimeError(
                f"backend='nerfacc' needs CUDA tensors and nerfacc's CUDA extension; got device "
                f"{device}. Use backend='auto' to fall back to the torch ray marcher."
            )
        return True
    if backend != "auto":
        raise ValueError(f"Unknown ray-marching backend '{backend}' (auto | nerfacc | torch).")
    return nerfacc_cuda_available(device)


# --------------------------------------------------------------------------------------------
# geometry helpers


def ray_aabb_intersect(rays_o: Tensor, rays_d: Tensor, aabb: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays ``[N, 3]`` against one box ``aabb = (xmin, ymin, zmin, xmax, ymax, zmax)``.

    Returns ``t_min``, ``t_max`` ``[N]`` and ``hit`` ``[N]`` (bool; the box is in front of the
    origin or contains it). Values of rays that miss are meaningless.
    """
    tiny = 1e-12
    safe_d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    inv_d = 1.0 / safe_d
    t1 = (aabb[:3] - rays_o) * inv_d
    t2 = (aabb[3:] - rays_o) * inv_d
    t_min = torch.minimum(t1, t2).amax(dim=-1)
    t_max = torch.maximum(t1, t2).amin(dim=-1)
    hit = (t_max > t_min) & (t_max > 0)
    return t_min, t_max, hit


# --------------------------------------------------------------------------------------------
# packed scans and compositing (torch)


def pack_info(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[n_rays, 2]`` (start, count) of each ray's samples in a packed tensor (any device)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


def exclusive_sum_packed(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray exclusive cumulative sum of packed ``values`` ``[n_samples]`` (differentiable).

    One global cumulative sum minus each ray's value at its first sample. The scan runs in float64
    so that subtracting large prefix sums of other rays costs no precision.
    """
    if values.numel() == 0:
        return values.clone()
    v64 = values.to(torch.float64)
    exclusive = torch.cumsum(v64, 0) - v64
    starts = pack_info(ray_indices, n_rays)[:, 0]
    base = exclusive.index_select(0, starts.index_select(0, ray_indices))
    return (exclusive - base).to(values.dtype)


def render_weight_from_density_packed(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Weights, transmittance and alphas ``[n_samples]`` of packed samples (nerfacc's maths)."""
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigmas_dt)
    trans = torch.exp(-exclusive_sum_packed(sigmas_dt, ray_indices, n_rays))
    return trans * alphas, trans, alphas


def accumulate_along_rays(
    weights: Tensor, values: Optional[Tensor], ray_indices: Tensor, n_rays: int
) -> Tensor:
    """``sum_i w_i v_i`` per ray: ``[n_rays, D]`` (``D = 1`` and ``v = 1`` when ``values`` is None)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def render_weight_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    use_nerfacc: bool = False,
) -> Tensor:
    """Packed rendering weights ``[n_samples]``: nerfacc's kernel if ``use_nerfacc``, else torch."""
    if use_nerfacc:
        import nerfacc

        weights, _, _ = nerfacc.render_weight_from_density(
            t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays
        )
        return weights
    weights, _, _ = render_weight_from_density_packed(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return weights


# --------------------------------------------------------------------------------------------
# sampling


@torch.no_grad()
def occupied_lattice_samples(
    binaries: Tensor,
    aabb: Tensor,
    rays_o: Tensor,
    rays_d: Tensor,
    near_planes: Tensor,
    far_plane: float,
    render_step_size: float,
    max_rays: int = DEFAULT_MAX_RAYS,
) -> Tuple[Tensor, Tensor]:
    """Lattice samples of each ray whose midpoints fall in occupied cells.

    Sample ``k`` of ray ``r`` spans ``[near_r + k dt, near_r + (k + 1) dt]``; it exists when its
    midpoint lies in ``[max(t_box_in, near_r), min(t_box_out, far_plane))`` and in a cell with
    ``binaries`` set (``binaries``: ``[R, R, R]`` bool over ``aabb``). This is the sample set of
    nerfacc's CUDA traversal with ``cone_angle = 0``.

    Each ray is cut at the cell walls it crosses into segments that lie in one cell each; only the
    segments in occupied cells emit their lattice points, so the work is one lookup per crossed
    cell plus one entry per kept sample. Returns packed ``ray_indices`` (long) and the lattice
    index ``k`` (float), in ray-then-marching order.
    """
    outs = [
        _occupied_lattice_samples_chunk(
            binaries, aabb, rays_o[i : i + max_rays], rays_d[i : i + max_rays],
            near_planes[i : i + max_rays], far_plane, render_step_size,
        )
        for i in range(0, rays_o.shape[0], max_rays)
    ]
    if len(outs) == 1:
        return outs[0]
    offsets = range(0, rays_o.shape[0], max_rays)
    return (
        torch.cat([ri + off for (ri, _), off in zip(outs, offsets)]),
        torch.cat([k for _, k in outs]),
    )


def _occupied_lattice_samples_chunk(
    binaries: Tensor,
    aabb: Tensor,
    rays_o: Tensor,
    rays_d: Tensor,
    near_planes: Tensor,
    far_plane: float,
    dt: float,
) -> Tuple[Tensor, Tensor]:
    device, dtype = rays_o.device, rays_o.dtype
    empty = (
        torch.zeros(0, dtype=torch.long, device=device),
        torch.zeros(0, dtype=dtype, device=device),
    )
    res = torch.tensor(binaries.shape, device=device)
    cell_size = (aabb[3:] - aabb[:3]) / res

    # Occupied samples all lie in the bounding box of the occupied cells: march only there.
    occupied_cells = torch.nonzero(binaries)
    if occupied_cells.shape[0] == 0 or rays_o.shape[0] == 0:
        return empty
    cell_lo = occupied_cells.amin(0)
    cell_hi = occupied_cells.amax(0) + 1
    sub_box = torch.cat([aabb[:3] + cell_lo * cell_size, aabb[:3] + cell_hi * cell_size])
    t_box_in, t_box_out, hit = ray_aabb_intersect(rays_o, rays_d, sub_box)
    lo = torch.maximum(t_box_in, near_planes)
    hi = torch.clamp(t_box_out, max=far_plane)
    rays = torch.nonzero(hit & (hi > lo)).squeeze(-1)
    if rays.shape[0] == 0:
        return empty
    o, d = rays_o.index_select(0, rays), rays_d.index_select(0, rays)
    near = near_planes.index_select(0, rays)[:, None]
    lo, hi = lo.index_select(0, rays), hi.index_select(0, rays)
    n_rays = rays.shape[0]

    # Distances where each ray crosses the cell walls inside the sub-box, within (lo, hi).
    n_walls = int((cell_hi - cell_lo - 1).max())
    if n_walls > 0:
        wall_ids = cell_lo[:, None] + torch.arange(1, n_walls + 1, device=device)[None]  # [3, W]
        real_wall = wall_ids < cell_hi[:, None]
        walls = aabb[:3, None] + wall_ids.to(dtype) * cell_size[:, None]
        safe_d = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        cross = (walls[None] - o[:, :, None]) / safe_d[:, :, None]  # [N, 3, W]
        inside = (cross > lo[:, None, None]) & (cross < hi[:, None, None]) & real_wall[None]
        cross = torch.where(inside, cross, hi[:, None, None]).reshape(n_rays, -1)
        n_cross = int(inside.reshape(n_rays, -1).sum(-1).max())
        cross = torch.sort(cross, dim=1).values[:, :n_cross]  # padding (= hi) sorts last
        bounds = torch.cat([lo[:, None], cross, hi[:, None]], dim=1)
    else:
        bounds = torch.stack([lo, hi], dim=1)
    seg_lo, seg_hi = bounds[:, :-1], bounds[:, 1:]  # [N, S]: each segment lies in one cell

    # Occupancy of the cell holding each segment (its midpoint decides).
    mid = 0.5 * (seg_lo + seg_hi)
    g = (o[:, None, :] + d[:, None, :] * mid[..., None] - aabb[:3]) / cell_size
    cell = torch.minimum(g.floor().long().clamp_(min=0), res - 1)
    _, res_y, res_z = binaries.shape
    strides = torch.tensor([res_y * res_z, res_z, 1], device=device)
    occupied = binaries.reshape(-1)[(cell * strides).sum(-1)]

    # Lattice points with midpoints in [seg_lo, seg_hi): k in [k0, k1).
    k0 = torch.ceil((seg_lo - near) / dt - 0.5)
    k1 = torch.ceil((seg_hi - near) / dt - 0.5)
    counts = torch.where(occupied, k1 - k0, torch.zeros_like(k0)).clamp_(min=0).long().reshape(-1)
    seg_ids = torch.nonzero(counts).squeeze(-1)
    seg_counts = counts[seg_ids]
    total = int(seg_counts.sum())
    if total == 0:
        return empty
    per_sample_seg = torch.repeat_interleave(
        torch.arange(seg_ids.shape[0], device=device), seg_counts, output_size=total
    )
    first = torch.cumsum(seg_counts, 0) - seg_counts
    offset = torch.arange(total, device=device) - first.index_select(0, per_sample_seg)
    seg_of_sample = seg_ids.index_select(0, per_sample_seg)
    k = k0.reshape(-1).index_select(0, seg_of_sample) + offset.to(dtype)
    seg_row = torch.div(seg_of_sample, seg_lo.shape[1], rounding_mode="floor")
    ray_of_sample = rays.index_select(0, seg_row)
    return ray_of_sample, k


@torch.no_grad()
def occgrid_sampling_torch(
    estimator,
    rays_o: Tensor,
    rays_d: Tensor,
    sigma_fn: Optional[SigmaFn] = None,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    render_step_size: float = 1e-3,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    stratified: bool = False,
    max_rays: int = DEFAULT_MAX_RAYS,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Torch twin of ``nerfacc.OccGridEstimator.sampling`` (``cone_angle = 0``, one grid level).

    Uses ``estimator.binaries``, ``estimator.aabbs`` and ``estimator.occs`` exactly as nerfacc
    does, including its rule ``alpha_thre = min(alpha_thre, occs.mean())``. Returns packed
    ``ray_indices`` (long), ``t_starts`` and ``t_ends`` ``[n_samples]``.
    """
    if estimator.binaries.shape[0] != 1:
        raise NotImplementedError("The torch ray marcher supports one occupancy grid level.")
    near_planes = torch.full_like(rays_o[:, 0], near_plane)
    if stratified:
        near_planes = near_planes + torch.rand_like(near_planes) * render_step_size
    ray_indices, k = occupied_lattice_samples(
        estimator.binaries[0],
        estimator.aabbs[0].to(rays_o.dtype),
        rays_o,
        rays_d,
        near_planes,
        far_plane,
        render_step_size,
        max_rays,
    )
    t_starts = near_planes.index_select(0, ray_indices) + k * render_step_size
    t_ends = t_starts + render_step_size

    if sigma_fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0) and t_starts.numel():
        alpha_thre = min(alpha_thre, estimator.occs.mean().item())
        sigmas = sigma_fn(t_starts, t_ends, ray_indices)
        if sigmas.shape != t_starts.shape:
            raise ValueError(
                f"sigma_fn must return shape {tuple(t_starts.shape)}, got {tuple(sigmas.shape)}"
            )
        _, trans, alphas = render_weight_from_density_packed(
            t_starts, t_ends, sigmas, ray_indices, rays_o.shape[0]
        )
        keep = trans >= early_stop_eps
        if alpha_thre > 0.0:
            keep &= alphas >= alpha_thre
        ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
    return ray_indices, t_starts, t_ends


@torch.no_grad()
def occgrid_sampling(
    estimator,
    rays_o: Tensor,
    rays_d: Tensor,
    sigma_fn: Optional[SigmaFn] = None,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    render_step_size: float = 1e-3,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    stratified: bool = False,
    use_nerfacc: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Sample rays through ``estimator``: nerfacc's CUDA traversal if ``use_nerfacc``, else torch."""
    if use_nerfacc:
        ray_indices, t_starts, t_ends = estimator.sampling(
            rays_o,
            rays_d,
            sigma_fn=sigma_fn,
            near_plane=near_plane,
            far_plane=far_plane,
            render_step_size=render_step_size,
            early_stop_eps=early_stop_eps,
            alpha_thre=alpha_thre,
            stratified=stratified,
            cone_angle=0.0,
        )
        return ray_indices.long(), t_starts, t_ends
    return occgrid_sampling_torch(
        estimator,
        rays_o,
        rays_d,
        sigma_fn=sigma_fn,
        near_plane=near_plane,
        far_plane=far_plane,
        render_step_size=render_step_size,
        early_stop_eps=early_stop_eps,
        alpha_thre=alpha_thre,
        stratified=stratified,
    )


@torch.no_grad()
def update_occupancy_ema(
    estimator,
    step: int,
    occ_eval_fn: Callable[[Tensor], Tensor],
    occ_thre: float = 0.01,
    ema_decay: float = 0.95,
    warmup_steps: int = 256,
) -> None:
    """Refresh ``estimator.occs`` and ``estimator.binaries`` as ``OccGridEstimator._update`` does,
    deterministically.

    Before ``warmup_steps`` every cell is refreshed; later a quarter of the cells drawn uniformly
    plus a quarter drawn among the occupied ones (the same random draws as nerfacc, in the same
    order). The two draws overlap, and nerfacc writes ``occs[cells] = max(occs[cells] * decay,
    occ)`` with repeated cells, where the surviving write depends on thread scheduling; here a
    repeated cell keeps the largest of its fresh values (a scatter-max, as nerfacc's own comment
    intends), so the grid, and the run, no longer vary between identical runs.
    """
    if step < warmup_steps:
        lvl_indices = estimator._get_all_cells()
    else:
        lvl_indices = estimator._sample_uniform_and_occupied_cells(estimator.cells_per_lvl // 4)
    occs = estimator.occs
    for lvl, indices in enumerate(lvl_indices):
        coords = estimator.grid_coords[indices]
        unit = (coords + torch.rand_like(coords, dtype=torch.float32)) / estimator.resolution
        low, high = estimator.aabbs[lvl, :3], estimator.aabbs[lvl, 3:]
        occ = occ_eval_fn(low + unit * (high - low)).reshape(-1).to(occs.dtype)
        cells = lvl * estimator.cells_per_lvl + indices
        updated = occs.clone()
        updated[cells] = occs[cells] * ema_decay  # repeated cells write the same value
        updated.scatter_reduce_(0, cells, occ, reduce="amax", include_self=True)
        occs.copy_(updated)
    threshold = torch.clamp(occs[occs >= 0].mean(), max=occ_thre)
    estimator.binaries = (occs > threshold).view(estimator.binaries.shape)
