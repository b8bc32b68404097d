"""One GPU check for a lent CUDA machine (``make gpu-check``), sized for < 8 minutes on an H100/H200.

Runs, each part timed and failing on its own (an error is recorded and the next part runs):

1. the CUDA tests (tests marked ``needs CUDA`` plus the Triton kernel tests);
2. hash grid fwd+bwd points/s: torch vs Triton (vs tiny-cuda-nn when it imports), threestudio's
   default grid at 2^18 and 2^20 points, and ours vs nerfstudio's torch ``HashEncoding`` on CUDA;
3. ray marching: nerfacc kernels vs the torch marcher, rays/s of the renderer (128 px view);
4. MVDream (``configs/mvdream-sd21.yaml``) with full-size random weights: s/step and peak memory at
   64 and 256 px with float16 weights under 16-mixed and bfloat16 weights under bf16-mixed
   (``system.guidance.half_precision_dtype``; the multi-view attention uses PyTorch's SDPA), plus
   float16 with channels-last convolutions (``system.guidance.channels_last``) at 256 px, and the
   estimated wall time of the recipe's 10k steps (5000 steps at 64 px, the rest at 256 px: its
   ``resolution_milestones``). ``torch.compile`` of the UNet is not measured: compiling it takes
   minutes, more than this check's budget;
5. the demo recipe on the GPU, a few dozen steps (steps/s).

Writes ``gpu_check.json`` and ``gpu_check.md`` (one table) to ``--out`` (default: ``$OUT`` if set,
else ``outputs/gpu-check``). Without CUDA (or with ``--dry-run``) it says so, checks that every
piece imports (and that the Triton kernels compile for sm_90 when triton imports), writes the
files with ``"mode": "dry-run"`` and exits 0.

    python benchmarks/gpu_check.py [--out DIR] [--dry-run] [--mv-steps 8]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

RECIPE_STEPS = {64: 5000, 256: 5000}  # mvdream-sd21.yaml: max_steps 10000, milestone at 5000


def _part(results: Dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Run one part; record its value (or error) and its wall time."""
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # noqa: BLE001  (one broken part must not hide the others)
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu-check] {name}: {'ok' if results[name]['ok'] else results[name]['error']} "
          f"({results[name]['seconds']} s)", flush=True)


def cuda_tests() -> Dict[str, Any]:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if 'reason="needs CUDA"' in p.read_text() or "triton" in p.name)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", *files, "-k", "cuda or triton or nerfacc"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    if proc.returncode != 0:
        raise RuntimeError(f"pytest failed: {tail}\n{proc.stdout[-1500:]}")
    return {"files": files, "summary": tail}


def hashgrid_rates() -> Dict[str, Any]:
    from benchmarks import bench_hashgrid as B

    device = torch.device("cuda")
    out: Dict[str, Any] = {}
    backends = ["torch"] + (["triton"] if B.triton_available() else []) + (["tcnn"] if B.tcnn_available() else [])
    for n in (2**18, 2**20):
        for backend in backends:
            r = B.run_case("default L16 T2^19", B.DEFAULT_GRID, n, device, backend, repeats=5)
            out[f"{backend} 2^{n.bit_length() - 1}"] = r["pts_per_s"] if r else None
    out["peer"] = B.compare_with_nerfstudio(device, repeats=5)
    return out


def marcher_rates() -> Dict[str, Any]:
    from benchmarks import bench_renderer as R
    from threestudio_like.renderers import occupancy

    out: Dict[str, Any] = {}
    for backend in ("nerfacc", "torch"):
        if backend == "nerfacc" and not occupancy.nerfacc_cuda_available(torch.device("cuda")):
            out[backend] = "nerfacc's CUDA kernels do not load"
            continue
        geometry, label = R.build_geometry("hashgrid")
        if geometry is None:
            raise RuntimeError(label)
        r = R.bench(geometry, "cuda", 128, 5, backend)
        out[backend] = {"fwd_rays_s": r["fwd_rays_s"], "fb_rays_s": r["fb_rays_s"], "geometry": label}
    return out


MV_SETTINGS = [("16-mixed", "float16", False, (64, 256)), ("bf16-mixed", "bfloat16", False, (64, 256)),
               ("16-mixed", "float16", True, (256,))]
"""MVDream runs: trainer precision, guidance weights' half type, channels-last, sizes."""


