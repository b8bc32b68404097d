"""Triton hash-grid kernels equal the torch backend (forward, parameter and input gradients).

The kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``), which must be set before
``triton`` is imported: the comparison therefore runs in a child process (this file run as a
script), so no other test sees the variable. Sizes are tiny because the interpreter is slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "dense+hashed L4 F2": dict(
        n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4,
        per_level_scale=1.5,
    ),
    "L3 F1 T2^10": dict(
        n_levels=3, n_features_per_level=1, log2_hashmap_size=10, base_resolution=8,
        per_level_scale=2.0,
    ),
    "L5 F4 T2^6 progressive": dict(
        n_levels=5, n_features_per_level=4, log2_hashmap_size=6, base_resolution=2,
        per_level_scale=1.8, start_level=3,
    ),
}


def _compare() -> dict:
    """Max |triton - torch| per configuration (run with TRITON_INTERPRET=1 on CPU)."""
    import torch

    from threestudio_like.geometry.hashgrid import HashGridEncoding
    from threestudio_like.geometry.hashgrid_triton import level_tables, triton_encode

    results = {}
    for k, (name, cfg) in enumerate(CONFIGS.items()):
        torch.manual_seed(k)
        enc = HashGridEncoding(backend="torch", **cfg)
        with torch.no_grad():
            enc.params.uniform_(-1.0, 1.0)  # large values: every table entry matters
        x = torch.rand(40, 3)
        x[0] = torch.tensor([0.0, 1.0, 0.5])  # the faces of the unit cube
        n_active, F = enc.current_level, enc.n_features_per_level
        grad_out = torch.randn(40, n_active * F)

        xg = x.clone().requires_grad_(True)  # torch: twice-differentiable path, input gradient
        ref = enc(xg)[:, : n_active * F]
        ref.backward(grad_out)
        ref_params_grad, ref_x_grad = enc.params.grad.clone(), xg.grad.clone()

        params = enc.params.detach().clone().requires_grad_(True)
        xt = x.clone().requires_grad_(True)
        tables = level_tables(enc.levels, x.device)
        out = triton_encode(params, xt, tables, n_active, F, enc.log2_hashmap_size)
        out.reshape(40, -1).backward(grad_out)
        results[name] = {
            "forward": (out.reshape(40, -1) - ref.detach()).abs().max().item(),
            "params_grad": (params.grad - ref_params_grad).abs().max().item(),
            "x_grad": (xt.grad - ref_x_grad).abs().max().item(),
            "x_grad_scale": ref_x_grad.abs().max().item(),
        }
    return results


def test_triton_kernels_match_torch_backend():
    pytest.importorskip("triton", reason="triton is not importable (pip install triton)")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(CONFIGS)
    for name, r in results.items():
        assert r["forward"] <= 1e-6, (name, r)
        assert r["params_grad"] <= 1e-5, (name, r)
        # input gradient ~ scale * features (scales up to ~50 here): relative float32 agreement
        assert r["x_grad"] <= 1e-5 * max(1.0, r["x_grad_scale"]), (name, r)


def test_triton_kernels_compile_for_h100_without_gpu():
    pytest.importorskip("triton", reason="triton is not importable (pip install triton)")
    from threestudio_like.geometry.hashgrid_triton import compile_for_cuda

    try:
        size = compile_for_cuda(90, n_features=2, log2_hashmap_size=19)
    except (ImportError, FileNotFoundError) as exc:  # a triton build without the CUDA backend
        pytest.skip(f"triton cannot compile for CUDA here: {exc}")
    assert size > 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (the test does)")
    print(json.dumps(_compare()))
