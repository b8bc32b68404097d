"""Hash-grid encoding: tcnn semantics against an independent per-point reference, gradients,
progressive masking, config dicts and backends."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from threestudio_like.base import Updateable
from threestudio_like.geometry.hashgrid import HashGridEncoding, get_encoding

PRIMES = (1, 2654435761, 805459861)


# ---------------------------------------------------------------------------------------------
# independent reference: one point, one level, one corner at a time, plain Python integers


def _ref_scale(level: int, base: int, per_level_scale: float) -> float:
    # tcnn: exp2f(level * log2(per_level_scale)) * base_resolution - 1.0f, all in float32
    f32 = np.float32
    log2_scale = np.log2(f32(per_level_scale), dtype=np.float32)
    return float(np.exp2(f32(level) * log2_scale, dtype=np.float32) * f32(base) - f32(1.0))


def reference_encode(x, params, n_levels, n_feat, log2T, base, pls):
    """tcnn HashGrid forward for one point ``x`` (sequence of D floats); ``params`` flat."""
    D = len(x)
    out = [0.0] * (n_levels * n_feat)
    offset = 0
    for level in range(n_levels):
        scale = _ref_scale(level, base, pls)
        res = math.ceil(scale) + 1
        dense = res**D
        size = min(2**log2T, (dense + 7) // 8 * 8)
        hashed = dense > size
        pos = [xi * scale + 0.5 for xi in x]
        cell = [math.floor(p) for p in pos]
        frac = [p - c for p, c in zip(pos, cell)]
        for bits in itertools.product((0, 1), repeat=D):
            corner = [c + b for c, b in zip(cell, bits)]
            weight = 1.0
            for b, f in zip(bits, frac):
                weight *= f if b else 1.0 - f
            if hashed:
                h = 0
                for d in range(D):
                    h ^= (corner[d] * PRIMES[d]) & 0xFFFFFFFF  # uint32 multiply
                index = h % size
            else:
                index = sum(corner[d] * res**d for d in range(D)) % size
            for f in range(n_feat):
                out[level * n_feat + f] += weight * float(params[(offset + index) * n_feat + f])
        offset += size
    return out, offset * n_feat


SMALL = dict(
    n_levels=6, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=1.5
)


def _small_encoding(dtype=torch.float64, **overrides):
    kw = dict(SMALL, backend="torch")
    kw.update(overrides)
    enc = HashGridEncoding(**kw).to(dtype)
    torch.manual_seed(1)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)  # large values so that every table entry matters
    return enc


def test_small_config_has_dense_and_hashed_levels():
    enc = _small_encoding()
    kinds = [lv["hashed"] for lv in enc.levels]
    assert kinds[:2] == [False, False] and all(kinds[2:]), kinds
    # level 0: scale 3 -> res 4 -> 64 entries; level 1: scale 5 -> res 6 -> 216 entries (dense)
    assert [lv["resolution"] for lv in enc.levels[:2]] == [4, 6]
    assert [lv["table_size"] for lv in enc.levels] == [64, 216, 256, 256, 256, 256]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_matches_reference_per_point(dtype, tol):
    enc = _small_encoding(dtype)
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(40, 3, generator=g, dtype=torch.float64)
    special = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 0.5, 0.5], [0.999, 0.001, 0.25]],
        dtype=torch.float64,
    )  # x = 1 reaches corner index res, which wraps around (index % size) exactly as in tcnn
    pts = torch.cat([pts, special])
    with torch.no_grad():
        got = enc(pts.to(dtype)).double()
    params = enc.params.detach().double().numpy()
    for i, p in enumerate(pts.tolist()):
        ref, n_params = reference_encode(p, params, n_levels=6, n_feat=2, log2T=8, base=4, pls=1.5)
        assert n_params == enc.n_params
        np.testing.assert_allclose(got[i].numpy(), ref, atol=tol, rtol=0, err_msg=f"point {p}")


def test_matches_reference_2d_and_leading_dims():
    enc = _small_encoding(n_input_dims=2, n_levels=4, log2_hashmap_size=6)
    pts = torch.rand(3, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = enc(pts)
    assert got.shape == (3, 5, 8)
    params = enc.params.detach().numpy()
    for p, row in zip(pts.reshape(-1, 2).tolist(), got.reshape(-1, 8)):
        ref, _ = reference_encode(p, params, n_levels=4, n_feat=2, log2T=6, base=4, pls=1.5)
        np.testing.assert_allclose(row.numpy(), ref, atol=1e-12)


def _index_probe(base_resolution: int, coords, log2T: int = 19) -> float:
    """Read back the table index that the grid vertex ``coords`` of level 0 uses."""
    enc = HashGridEncoding(
        n_levels=1, base_resolution=base_resolution, log2_hashmap_size=log2T, backend="torch"
    ).double()
    with torch.no_grad():
        enc.table[:, 0] = torch.arange(enc.table.shape[0], dtype=torch.float64)  # entry i holds i
        enc.table[:, 1] = 0.0
    scale = enc.levels[0]["scale"]
    x = torch.tensor([[(c - 0.5) / scale for c in coords]], dtype=torch.float64)  # pos == coords
    with torch.no_grad():
        return enc(x)[0, 0].item()


def test_hashed_index_of_known_coordinate():
    # base_resolution 128: scale 127, resolution 128, 128^3 = 2097152 > 2^19 -> hashed level.
    # Hand computation for coords (1, 2, 3), table size 2^19 = 524288:
    #   1 * 1          = 1
    #   2 * 2654435761 = 5308871522 -> mod 2^32: 5308871522 - 4294967296 = 1013904226
    #   3 * 805459861  = 2416379583
    #   1 ^ 1013904226 = 1013904227;  1013904227 ^ 2416379583 = 2892625372 (0xAC69F5DC)
    #   2892625372 % 524288 = 0xAC69F5DC & 0x7FFFF = 0x1F5DC = 128476
    assert abs(_index_probe(128, (1, 2, 3)) - 128476) < 1e-3


def test_dense_index_of_known_coordinate():
    # base_resolution 16: scale 15, resolution 16, 16^3 = 4096 <= 2^19 -> dense, x fastest:
    #   1 + 2 * 16 + 3 * 256 = 801
    assert abs(_index_probe(16, (1, 2, 3)) - 801) < 1e-3


def test_default_layout_matches_tcnn_sizes():
    enc = HashGridEncoding(backend="torch")
    assert enc.n_output_dims == 32
    sizes = []
    for level in range(16):
        res = math.ceil(_ref_scale(level, 16, 1.447269237440378)) + 1
        sizes.append(min(2**19, (res**3 + 7) // 8 * 8))
    assert [lv["table_size"] for lv in enc.levels] == sizes
    assert enc.n_params == sum(sizes) * 2 == enc.params.numel()
    assert sum(not lv["hashed"] for lv in enc.levels) == 5
    assert enc.levels[-1]["resolution"] == 4096
    # tcnn initialisation: uniform(-1e-4, 1e-4)
    assert enc.params.abs().max().item() <= 1e-4
    assert enc.params.std().item() == pytest.approx(2e-4 / math.sqrt(12), rel=0.01)
    # float32 scales agree with the float64 formula
    for level, lv in enumerate(enc.levels):
        assert lv["scale"] == pytest.approx(16 * 1.447269237440378**level - 1, rel=1e-5)


def test_gradients_reach_table_and_inputs():
    enc = _small_encoding()
    x = torch.rand(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = enc(x)
    out.sum().backward()
    grad = enc.params.grad
    assert grad is not None and grad.abs().sum() > 0
    # trilinear weights sum to one per point, level and feature
    assert grad.sum().item() == pytest.approx(16 * enc.n_output_dims)
    # input gradient = derivative of the interpolant (tcnn's dy_dx), and second order to params
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: enc(p), (xg,), eps=1e-7, atol=1e-5)
    enc.params.grad = None
    y = enc(xg)
    (gx,) = torch.autograd.grad(y.square().sum(), xg, create_graph=True)
    gx.sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0


def test_inputs_are_clamped_to_unit_cube():
    enc = _small_encoding()
    x = torch.tensor([[-0.5, 0.3, 1.7]], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x.clamp(0, 1)))


def test_progressive_masking_follows_update_step():
    enc = get_encoding(
        3,
        dict(
            SMALL,
            otype="ProgressiveBandHashGrid",
            start_level=2,
            start_step=10,
            update_steps=5,
            backend="torch",
        ),
    )
    assert isinstance(enc, Updateable)
    torch.manual_seed(0)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = torch.rand(32, 3)
    F = 2

    def active_levels():
        out = enc(x)
        return [bool(out[:, lv * F : (lv + 1) * F].abs().sum() > 0) for lv in range(6)]

    assert active_levels() == [True, True, False, False, False, False]
    enc.do_update_step(0, 14)
    assert enc.current_level == 2
    enc.do_update_step(0, 15)
    assert enc.current_level == 3 and active_levels() == [True] * 3 + [False] * 3
    # masked levels receive no gradient
    enc.params.grad = None
    enc(x).sum().backward()
    assert enc.params.grad[enc.levels[3]["offset"] * F :].abs().sum() == 0
    assert enc.params.grad[: enc.levels[3]["offset"] * F].abs().sum() > 0
    enc.do_update_step(0, 10_000)
    assert enc.current_level == 6 and all(active_levels())


def test_plain_hashgrid_has_all_levels_on():
    enc = get_encoding(3, dict(SMALL, otype="HashGrid", backend="torch"))
    enc.do_update_step(0, 0)
    assert enc.current_level == enc.n_levels


def test_get_encoding_config_errors():
    with pytest.raises(ValueError, match="Did you mean 'n_levels'"):
        get_encoding(3, {"otype": "HashGrid", "n_level": 8})
    with pytest.raises(ValueError, match="otype"):
        get_encoding(3, {"otype": "Frequency"})
    with pytest.raises(ValueError, match="backend"):
        get_encoding(3, {"otype": "HashGrid", "backend": "cuda"})
    enc = get_encoding(
        3, {"otype": "HashGrid", "interpolation": "Linear", "n_levels": 2, "log2_hashmap_size": 10}
    )
    assert enc.n_output_dims == 4


def test_backend_selection_on_cpu():
    enc = HashGridEncoding(n_levels=2, log2_hashmap_size=10, backend="auto")
    x = torch.rand(4, 3)
    assert not enc.use_tcnn(x)
    assert enc(x).shape == (4, 4)
    tcnn_enc = HashGridEncoding(n_levels=2, log2_hashmap_size=10, backend="tcnn")
    with pytest.raises(RuntimeError, match="tcnn|tinycudann|CUDA"):
        tcnn_enc(x)
    with pytest.raises(RuntimeError, match="triton"):
        HashGridEncoding(n_levels=2, log2_hashmap_size=10, backend="triton")(x)
    assert enc.active_backend(torch.device("cpu")) == "torch"


def test_backend_resolution_on_cuda(monkeypatch):
    # The choice for CUDA inputs, with the availability of tcnn / triton simulated.
    from threestudio_like.geometry import hashgrid_triton
    from threestudio_like.geometry.hashgrid import resolve_backend

    yes, no = (lambda: True), (lambda: False)
    monkeypatch.setattr(hashgrid_triton, "triton_available", yes)
    assert resolve_backend("auto", "cuda", yes, True) == "tcnn"
    assert resolve_backend("auto", "cuda", no, True) == "triton"
    assert resolve_backend("auto", "cuda", no, False) == "torch"  # e.g. float64 or 2-D inputs
    assert resolve_backend("triton", "cuda", yes, True) == "triton"
    assert resolve_backend("auto", "cpu", yes, True) == "torch"
    assert resolve_backend("torch", "cuda", yes, True) == "torch"
    monkeypatch.setattr(hashgrid_triton, "triton_available", no)
    assert resolve_backend("auto", "cuda", no, True) == "torch"
    with pytest.raises(RuntimeError, match="triton"):
        resolve_backend("triton", "cuda", no, True)


def test_state_dict_is_the_flat_tcnn_parameter():
    enc = HashGridEncoding(n_levels=3, log2_hashmap_size=10, backend="torch")
    sd = enc.state_dict()
    assert list(sd) == ["params"] and sd["params"].shape == (enc.n_params,)
    other = HashGridEncoding(n_levels=3, log2_hashmap_size=10, backend="torch")
    other.load_state_dict(sd)
    x = torch.rand(8, 3)
    assert torch.equal(enc(x), other(x))


def test_empty_input():
    enc = _small_encoding()
    assert enc(torch.zeros(0, 3, dtype=torch.float64)).shape == (0, 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backends_match_cpu():
    enc = HashGridEncoding(n_levels=8, log2_hashmap_size=15, backend="torch")
    x = torch.rand(4096, 3)
    ref = enc(x)
    enc_cuda = HashGridEncoding(n_levels=8, log2_hashmap_size=15, backend="torch").cuda()
    enc_cuda.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc_cuda(x.cuda()).cpu(), ref, atol=1e-6, rtol=1e-5)
    from threestudio_like.geometry.hashgrid import tcnn_available
    from threestudio_like.geometry.hashgrid_triton import triton_available

    if triton_available():  # the compiled Triton kernels on the GPU, forward and parameter gradient
        grad_out = torch.randn_like(ref)
        enc.params.grad = None
        enc(x).backward(grad_out)
        enc_triton = HashGridEncoding(n_levels=8, log2_hashmap_size=15, backend="triton").cuda()
        enc_triton.load_state_dict(enc.state_dict())
        out = enc_triton(x.cuda())
        out.backward(grad_out.cuda())
        torch.testing.assert_close(out.detach().cpu(), ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(enc_triton.params.grad.cpu(), enc.params.grad, atol=1e-5, rtol=1e-5)

    if tcnn_available():
        enc_tcnn = HashGridEncoding(n_levels=8, log2_hashmap_size=15, backend="tcnn").cuda()
        enc_tcnn.load_state_dict(enc.state_dict())
        torch.testing.assert_close(enc_tcnn(x.cuda()).cpu(), ref, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# grid position: one rounding like tcnn's fmaf(scale, x, 0.5f)


def _round_to_float32(v: Fraction) -> np.float32:
    """Exact rational ``v > 0`` rounded to the nearest float32, ties to even (independent of numpy's
    float64 path: the float64 guess is only a starting point, the choice is made exactly)."""
    guess = np.float32(float(v))
    candidates = [
        np.nextafter(guess, np.float32(-np.inf)),
        guess,
        np.nextafter(guess, np.float32(np.inf)),
    ]
    return min(
        candidates,
        key=lambda c: (abs(Fraction(float(c)) - v), int(np.array(c).view(np.int32)) & 1),
    )


# Inputs where even float64 evaluation followed by one cast to float32 rounds twice wrongly:
# x * scale lies within 2^-54 of a float32 tie of 0.5 + x * scale (found by searching x near
# k * 2^-25 / scale on the default grid's level scales).
_HARD_CASES = [(1, float.fromhex("0x1.1faeeep-18")), (4, float.fromhex("0x1.60d946p-22"))]


def test_grid_position_is_rounded_once_like_fmaf():
    from threestudio_like.geometry.hashgrid_torch import grid_positions

    enc = HashGridEncoding(backend="torch")  # threestudio's default grid
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(400, 3, generator=gen)
    x[:100] *= torch.exp2(-torch.randint(4, 30, (100, 3), generator=gen).float())  # tiny products
    pos = grid_positions(x, enc._scale_bits)  # [L, 3, N]
    scales = enc._scale_bits.view(torch.float32).numpy()
    xs = x.numpy()
    n_two_roundings_differ = 0
    for level, scale in enumerate(scales):
        for i in range(0, xs.shape[0], 3):  # a third of the points, every level (speed)
            for d in range(3):
                exact = Fraction(float(xs[i, d])) * Fraction(float(scale)) + Fraction(1, 2)
                want = _round_to_float32(exact)
                assert pos[level, d, i].item() == float(want), (level, i, d)
                two = np.float32(np.float32(xs[i, d] * scale) + np.float32(0.5))
                n_two_roundings_differ += int(two != want)
    assert n_two_roundings_differ > 0  # the float32 expression x * scale + 0.5 really differs

    for level, xv in _HARD_CASES:
        scale = scales[level]
        assert np.float32(xv) == xv
        exact = Fraction(xv) * Fraction(float(scale)) + Fraction(1, 2)
        want = _round_to_float32(exact)
        naive = np.float32(np.float64(xv) * np.float64(scale) + 0.5)
        assert naive != want  # float64-then-cast is not always the single rounding
        got = grid_positions(torch.tensor([[xv, 0.5, 0.5]]), enc._scale_bits[level : level + 1])
        assert got[0, 0, 0].item() == float(want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_matches_differentiable_path(dtype):
    # HashGridFunction (input needs no gradient) and the twice-differentiable path agree.
    enc = _small_encoding(dtype=dtype)
    x = torch.rand(64, 3, dtype=dtype, generator=torch.Generator().manual_seed(3))
    grad_out = torch.randn(64, enc.n_output_dims, dtype=dtype)
    enc(x).backward(grad_out)
    fast_out, fast_grad = enc(x).detach(), enc.params.grad.clone()
    enc.params.grad = None
    slow_out = enc(x.clone().requires_grad_(True))
    slow_out.backward(grad_out)
    torch.testing.assert_close(fast_out, slow_out.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(fast_grad, enc.params.grad, atol=1e-5, rtol=0)


def test_level_grouping_does_not_change_the_result(monkeypatch):
    from threestudio_like.geometry import hashgrid_torch

    enc = _small_encoding(dtype=torch.float32)
    x = torch.rand(32, 3, generator=torch.Generator().manual_seed(4))
    ref = enc(x)
    assert hashgrid_torch.level_groups((False, False, True, True, True), 5, 2) == [
        (0, 2), (2, 4), (4, 5)
    ]
    for group in (1, 3):
        monkeypatch.setattr(hashgrid_torch, "LEVEL_GROUP", group)
        assert torch.equal(enc(x), ref)


def test_point_chunks_do_not_change_the_result(monkeypatch):
    from threestudio_like.geometry import hashgrid_torch

    enc = _small_encoding(dtype=torch.float32)
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(6))
    grad_out = torch.randn(50, enc.n_output_dims)
    ref = enc(x)
    ref.backward(grad_out)
    ref_grad = enc.params.grad.clone()
    enc.params.grad = None
    monkeypatch.setattr(hashgrid_torch, "POINT_CHUNK", 16)  # 4 chunks, the last one short
    out = enc(x)
    out.backward(grad_out)
    # same math; only vectorised-loop tails may round differently
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(enc.params.grad, ref_grad, atol=1e-6, rtol=0)