def mvdream_configs(root: str, weights: str, steps: int) -> List[Any]:
    """``(label, size, config)`` of every MVDream run (checked by ``load_config`` like any run)."""
    from threestudio_like.config import load_config

    runs = []
    for precision, weights_dtype, channels_last, sizes in MV_SETTINGS:
        label = f"{precision} {weights_dtype}{' channels-last' if channels_last else ''}"
        for size in sizes:
            runs.append((label, size, load_config("mvdream-sd21.yaml", [
                "prompt=a DSLR photo of a corgi", f"exp_root_dir={root}",
                f"system.guidance.pretrained_model_name_or_path={weights}",
                f"system.guidance.half_precision_dtype={weights_dtype}",
                f"system.guidance.channels_last={str(channels_last).lower()}",
                f"system.prompt_processor.cache_dir={root}/cache", f"data.height={size}",
                f"data.width={size}", f"data.batch_size={8 if size == 64 else 4}", "data.resolution_milestones=[]",
                f"trainer.max_steps={steps}", f"trainer.precision={precision}",
            ])))
    return runs


def mvdream_steps(steps: int) -> Dict[str, Any]:
    from benchmarks import bench_mvdream as M
    from benchmarks.common import time_training

    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        weights = M.write_full_random(os.path.join(root, "mvdream-full-random"))
        for label, size, cfg in mvdream_configs(root, weights, steps):
            torch.cuda.reset_peak_memory_stats()
            s_step, peak, _ = time_training(cfg, steps, warmup=2)
            out[f"{label} {size}px"] = {"s_per_step": s_step, "peak_gib": peak}
        for label in dict.fromkeys(label for label, _, _ in mvdream_configs(root, weights, steps)):
            rates = [out.get(f"{label} {s}px", {}).get("s_per_step") for s in RECIPE_STEPS]
            if all(rates):
                hours = sum(RECIPE_STEPS[s] * r for s, r in zip(RECIPE_STEPS, rates)) / 3600
                out[f"{label} 10k-step estimate (h)"] = round(hours, 2)
    return out


def demo_rate() -> Dict[str, Any]:
    from benchmarks import bench_demo as D

    return {f"{res}px steps/s": D.measure(res, 30) for res in (64,)}


def dry_run_checks() -> Dict[str, Any]:
    """Import every piece (and compile the Triton kernels for sm_90 when triton imports)."""
    import importlib

    names = ["benchmarks.bench_hashgrid", "benchmarks.bench_renderer", "benchmarks.bench_mvdream",
             "benchmarks.bench_demo", "benchmarks.common", "threestudio_like.geometry.hashgrid_triton"]
    for name in names:
        importlib.import_module(name)
    out: Dict[str, Any] = {"imported": names}
    with tempfile.TemporaryDirectory() as root:
        out["mvdream configs"] = len(mvdream_configs(root, "tiny-random", 2))
    from threestudio_like.geometry import hashgrid_triton

    if hashgrid_triton.triton_available():
        out["triton sm_90 cubin bytes"] = hashgrid_triton.compile_for_cuda(90)
    else:
        out["triton"] = f"not importable: {hashgrid_triton.triton_unavailable_reason()}"
    return out


def markdown(results: Dict[str, Any]) -> str:
    """One table: part, status, seconds, figures."""
    lines = [f"# GPU check ({results['mode']}, {results['device']})", "",
             "| part | status | s | figures |", "|---|---|---|---|"]
    for name, r in results["parts"].items():
        figures = r["error"] if not r["ok"] else json.dumps(r["value"], default=str)
        figures = figures.replace("|", "/")
        lines.append(f"| {name} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "outputs" / "gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="only check that the pieces import")
    parser.add_argument("--mv-steps", type=int, default=8, help="MVDream steps per setting (2 warm-up)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    mode = "full" if cuda and not args.dry_run else "dry-run"
    if not cuda:
        print("[gpu-check] CUDA is not available on this machine: dry run only (checking that the "
              "pieces import); run `make gpu-check` on a CUDA machine for the figures.", flush=True)
    results: Dict[str, Any] = {
        "mode": mode, "device": torch.cuda.get_device_name() if cuda else "no CUDA",
        "torch": torch.__version__, "parts": {},
    }
    parts = results["parts"]
    _part(parts, "imports", dry_run_checks)
    if mode == "full":
        _part(parts, "cuda tests", cuda_tests)
        _part(parts, "hash grid points/s", hashgrid_rates)
        _part(parts, "ray marching rays/s", marcher_rates)
        _part(parts, "mvdream full-size random", lambda: mvdream_steps(args.mv_steps))
        _part(parts, "demo on GPU", demo_rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(results, indent=2, default=str)),
                       ("gpu_check.md", markdown(results))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print(f"[gpu-check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 0 if all(r["ok"] for r in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
