"""Demo quality per second: IoU of the demo's mesh against the reference object over wall time.

    python benchmarks/bench_demo_quality.py curve   --config demo.yaml --seed 0 --every 50 --out a.json
    python benchmarks/bench_demo_quality.py ceiling --steps 3000 --every 250 --out ceiling.json
    python benchmarks/bench_demo_quality.py plot    before.json after.json --ceiling ceiling.json --png q.png
    python benchmarks/bench_demo_quality.py seeds   --config demo.yaml --seeds 0,1,2,3,4 --out seeds.json

The demo distils the reference object through the exact denoiser of its renders. With one
candidate per query (camera-conditioned mode) that denoiser returns the true render ``x*`` at the
query camera, and the SDS gradient ``w(t) (eps_hat - eps)`` with ``w = 1 - abar`` collapses to
``sqrt(abar (1 - abar)) (x - x*)``: photometric fitting with a timestep-dependent weight. The
*ceiling* therefore fits the same system (geometry, renderer, cameras) to the true renders with a
plain MSE for many steps; its IoU is what the representation and the export level allow.

``curve`` trains a recipe as ``launch.py`` does (same seeding per step) and, every ``--every``
steps, extracts the surface as the exporter does (marching cubes at the recipe's resolution and
level, then the same clean-up) and measures its volume IoU at 64^3 against the object's own
occupancy (the known-answer measure of the tests). The measuring time is kept off the clock:
the curve's seconds are training seconds. A level the density never reaches counts as IoU 0 (no
surface); the IoU at the exporter's fitted level is recorded beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
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
from threestudio_like.config import load_config
from threestudio_like.errors import IsosurfaceError
from threestudio_like.export import cleanup
from threestudio_like.export.mesh_exporter import volume_iou
from threestudio_like.reference.object import ReferenceObjectGeometry
from threestudio_like.systems.callbacks import StepSeeds
from threestudio_like.systems.sds import SDSSystem

IOU_RESOLUTION = 64
"""Lattice of the volume IoU (as tests/conftest.py's known answer)."""


def _mesh_iou(geometry: Any, threshold: Any, resolution: int) -> float:
    """IoU at 64^3 of the cleaned isosurface at ``threshold`` (raises IsosurfaceError on a miss)."""
    verts, faces = geometry.isosurface(resolution=resolution, threshold=threshold)
    verts, faces, _ = cleanup.clean_mesh(verts.detach().cpu().numpy(), faces.detach().cpu().numpy())
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
def measure(geometry: Any, fast: bool = False) -> dict[str, Any]:
    """IoU at the recipe's level (0 when no surface forms there) and at the exporter's fitted level
    (``fast``: :func:`lattice_ious` only)."""
    cfg = geometry.cfg
    resolution = int(cfg.isosurface_resolution)
    was_training = geometry.training
    geometry.eval()
    try:
        lattice = {"lattice_iou": lattice_ious(geometry)}
        if fast:
            return lattice
        try:
            return {"iou": _mesh_iou(geometry, cfg.isosurface_threshold, resolution), "surface": True, **lattice}
        except IsosurfaceError:
            *_, level = geometry.isosurface(resolution=resolution, on_miss="fit", with_level=True)
            mesh_iou = _mesh_iou(geometry, level.level, resolution)
            return {"iou": 0.0, "surface": False, "fitted_level": level.level, "fitted_iou": mesh_iou, **lattice}
    finally:
        geometry.train(was_training)


class _Probe(Callback):
    """Every ``every`` steps (and at the last): training seconds so far and :func:`measure`."""

    def __init__(self, every: int, max_steps: int, fast: bool = False) -> None:
        self.every, self.max_steps, self.fast = every, max_steps, fast
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
        point = {"step": step, "seconds": round(t0 - self.start - self.paused, 2), **measure(pl_module.geometry, self.fast and step != self.max_steps)}
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
                system_cls: type | None = None, fast: bool = False) -> dict[str, Any]:
    """Train ``config`` (+ ``overrides``) with ``seed`` and return its IoU-vs-seconds curve."""
    cfg = load_config(config, [*overrides, f"seed={seed}", "exp_root_dir=/tmp/bench-demo-quality"])
    max_steps = int(cfg.trainer.max_steps)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = find(cfg.data_type)(cfg.data)
    system = (system_cls or find(cfg.system_type))(cfg.system)
    system.prepare_prior()
    probe = _Probe(every, max_steps, fast)
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, max_steps=max_steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
        callbacks=[StepSeeds(cfg.seed), probe],
    )
    trainer.fit(system, dm)
    return {"config": config, "overrides": list(overrides), "seed": seed, "threads": torch.get_num_threads(),
            "points": probe.points}


def _write(data: Any, path: str | None) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def plot(curves: Sequence[str], ceiling: str | None, png: str) -> None:
    """IoU against training seconds of each curve file, the ceiling as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in curves:
        with open(path) as f:
            runs = json.load(f)
        for run in runs if isinstance(runs, list) else [runs]:
            pts = [p for p in run["points"] if "iou" in p]
            label = f"{run.get('label', os.path.basename(path))} seed {run['seed']}"
            ax.plot([p["seconds"] for p in pts], [p["iou"] for p in pts], marker="o", ms=3, label=label)
    if ceiling:
        with open(ceiling) as f:
            ceil = json.load(f)
        best = max(p["iou"] for p in ceil["points"] if "iou" in p)
        ax.axhline(best, color="k", ls="--", label=f"ceiling (photometric fit, {ceil['points'][-1]['step']} steps) "
                                                   f"{best:.3f}")
    ax.axhline(0.85, color="grey", ls=":", lw=1)
    ax.set_xlabel("training wall seconds (measuring excluded)")
    ax.set_ylabel("volume IoU at 64^3")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=120)
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
        if name == "ceiling":
            p.add_argument("--steps", type=int, default=3000)
    p = sub.add_parser("plot")
    p.add_argument("curves", nargs="+")
    p.add_argument("--ceiling", default="")
    p.add_argument("--png", default="demo_quality.png")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.cmd == "plot":
        plot(args.curves, args.ceiling or None, args.png)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cmd == "ceiling":
        overrides = [f"trainer.max_steps={args.steps}", *args.overrides]
        run = train_curve(args.config, overrides, args.seed, args.every, PhotometricFit, args.fast)
        run["label"] = args.label or "ceiling"
        _write(run, args.out)
        return 0
    if args.cmd == "curve":
        run = train_curve(args.config, args.overrides, args.seed, args.every, fast=args.fast)
        run["label"] = args.label or args.config
        _write(run, args.out)
        return 0
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run = train_curve(args.config, args.overrides, seed, args.every, fast=args.fast)
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
