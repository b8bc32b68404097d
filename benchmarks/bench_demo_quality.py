"""Demo quality per second: IoU of the demo's mesh against the reference object over wall time.

    python benchmarks/bench_demo_quality.py curve   --config demo.yaml --seed 0 --every 50 --out a.json
    python benchmarks/bench_demo_quality.py ceiling --steps 3000 --every 250 --out ceiling.json
    python benchmarks/bench_demo_quality.py plot    before.json after.json --ceiling ceiling.json --png q.png
    python benchmarks/bench_demo_quality.py seeds   --config demo.yaml --seeds 0,1,2,3,4 --out seeds.json
    python benchmarks/bench_demo_quality.py hull    --views 40      # the visual hull's IoU

The demo distils the reference object through the exact denoiser of its renders. With one
candidate per query (camera-conditioned mode) that denoiser returns the true render ``x*`` at the
query camera, and the SDS gradient ``w(t) (eps_hat - eps)`` with ``w = 1 - abar`` collapses to
``sqrt(abar (1 - abar)) (x - x*)``: photometric fitting with a timestep-dependent weight. The
*ceiling* therefore fits the same system (geometry, renderer, cameras) to the true renders with a
plain MSE for many steps; its IoU is what the representation and the export level allow.

``curve`` trains a recipe as ``launch.py`` does (same seeding per step) and, every ``--every``
steps, extracts the surface as the exporter does (marching cubes at the recipe's resolution and
level, then the same clean-up) and measures its volume IoU at 64^3 against the object's own
occupancy (the known-answer measure of the tests); with ``--mesh-levels`` the last point also
records ``iou_hollow``, the IoU with the walls of internal voids kept (clean-up before
``fill_cavities``). The measuring time is kept off the clock:
the curve's seconds are training seconds. A level the density never reaches counts as IoU 0 (no
surface); the IoU at the exporter's fitted level is recorded beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import trimesh
from pytorch_lightning.callbacks import Callback

from threestudio_like import find
from threestudio_like.cameras import (
    c2w_from_spherical,
    focal_from_fovy,
    rays_for_cameras,
)
from threestudio_like.config import load_config
from threestudio_like.errors import IsosurfaceError
from threestudio_like.export import cleanup
from threestudio_like.export.mesh_exporter import volume_iou
from threestudio_like.reference.object import ReferenceObjectGeometry
from threestudio_like.systems.callbacks import StepSeeds
from threestudio_like.systems.sds import SDSSystem

IOU_RESOLUTION = 64
"""Lattice of the volume IoU (as tests/conftest.py's known answer)."""


def _mesh_iou(geometry: Any, threshold: Any, resolution: int, cavities: bool = True) -> float:
    """IoU at 64^3 of the cleaned isosurface at ``threshold`` (raises IsosurfaceError on a miss);
    ``cavities=False`` keeps the walls of internal voids (the exporter's ``fill_cavities: false``)."""
    verts, faces = geometry.isosurface(resolution=resolution, threshold=threshold)
    verts, faces, _ = cleanup.clean_mesh(verts.detach().cpu().numpy(), faces.detach().cpu().numpy(),
                                         cavities=cavities)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    return volume_iou(mesh, ReferenceObjectGeometry({}).occupancy, resolution=IOU_RESOLUTION)


FAST_LEVELS = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
"""Density levels of the fast (lattice) IoU used to explore."""


@torch.no_grad()
def lattice_ious(geometry: Any, levels: Sequence[float] = FAST_LEVELS) -> dict[str, float]:
    """Cheap exploration measure: IoU at 64^3 cell centres of ``density > level`` against the
    object's occupancy (no mesh: close to, not equal to, the mesh IoU)."""
    n = IOU_RESOLUTION
    lin = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    truth = ReferenceObjectGeometry({}).occupancy(pts)
    density = torch.cat([geometry.forward_density(c)[:, 0] for c in pts.split(65536)])
    out = {}
    for level in levels:
        inside = density > level
        out[f"{level:g}"] = round(float((inside & truth).sum() / (inside | truth).sum().clamp_min(1)), 4)
    inside = density > 5.0  # where the misses are: precision and recall of the level-5 volume
    out["precision5"] = round(float((inside & truth).sum() / inside.sum().clamp_min(1)), 4)
    out["recall5"] = round(float((inside & truth).sum() / truth.sum().clamp_min(1)), 4)
    return out


@torch.no_grad()
def measure(geometry: Any, fast: bool = False, mesh_levels: Sequence[float] = ()) -> dict[str, Any]:
    """IoU at the recipe's level (0 when no surface forms there) and at the exporter's fitted level
    (``fast``: :func:`lattice_ious` only)."""
    cfg = geometry.cfg
    resolution = int(cfg.isosurface_resolution)
    was_training = geometry.training
    geometry.eval()
    try:
        lattice: dict[str, Any] = {"lattice_iou": lattice_ious(geometry)}
        if fast:
            return lattice
        if mesh_levels:  # the final point: the hollow mesh's IoU too, and the IoU at other levels
            try:
                lattice["iou_hollow"] = _mesh_iou(geometry, cfg.isosurface_threshold, resolution, cavities=False)
            except IsosurfaceError:
                lattice["iou_hollow"] = 0.0
            lattice["mesh_iou_at"] = {}
            for level in mesh_levels:
                try:
                    lattice["mesh_iou_at"][f"{level:g}"] = _mesh_iou(geometry, level, resolution)
                except IsosurfaceError:
                    lattice["mesh_iou_at"][f"{level:g}"] = 0.0
        try:
            return {"iou": _mesh_iou(geometry, cfg.isosurface_threshold, resolution), "surface": True, **lattice}
        except IsosurfaceError:
            *_, level = geometry.isosurface(resolution=resolution, on_miss="fit", with_level=True)
            mesh_iou = _mesh_iou(geometry, level.level, resolution)
            return {"iou": 0.0, "surface": False, "fitted_level": level.level, "fitted_iou": mesh_iou, **lattice}
    finally:
        geometry.train(was_training)


@torch.no_grad()
def visual_hull_iou(n_views: int = 40, elevation_range: tuple[float, float] = (-10.0, 60.0),
                    distance: float = 2.0, fovy_deg: float = 45.0, image_size: int = 128) -> dict[str, float]:
    """IoU at 64^3 of the object's visual hull: the cell centres that project inside the object's
    silhouette (rendered opacity > 1/2) in ``n_views`` views at evenly spread elevations and seeded
    random azimuths. An unlit (``no-material``) recipe sees shape only through silhouettes and
    colour edges, so this is about what its photometric fit can reach."""
    guidance = find("reference-object-guidance")({"resolution": image_size})
    guidance._prepare_grid(torch.device("cpu"))
    n = IOU_RESOLUTION
    lin = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    truth = ReferenceObjectGeometry({}).occupancy(pts)
    hull = torch.ones(len(pts), dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    lo, hi = elevation_range
    fovy = torch.tensor([math.radians(fovy_deg)])
    focal = float(focal_from_fovy(image_size, fovy)[0])
    for v in range(n_views):
        elevation = torch.tensor([math.radians(lo + (hi - lo) * (v + 0.5) / n_views)])
        c2w = c2w_from_spherical(elevation, torch.rand(1, generator=gen) * 2 * math.pi, torch.tensor([distance]))
        rays_o, rays_d = rays_for_cameras(c2w, fovy, image_size, image_size)
        silhouette = guidance.renderer(rays_o, rays_d)["opacity"][0, ..., 0] > 0.5
        cam = (pts - c2w[0, :3, 3]) @ c2w[0, :3, :3]  # camera frame: x right, y up, looking down -z
        col = (cam[:, 0] / -cam[:, 2] * focal + image_size / 2).floor().long().clamp(0, image_size - 1)
        row = (image_size / 2 - cam[:, 1] / -cam[:, 2] * focal).floor().long().clamp(0, image_size - 1)
        hull &= silhouette[row, col]
    both = float((hull & truth).sum())
    return {"iou": both / float((hull | truth).sum()), "precision": both / float(hull.sum()),
            "recall": both / float(truth.sum()), "views": n_views}


class _Probe(Callback):
    """Every ``every`` steps (and at the last): training seconds so far and :func:`measure`."""

    def __init__(self, every: int, max_steps: int, fast: bool = False, mesh_levels: Sequence[float] = ()) -> None:
        self.every, self.max_steps, self.fast, self.mesh_levels = every, max_steps, fast, tuple(mesh_levels)
        self.points: list[dict[str, Any]] = []
        self.start = 0.0
        self.paused = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every and step != self.max_steps:
            return
        t0 = time.perf_counter()
        point = {"step": step, "seconds": round(t0 - self.start - self.paused, 2), **measure(pl_module.geometry, self.fast and step != self.max_steps,
                                  self.mesh_levels if step == self.max_steps else ())}
        self.points.append(point)
        print(json.dumps(point), flush=True)
        self.paused += time.perf_counter() - t0


class PhotometricFit(SDSSystem):
    """The ceiling: the demo's system trained on the true renders (MSE) instead of the prior."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.renderer(**batch)
        cams = self.cameras(batch)
        height, width = out["comp_rgb"].shape[1:3]
        target = self.guidance.render_reference(cams.c2w, cams.fovy, height, width)
        loss = F.mse_loss(out["comp_rgb"], target)
        self.log("train/loss", loss.detach(), on_step=True)
        return loss


def train_curve(config: str, overrides: Sequence[str], seed: int, every: int,
                system_cls: type | None = None, fast: bool = False,
                mesh_levels: Sequence[float] = ()) -> dict[str, Any]:
    """Train ``config`` (+ ``overrides``) with ``seed`` and return its IoU-vs-seconds curve."""
    cfg = load_config(config, [*overrides, f"seed={seed}", f"exp_root_dir={os.path.join(tempfile.gettempdir(), 'bench-demo-quality')}"])
    max_steps = int(cfg.trainer.max_steps)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = find(cfg.data_type)(cfg.data)
    system = (system_cls or find(cfg.system_type))(cfg.system)
    system.prepare_prior()
    probe = _Probe(every, max_steps, fast, mesh_levels)
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, max_steps=max_steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
        callbacks=[StepSeeds(cfg.seed), probe],
    )
    trainer.fit(system, dm)
    return {"config": config, "overrides": list(overrides), "seed": seed, "threads": torch.get_num_threads(),
            "level": cfg.system.geometry.isosurface_threshold, "points": probe.points}


def _write(data: Any, path: str | None) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _curve(run: dict[str, Any]) -> list[tuple[int, float, float, bool]]:
    """``(step, seconds, IoU, is_mesh)`` of a run: the mesh IoU where measured, else the lattice
    IoU at the run's level (fast probes)."""
    level = f"{float(run.get('level', 10.0)):g}"
    out = []
    for p in run["points"]:
        if "iou" in p:
            out.append((p["step"], p["seconds"], p["iou"], True))
        elif level in p.get("lattice_iou", {}):
            out.append((p["step"], p["seconds"], p["lattice_iou"][level], False))
    return out


def plot(curves: Sequence[str], ceiling: str | None, png: str) -> None:
    """IoU against training steps and seconds of each curve file (filled markers: mesh IoU; open:
    the lattice IoU of fast probes), the ceiling as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for path in curves:
        with open(path) as f:
            runs = json.load(f)
        for run in runs if isinstance(runs, list) else [runs]:
            pts = _curve(run)
            label = f"{run.get('label', os.path.basename(path))} seed {run['seed']}"
            for ax, x in zip(axes, (0, 1)):
                line, = ax.plot([p[x] for p in pts], [p[2] for p in pts], lw=1, label=label)
                mesh = [p for p in pts if p[3]]
                ax.plot([p[x] for p in mesh], [p[2] for p in mesh], "o", color=line.get_color())
                lat = [p for p in pts if not p[3]]
                ax.plot([p[x] for p in lat], [p[2] for p in lat], "o", mfc="none", ms=4, color=line.get_color())
    if ceiling:
        with open(ceiling) as f:
            ceil = json.load(f)
        pts = _curve(ceil)
        best = max(p[2] for p in pts)
        for ax in axes:
            ax.axhline(best, color="k", ls="--", label=f"ceiling: photometric fit, {pts[-1][0]} steps: {best:.3f}")
    for ax, name in zip(axes, ("training steps", "training wall seconds (measuring excluded)")):
        ax.axhline(0.85, color="grey", ls=":", lw=1)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("volume IoU at 64^3")
    axes[0].set_ylim(0, 1)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    print(f"plot written: {png}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("curve", "seeds", "ceiling"):
        p = sub.add_parser(name)
        p.add_argument("--config", default="demo.yaml")
        p.add_argument("--label", default="")
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
        p.add_argument("--out", default="")
        p.add_argument("overrides", nargs="*", help="config overrides key=value")
        if name == "seeds":
            p.add_argument("--seeds", default="0,1,2,3,4")
            p.add_argument("--every", type=int, default=100)
        else:
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--every", type=int, default=50)
        p.add_argument("--fast", action="store_true", help="lattice IoU only, except at the last step")
        p.add_argument("--mesh-levels", default="", help="also the final mesh IoU at these levels, e.g. 5,10,20")
        if name == "ceiling":
            p.add_argument("--steps", type=int, default=3000)
    p = sub.add_parser("hull")
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--elevation", default="-10,60", help="lowest,highest elevation in degrees")
    p = sub.add_parser("plot")
    p.add_argument("curves", nargs="+")
    p.add_argument("--ceiling", default="")
    p.add_argument("--png", default="demo_quality.png")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.cmd == "hull":
        lo, hi = (float(x) for x in args.elevation.split(","))
        print(json.dumps(visual_hull_iou(args.views, (lo, hi))))
        return 0
    if args.cmd == "plot":
        plot(args.curves, args.ceiling or None, args.png)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [float(x) for x in args.mesh_levels.split(",") if x]
    if args.cmd == "ceiling":
        overrides = [f"trainer.max_steps={args.steps}", *args.overrides]
        run = train_curve(args.config, overrides, args.seed, args.every, PhotometricFit, args.fast, levels)
        run["label"] = args.label or "ceiling"
        _write(run, args.out)
        return 0
    if args.cmd == "curve":
        run = train_curve(args.config, args.overrides, args.seed, args.every, fast=args.fast, mesh_levels=levels)
        run["label"] = args.label or args.config
        _write(run, args.out)
        return 0
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run = train_curve(args.config, args.overrides, seed, args.every, fast=args.fast, mesh_levels=levels)
        run["label"] = args.label or args.config
        runs.append(run)
        _write(runs, args.out)
    print(f"{'seed':>4} {'IoU':>6} {'train s':>8} {'surface':>8}")
    for run in runs:
        last = run["points"][-1]
        print(f"{run['seed']:>4} {last['iou']:6.3f} {last['seconds']:8.1f} {last['surface']!s:>8}")
    ious = [run["points"][-1]["iou"] for run in runs]
    print(f"median IoU {statistics.median(ious):.3f}, min {min(ious):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
