"""Triton hash-grid kernels: the no-compile GPU backend of :class:`.hashgrid.HashGridEncoding`.

Used by ``backend: auto`` on CUDA when tiny-cuda-nn is absent (Triton ships with CUDA builds of
PyTorch and JIT-compiles its kernels on first use, no C++/CUDA toolchain needed). It computes the
same function as the torch backend (:mod:`.hashgrid_torch`) from the same flat parameter layout:

* one program handles ``BLOCK`` points of one level (grid ``[ceil(N / BLOCK), n_active]``);
* grid position ``pos = fma(x, scale, 0.5)`` in float32, rounded once like tcnn (``tl.fma`` is a
  real fused multiply-add on the GPU, and exact in Triton's CPU interpreter too);
* cell ``floor(pos)``, weights ``frac`` / ``1 - frac`` multiplied in the torch backend's order
  (``(w0 * w1) * w2``), corner ``c`` with dimension 0 as its most significant bit;
* dense levels: ``x + y * res + z * res^2`` reduced ``% size`` by one conditional subtraction;
  hashed levels: ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861)`` in uint32, masked to the table;
* backward: ``grad_params[(offset + index) * F + f] += weight * grad_out`` by atomic adds, and the
  input gradient ``dL/dx_d = scale * sum_c (sum_f grad_out_f * feature_cf) * dw_c/dfrac_d``
  (accumulated over levels by atomic adds) when the input needs one.

Three-dimensional inputs and float32 only (the encoding falls back to the torch backend
otherwise). The autograd function is once differentiable; the encoding therefore sends inputs
that need a gradient (analytic normals may need a second derivative) to the torch backend.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

_state: Dict[str, Any] = {"checked": False, "kernels": None, "error": ""}


def _kernels() -> Any:
    """The kernel module (imports ``triton`` on first call; None when it cannot)."""
    if not _state["checked"]:
        _state["checked"] = True
        try:
            from threestudio_like.geometry import hashgrid_triton_kernels

            _state["kernels"] = hashgrid_triton_kernels
        except Exception as exc:  # ImportError, or a triton that does not fit this torch
            _state["error"] = f"{type(exc).__name__}: {exc}"
    return _state["kernels"]


def triton_available() -> bool:
    """True when ``triton`` imports (CUDA builds of PyTorch ship it; ``pip install triton``)."""
    return _kernels() is not None


def triton_unavailable_reason() -> str:
    """Why :func:`triton_available` is False ("" when it is True or not asked yet)."""
    return _state["error"]




def level_tables(levels: Sequence[Mapping[str, Any]], device: torch.device) -> Dict[str, torch.Tensor]:
    """Per-level kernel constants from :func:`.hashgrid.level_layout` rows, on ``device``."""

    def col(key: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([lv[key] for lv in levels], dtype=dtype, device=device)

    return {
        "scale": col("scale", torch.float32),
        "res": col("resolution", torch.int32),
        "size": col("table_size", torch.int32),
        "offset": col("offset", torch.int32),
        "hashed": col("hashed", torch.int32),
    }


def _launch_args(tables: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
    return [tables[k] for k in ("scale", "res", "size", "offset", "hashed")]


class TritonHashGridFunction(torch.autograd.Function):
    """Hash-grid forward / backward (parameters and, if needed, input) with the Triton kernels."""

    @staticmethod
    def forward(ctx, params, x, tables, n_active, n_features, hash_mask):  # type: ignore[override]
        N, F = x.shape[0], n_features
        K = _kernels()
        out = torch.empty(N, n_active * F, dtype=torch.float32, device=x.device)
        grid = (K.triton.cdiv(N, K.BLOCK), n_active)
        FP = K.triton.next_power_of_2(F)
        K.forward_kernel[grid](
            x, params, out, *_launch_args(tables), N, n_active * F,
            F=F, FP=FP, HASH_MASK=hash_mask, BLOCK=K.BLOCK,
        )
        ctx.save_for_backward(params, x)
        ctx.tables, ctx.meta = tables, (n_active, F, hash_mask)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        K = _kernels()
        params, x = ctx.saved_tensors
        n_active, F, hash_mask = ctx.meta
        N = x.shape[0]
        grad_params = torch.zeros_like(params)
        x_grad = bool(ctx.needs_input_grad[1])
        grad_x = torch.zeros_like(x) if x_grad else grad_params  # placeholder pointer when unused
        grid = (K.triton.cdiv(N, K.BLOCK), n_active)
        K.backward_kernel[grid](
            x, params, grad_out.contiguous().float(), grad_params, grad_x, *_launch_args(ctx.tables),
            N, n_active * F, F=F, FP=K.triton.next_power_of_2(F), HASH_MASK=hash_mask, X_GRAD=x_grad,
            BLOCK=K.BLOCK,
        )
        return grad_params, (grad_x if x_grad else None), None, None, None, None


def triton_encode(
    params: torch.Tensor,
    x: torch.Tensor,
    tables: Mapping[str, torch.Tensor],
    n_active: int,
    n_features: int,
    log2_hashmap_size: int,
) -> torch.Tensor:
    """Encode ``x [N, 3]`` float32 in ``[0,1]`` on the first ``n_active`` levels -> ``[N, n_active, F]``.

    Differentiable once in ``params`` and ``x``. ``tables`` from :func:`level_tables`.
    """
    if not triton_available():
        raise RuntimeError(f"Triton hash-grid backend unavailable: {triton_unavailable_reason()}")
    if x.dim() != 2 or x.shape[1] != 3 or x.dtype != torch.float32 or params.dtype != torch.float32:
        raise ValueError(
            f"Triton hash grid takes float32 [N, 3] inputs and float32 parameters, got {x.dtype} "
            f"{tuple(x.shape)} and {params.dtype}."
        )
    out = TritonHashGridFunction.apply(
        params.contiguous(), x.contiguous(), tables, n_active, n_features,
        (1 << log2_hashmap_size) - 1,
    )
    return out.view(x.shape[0], n_active, n_features)


def supports(n_input_dims: int, dtype: Optional[torch.dtype]) -> bool:
    """Whether the Triton kernels cover this input dimension and dtype (3-D, float32)."""
    return n_input_dims == 3 and dtype == torch.float32


_POINTER_TYPES = {"res_ptr": "*i32", "size_ptr": "*i32", "offset_ptr": "*i32", "hashed_ptr": "*i32"}


def compile_for_cuda(capability: int = 90, n_features: int = 2, log2_hashmap_size: int = 19) -> int:
    """Compile both kernels ahead of time for a CUDA compute capability (e.g. 90 = H100), without
    a GPU: checks the kernels on machines that have none. Returns the size of the cubins (bytes)."""
    if not triton_available():
        raise RuntimeError(f"triton unavailable: {triton_unavailable_reason()}")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    K = _kernels()

    constants = {
        "F": n_features,
        "FP": K.triton.next_power_of_2(n_features),
        "HASH_MASK": (1 << log2_hashmap_size) - 1,
        "X_GRAD": True,
        "BLOCK": K.BLOCK,
    }
    size = 0
    for kernel in (K.forward_kernel, K.backward_kernel):
        names = kernel.arg_names
        signature = {
            n: "constexpr" if n in constants else _POINTER_TYPES.get(n, "*fp32")
            if n.endswith("_ptr") else "i32"
            for n in names
        }
        constexprs = {(names.index(n),): v for n, v in constants.items() if n in names}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        size += len(K.triton.compile(source, target=GPUTarget("cuda", capability, 32)).asm["cubin"])
    return size
