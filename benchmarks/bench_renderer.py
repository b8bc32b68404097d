"""Throughput of the NeRF volume renderer (training mode), CPU and, when present, CUDA.

Renders a 64x64 view of a blob with the threestudio defaults (occupancy grid 32^3, 512 samples per
ray setting, alpha threshold 0.01) after one occupancy-grid refresh, and prints rays/s for the
forward pass and for forward + backward:

* ``hash grid``: the real ``hashgrid-implicit-volume`` geometry with threestudio's default hash
  grid when it is registered; otherwise the project's hash-grid encoding with a stand-in
  blob-density head; otherwise skipped.
* ``analytic``: a closed-form blob (no network), which isolates the marching/compositing cost.

Run: ``python benchmarks/bench_renderer.py [--iters N] [--size S] [--threads T]`` (about a minute
on 2 cores). On a machine where other processes hold cores, torch's OpenMP threads wait on each
other and every op can be 10x slower: compare figures taken with the same ``--threads``.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threestudio_like import find  # noqa: E402
from threestudio_like.base import BaseModule  # noqa: E402
from threestudio_like.cameras import c2w_from_spherical, rays_for_cameras  # noqa: E402
from threestudio_like.renderers import occupancy  # noqa: E402


class AnalyticBlob(BaseModule):
    """threestudio's blob_magic3d density bias as a closed form: softplus(10 (1 - |x| / 0.5))."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        n_feature_dims: int = 3

    cfg: Config

    def configure(self) -> None:
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.color = nn.Parameter(torch.zeros(self.cfg.n_feature_dims))

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.scale * (1.0 - points.norm(dim=-1, keepdim=True) / 0.5))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        feats = self.color + 0.5 * points[:, :1]
        return {"density": self.forward_density(points), "features": feats}


class HashGridBlob(BaseModule):
    """Stand-in for ``hashgrid-implicit-volume``: threestudio's default hash grid + 64-wide heads."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self) -> None:
        from threestudio_like.geometry.hashgrid import get_encoding

        self.encoding = get_encoding(
            3,
            {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19,
             "base_resolution": 16, "per_level_scale": 1.447269237440378},
        )
        width = self.encoding.n_output_dims
        self.density_net = nn.Sequential(nn.Linear(width, 64, bias=False), nn.ReLU(), nn.Linear(64, 1, bias=False))
        self.feature_net = nn.Sequential(nn.Linear(width, 64, bias=False), nn.ReLU(), nn.Linear(64, 3, bias=False))

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoding((points / self.cfg.radius + 1.0) * 0.5)

    def _density(self, points: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        bias = 10.0 * (1.0 - points.norm(dim=-1, keepdim=True) / 0.5)
        return F.softplus(self.density_net(enc) + bias)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        return self._density(points, self._encode(points))

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        enc = self._encode(points)
        return {"density": self._density(points, enc), "features": self.feature_net(enc)}


def build_geometry(kind: str) -> Tuple[Optional[nn.Module], str]:
    if kind == "analytic":
        return AnalyticBlob({}), "analytic blob"
    try:
        return find("hashgrid-implicit-volume")({}), "hashgrid-implicit-volume (defaults)"
    except Exception:  # noqa: BLE001  (not registered yet, or it needs something missing)
        pass
    try:
        return HashGridBlob({}), "hash-grid stand-in (threestudio default grid, 64-wide heads)"
    except Exception as exc:  # noqa: BLE001
        return None, f"hash grid unavailable ({exc})"


def time_it(fn: Callable[[], object], iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(geometry: nn.Module, device: str, size: int, iters: int, backend: str = "auto") -> Dict[str, float]:
    torch.manual_seed(0)
    geometry = geometry.to(device)
    material = find("no-material")({}).to(device)
    background = find("solid-color-background")({}).to(device)
    renderer = find("nerf-volume-renderer")(
        {"backend": backend}, geometry=geometry, material=material, background=background
    ).to(device)
    renderer.train()
    renderer.update_occupancy_grid(0, force=True)  # one warm-up refresh: every cell evaluated
    c2w = c2w_from_spherical(torch.tensor([0.3]), torch.tensor([0.7]), torch.tensor([1.8])).to(device)
    rays_o, rays_d = rays_for_cameras(c2w, torch.tensor([math.radians(60.0)], device=device), size, size)
    n_rays = size * size

    with torch.no_grad():
        out = renderer(rays_o, rays_d)
    samples_kept = out["weights"].shape[0]
    flat_o, flat_d = rays_o.reshape(-1, 3), F.normalize(rays_d.reshape(-1, 3), dim=-1)
    with torch.no_grad():
        grid_samples = occupancy.occgrid_sampling(
            renderer.estimator, flat_o, flat_d, render_step_size=renderer.render_step_size,
            early_stop_eps=0.0, stratified=True,
            use_nerfacc=occupancy.use_nerfacc_kernels(rays_o.device, backend),
        )[0].shape[0]

    def forward():
        with torch.no_grad():
            renderer(rays_o, rays_d)

    def forward_backward():
        geometry.zero_grad(set_to_none=True)
        renderer(rays_o, rays_d)["comp_rgb"].mean().backward()

    def march_only():
        occupancy.occgrid_sampling(
            renderer.estimator, flat_o, flat_d, render_step_size=renderer.render_step_size,
            early_stop_eps=0.0, stratified=True,
            use_nerfacc=occupancy.use_nerfacc_kernels(rays_o.device, backend),
        )

    t_fwd = time_it(forward, iters)
    t_fb = time_it(forward_backward, iters)
    t_march = time_it(march_only, iters)
    return {
        "fwd_rays_s": n_rays / t_fwd,
        "fwd_ms": 1e3 * t_fwd,
        "fb_rays_s": n_rays / t_fb,
        "fb_ms": 1e3 * t_fb,
        "march_ms": 1e3 * t_march,
        "grid_samples_per_ray": grid_samples / n_rays,
        "kept_samples_per_ray": samples_kept / n_rays,
        "occupied": renderer.estimator.binaries.float().mean().item(),
    }


def report(label: str, r: Dict[str, float]) -> None:
    print(
        f"  {label:<58s} fwd {r['fwd_rays_s']:>9.0f} rays/s ({r['fwd_ms']:7.1f} ms)   "
        f"fwd+bwd {r['fb_rays_s']:>9.0f} rays/s ({r['fb_ms']:7.1f} ms)   "
        f"grid-march only {r['march_ms']:6.1f} ms   samples/ray: {r['grid_samples_per_ray']:.1f} after grid, "
        f"{r['kept_samples_per_ray']:.1f} after alpha/early stop   occupied cells {100 * r['occupied']:.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (batch 1)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per figure (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"NeRF volume renderer, {args.size}x{args.size} rays, training mode, occ grid 32^3, "
        f"512 samples/ray setting; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        backends = ["auto"] if device == "cpu" else ["nerfacc", "torch"]
        for backend in backends:
            if backend == "nerfacc" and not occupancy.nerfacc_cuda_available(torch.device(device)):
                print(f"[{device}] nerfacc CUDA extension unavailable; skipping its figures")
                continue
            marcher = "nerfacc kernels" if occupancy.use_nerfacc_kernels(torch.device(device), backend) else "torch marcher"
            print(f"[{device}, {marcher}]")
            for kind in ("analytic", "hashgrid"):
                geometry, label = build_geometry(kind)
                if geometry is None:
                    print(f"  {label}")
                    continue
                iters = args.iters if (kind == "analytic" or device != "cpu") else max(2, args.iters // 2)
                report(label, bench(geometry, device, args.size, iters, backend))


if __name__ == "__main__":
    main()
