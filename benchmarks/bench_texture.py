"""Time of UV texture baking (``threestudio_like.export.texture.bake_texture``), stage by stage.

The mesh is the bundled reference object: marching cubes at ``--resolution`` (default 128, about
27k faces), decimated with fast-simplification to ``--faces`` (default 20,000, the export target),
coloured by the object's own albedo field. Each device (CPU, and CUDA when present) bakes it
``--repeats`` times at ``--size`` (default 1024); the table shows the median seconds of each stage:
xatlas atlas, UV rasterisation, padding dilation, colour-field queries, push-pull fill, the whole
bake (wall seconds), and the process CPU seconds of the whole bake (all threads; other processes
on the machine disturb it less). A last row times the checking ray caster (8 turntable views,
128^2, textured shading).

``--accuracy`` also prints the acceptance figures of the CPU bake (texture-vs-field mean absolute
error at 10,000 surface points, PSNR of 8 turntable renders against the field's colours) and
``--figure out.png`` saves those renders.

Run: ``python benchmarks/bench_texture.py [--size 1024] [--faces 20000] [--repeats 3] [--threads T]
[--accuracy] [--figure out.png]`` (about a minute on 2 cores). Other processes on the cores slow
every stage: compare figures taken on a quiet machine with the same ``--threads``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threestudio_like.export.raycast import cast, psnr, shade, turntable_cameras
from threestudio_like.export.texture import bake_texture, sample_surface, sample_texture
from threestudio_like.reference.object import ReferenceObjectGeometry

STAGES = ["atlas", "rasterise", "dilate", "colour", "fill"]


def demo_mesh(resolution: int, faces: int):
    """The reference object's marching-cubes mesh, decimated to about ``faces`` triangles."""
    geometry = ReferenceObjectGeometry({})
    verts, tris = geometry.isosurface(resolution=resolution)
    verts, tris = verts.numpy(), tris.numpy()
    if faces and faces < len(tris):
        import fast_simplification

        verts, tris = fast_simplification.simplify(verts, tris, target_count=faces)
    return geometry, np.asarray(verts, np.float32), np.asarray(tris, np.int64)


class StageClock:
    """A ``progress`` callback that adds up the time between each stage's 0.0 and 1.0 reports."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started: dict[str, float] = {}
        self.total: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str, fraction: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if fraction == 0.0:
            self.started[stage] = now
        elif fraction >= 1.0 and stage in self.started:
            self.total[stage] += now - self.started.pop(stage)


def bench_bake(verts, faces, albedo: Callable, size: int, device: torch.device, repeats: int) -> dict[str, float]:
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        clock = StageClock(device)
        start, cpu = time.perf_counter(), time.process_time()
        baked = bake_texture(verts, faces, albedo, texture_size=size, device=device, progress=clock)
        runs["total"].append(time.perf_counter() - start)
        runs["total CPU s"].append(time.process_time() - cpu)
        for stage in STAGES:
            runs[stage].append(clock.total[stage])
    runs["texels/s (M)"] = [size * size / t / 1e6 for t in runs["total"]]
    runs["seam vertices"] = [len(baked.vertices) / len(verts)]
    return {k: statistics.median(v) for k, v in runs.items()}


def bench_render(geometry, verts, faces, albedo: Callable, device: torch.device) -> float:
    baked = bake_texture(verts, faces, albedo, texture_size=512, device=device)
    start = time.perf_counter()
    for c2w in turntable_cameras(8, distance=2.0):
        hits = cast(baked.vertices, baked.faces, c2w, size=128, device=device)
        shade(hits, faces=baked.faces, uvs=baked.uvs, image=baked.image)
    return time.perf_counter() - start


def accuracy(verts, faces, albedo: Callable, size: int, figure: str = "") -> None:
    """Print the acceptance figures of a CPU bake: texture-vs-field MAE at 10,000 surface points
    and the PSNR of 8 turntable renders (object pixels; 1 and 2x2 rays per pixel); optionally
    save the renders (textured above, field below) as a PNG."""
    baked = bake_texture(verts, faces, albedo, texture_size=size)
    points, face_ids, bary = sample_surface(baked.vertices, baked.faces, 10000, seed=0)
    uv = (bary[..., None] * baked.uvs[baked.faces[face_ids]]).sum(1)
    error = np.abs(sample_texture(baked.image, uv) - albedo(torch.from_numpy(points)).numpy())
    print(f"texture {size}^2: MAE {error.mean():.4f} at 10,000 points (max {error.max():.3f}; "
          f"{(error.max(1) > 0.1).mean() * 100:.2f}% of points off by > 0.1)")
    for supersample in (1, 2):
        scores, tiles = [], []
        for c2w in turntable_cameras(8, elevation_deg=15.0, distance=2.0):
            hits = cast(baked.vertices, baked.faces, c2w, size=128, supersample=supersample)
            textured, cover = shade(hits, faces=baked.faces, uvs=baked.uvs, image=baked.image)
            field, _ = shade(hits, colour_fn=albedo)
            scores.append(psnr(textured, field, mask=cover > 0))
            tiles.append(np.concatenate([textured, field], 0))
        print(f"PSNR (dB) per view, {supersample}x{supersample} rays/pixel: "
              + " ".join(f"{x:.1f}" for x in scores) + f"; min {min(scores):.1f}")
        if figure and supersample == 1:
            from PIL import Image

            Image.fromarray((np.concatenate(tiles, 1) * 255 + 0.5).astype(np.uint8)).save(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="texture size (texels per side)")
    parser.add_argument("--faces", type=int, default=20000, help="target face count after decimation")
    parser.add_argument("--resolution", type=int, default=128, help="marching-cubes lattice size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--accuracy", action="store_true", help="also print the acceptance figures (MAE, PSNR)")
    parser.add_argument("--figure", default="", help="with --accuracy: save the turntable renders to this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    geometry, verts, faces = demo_mesh(args.resolution, args.faces)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"mesh: {len(faces)} faces, {len(verts)} vertices; texture {args.size}^2; "
          f"{args.repeats} repeats (median); torch threads {torch.get_num_threads()}")
    rows = {}
    for device in devices:
        geometry.to(device)

        def albedo(p: torch.Tensor) -> torch.Tensor:
            return geometry.export(p)["features"]

        bench_bake(verts, faces, albedo, 64, device, 1)  # warm-up (kernels, allocator)
        rows[str(device)] = bench_bake(verts, faces, albedo, args.size, device, args.repeats)
        rows[str(device)]["render 8x128^2"] = bench_render(geometry, verts, faces, albedo, device)
    keys = [*STAGES, "total", "total CPU s", "texels/s (M)", "seam vertices", "render 8x128^2"]
    print(f"{'stage (s)':<16}" + "".join(f"{name:>10}" for name in rows))
    for key in keys:
        print(f"{key:<16}" + "".join(f"{rows[name][key]:>10.3f}" for name in rows))
    if args.accuracy:
        geometry.to("cpu")
        accuracy(verts, faces, lambda p: geometry.export(p)["features"], args.size, args.figure)


if __name__ == "__main__":
    main()
