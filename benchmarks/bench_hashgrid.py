"""Hash-grid encoding throughput: forward + backward, points per second.

Configurations: threestudio's default grid (16 levels x 2 features, 2^19 entries per level,
base resolution 16, per-level scale 1.447) at 2^16 and 2^18 points, and a small grid (12 levels,
2^16 entries) at 2^16 points. Each figure is the median of ``--repeats`` timed runs after one
warm-up. The backward pass uses a random upstream gradient (as an MLP head would send).

Runs the torch backend on CPU; on CUDA also the Triton kernels (when triton imports) and
tiny-cuda-nn (when it imports). ``--threads`` sets torch's CPU threads (on a shared machine one
thread per process gives steadier figures).
``--compile`` adds a ``torch.compile`` variant of the torch backend (first call compiles).

Peer comparison (first lines of the output): our torch backend against nerfstudio's pure-PyTorch
``HashEncoding`` (vendored, Apache-2.0, in ``benchmarks/nerfstudio_hash_encoding.py``) on
threestudio's default grid (max resolution ``16 * 1.447269^15 ~= 4096``) and 2^16 points, both
timed in this process with the same upstream gradient, alternating so that both see the same
machine state; printed as points/s and the ratio ours / nerfstudio.

    python benchmarks/bench_hashgrid.py [--repeats 3] [--compile] [--device cpu|cuda|all]
                                        [--peer-only] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nerfstudio_hash_encoding import HashEncoding as NerfstudioHashEncoding  # noqa: E402
from threestudio_like.geometry.hashgrid import HashGridEncoding, tcnn_available  # noqa: E402
from threestudio_like.geometry.hashgrid_triton import triton_available  # noqa: E402

DEFAULT_GRID = dict(
    n_levels=16,
    n_features_per_level=2,
    log2_hashmap_size=19,
    base_resolution=16,
    per_level_scale=1.447269237440378,
)
SMALL_GRID = dict(DEFAULT_GRID, n_levels=12, log2_hashmap_size=16)
CASES = [
    ("default L16 T2^19", DEFAULT_GRID, 2**16),
    ("default L16 T2^19", DEFAULT_GRID, 2**18),
    ("small   L12 T2^16", SMALL_GRID, 2**16),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(
    fn: Callable[[torch.Tensor], torch.Tensor], enc: torch.nn.Module, x: torch.Tensor, repeats: int
) -> Dict[str, float]:
    """Median forward and backward seconds over ``repeats`` runs (after one warm-up)."""
    out_dims = fn(x[:1]).shape[-1]
    grad_out = torch.randn(x.shape[0], out_dims, device=x.device)
    fwd: List[float] = []
    bwd: List[float] = []
    for i in range(repeats + 1):
        enc.zero_grad(set_to_none=True)
        _sync(x.device)
        t0 = time.perf_counter()
        out = fn(x)
        _sync(x.device)
        t1 = time.perf_counter()
        out.backward(grad_out)
        _sync(x.device)
        t2 = time.perf_counter()
        if i > 0:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    f, b = statistics.median(fwd), statistics.median(bwd)
    return {"fwd": f, "bwd": b, "total": f + b, "pts_per_s": x.shape[0] / (f + b)}


def run_case(
    label: str,
    grid: dict,
    n_points: int,
    device: torch.device,
    backend: str,
    repeats: int,
    compile_fn: bool = False,
) -> Optional[Dict[str, float]]:
    enc = HashGridEncoding(backend=backend, **grid).to(device)
    x = torch.rand(n_points, 3, device=device)
    fn: Callable[[torch.Tensor], torch.Tensor] = enc
    name = backend + ("+compile" if compile_fn else "")
    if compile_fn:
        fn = torch.compile(enc, dynamic=False)
        t0 = time.perf_counter()
        try:
            fn(x).sum().backward()
        except Exception as exc:  # inductor needs a C compiler; report instead of failing
            print(
                f"  {label:18s} {n_points:>7d} {device.type:4s} {name:14s} torch.compile failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            )
            return None
        _sync(device)
        print(f"  (compile + first call: {time.perf_counter() - t0:.1f} s)")
    r = time_fwd_bwd(fn, enc, x, repeats)
    print(
        f"  {label:18s} {n_points:>7d} {device.type:4s} {name:14s} fwd {r['fwd']*1e3:8.1f} ms  "
        f"bwd {r['bwd']*1e3:8.1f} ms  -> {r['pts_per_s']/1e6:7.3f} M pts/s (fwd+bwd)"
    )
    return r


def compare_with_nerfstudio(device: torch.device, repeats: int) -> Dict[str, float]:
    """Ours (torch backend) vs nerfstudio's torch ``HashEncoding``, default grid, 2^16 points."""
    grid = DEFAULT_GRID
    max_res = grid["base_resolution"] * grid["per_level_scale"] ** (grid["n_levels"] - 1)
    ours = HashGridEncoding(backend="torch", **grid).to(device)
    peer = NerfstudioHashEncoding(
        num_levels=grid["n_levels"],
        min_res=grid["base_resolution"],
        max_res=int(round(max_res)),
        log2_hashmap_size=grid["log2_hashmap_size"],
        features_per_level=grid["n_features_per_level"],
    ).to(device)
    x = torch.rand(2**16, 3, device=device)
    rates: Dict[str, List[float]] = {"ours": [], "nerfstudio": []}
    for _ in range(repeats):  # alternate: both see the same machine state
        rates["ours"].append(time_fwd_bwd(ours, ours, x, 1)["pts_per_s"])
        rates["nerfstudio"].append(time_fwd_bwd(peer, peer, x, 1)["pts_per_s"])
    r = {k: statistics.median(v) for k, v in rates.items()}
    r["ratio"] = r["ours"] / r["nerfstudio"]
    print(
        f"peer {device.type}: default grid, 2^16 points, fwd+bwd: ours {r['ours']/1e6:.3f} M pts/s, "
        f"nerfstudio HashEncoding (torch) {r['nerfstudio']/1e6:.3f} M pts/s, ratio x{r['ratio']:.2f}"
    )
    return r


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the torch backend"
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument(
        "--peer-only", action="store_true", help="only the comparison with nerfstudio"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"CUDA {'yes' if torch.cuda.is_available() else 'no'}, tinycudann {'yes' if tcnn_available() else 'no'}, "
        f"triton {'yes' if torch.cuda.is_available() and triton_available() else 'no (or no CUDA)'}"
    )
    print(f"  {'grid':18s} {'points':>7s} {'dev':4s} {'backend':14s}")
    torch.manual_seed(0)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        compare_with_nerfstudio(device, args.repeats)
    if args.peer_only:
        return
    results = {}
    for device in devices:
        backends = ["torch"]
        if device.type == "cuda":
            backends += (["triton"] if triton_available() else []) + (["tcnn"] if tcnn_available() else [])
        for backend in backends:
            for label, grid, n in CASES:
                results[(label, n, device.type, backend)] = run_case(
                    label, grid, n, device, backend, args.repeats
                )
            if args.compile and backend == "torch":
                for label, grid, n in CASES[:2]:
                    run_case(label, grid, n, device, backend, args.repeats, compile_fn=True)
    cpu_small = results.get(("default L16 T2^19", 2**16, "cpu", "torch"))
    cpu_large = results.get(("default L16 T2^19", 2**18, "cpu", "torch"))
    if cpu_small and cpu_large:
        print(
            f"CPU scaling 2^16 -> 2^18 points: time x{cpu_large['total'] / cpu_small['total']:.2f} (ideal x4)"
        )


if __name__ == "__main__":
    main()
