"""Time of the mesh export, phase by phase, on the bundled reference object.

The object's density is meshed at isosurface resolution 128 (the demo's setting), cleaned to at
most 20,000 faces, coloured, textured at 1024^2 where the texture baker
(``threestudio_like.export.texture``) is installed (vertex colours otherwise, said in the
output), and written as GLB, OBJ (+MTL, PNG), PLY and USDZ (where usd-core is installed).

Two inputs: ``clean`` (the object as it is) and ``noisy`` (a rippled surface and three floating
blobs, what a distilled density looks like), for which the clean-up's figures are printed too:
faces and components before and after, and the volume IoU against the object (64^3) of the raw
and the cleaned mesh.

``--normal-map`` also bakes the tangent-space normal map of the field's normals (the density
gradient), as recipes with normals do by default.

Run: ``python benchmarks/bench_export.py [--resolution 128] [--target-faces 20000]
[--texture-size 1024] [--normal-map] [--threads T] [--device cpu|cuda]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threestudio_like import find
from threestudio_like.export import cleanup
from threestudio_like.export.mesh_exporter import (
    MeshExporter,
    import_baker,
    volume_iou,
)
from threestudio_like.reference.object import ReferenceObjectGeometry

INPUTS = {"clean": {}, "noisy": {"ripple": 0.012, "floaters": True}}


def bench(name: str, args: argparse.Namespace) -> None:
    import trimesh

    geometry = ReferenceObjectGeometry(INPUTS[name]).to(args.device)
    material = find("no-material")({"color_activation": "none"}).to(args.device)
    exporter = MeshExporter({"isosurface_resolution": args.resolution, "target_faces": args.target_faces,
                             "texture_size": args.texture_size, "normal_map": args.normal_map or None})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        exporter(geometry, material, out)
        total = time.perf_counter() - start
    report = exporter.last_report
    print(f"\n[{name}] device {args.device}, isosurface {args.resolution}^3, target {args.target_faces} faces, "
          f"{'texture ' + str(args.texture_size) + '^2' if report.textured else 'vertex colours (no texture baker)'}"
          f"{', normal map' if report.normal_map else ''}")
    print(f"{'phase':<14}{'seconds':>9}")
    for phase, seconds in report.seconds.items():
        print(f"{phase:<14}{seconds:>9.3f}")
    print(f"{'total':<14}{total:>9.3f}")
    c = report.cleanup
    print(f"faces {c['faces_before']} -> {c['faces_after']}, components {c['components_before']} -> "
          f"{c['components_after']}, level {report.level['level']:.4g} ({report.level['source']})")
    if args.iou:
        verts, faces = (t.cpu().numpy() for t in geometry.isosurface(resolution=args.resolution))
        v, f, _ = cleanup.clean_mesh(verts, faces, target_faces=args.target_faces)
        truth = geometry.occupancy
        raw = volume_iou(trimesh.Trimesh(verts, faces, process=False), lambda p: truth(p.to(args.device)).cpu(), 64)
        clean = volume_iou(trimesh.Trimesh(v, f, process=False), lambda p: truth(p.to(args.device)).cpu(), 64)
        print(f"volume IoU vs the object at 64^3: raw {raw:.4f}, cleaned {clean:.4f} (diff {clean - raw:+.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--target-faces", type=int, default=20000)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--normal-map", action="store_true", help="bake the normal map too")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-iou", dest="iou", action="store_false", help="skip the IoU figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    np.random.seed(0)
    print(f"texture baker: {'installed' if import_baker() else 'not installed'}; torch threads "
          f"{torch.get_num_threads()}")
    for name in INPUTS:
        bench(name, args)


if __name__ == "__main__":
    main()
