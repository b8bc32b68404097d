"""NeRF volume renderer on CPU: compositing maths, occupancy grid, nerfacc parity, no CUDA calls."""
from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass
from typing import Tuple

import nerfacc
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.base import BaseModule
from threestudio_like.cameras import c2w_from_spherical, rays_for_cameras
from threestudio_like.renderers import occupancy
from threestudio_like.renderers.nerf_volume_renderer import NeRFVolumeRenderer


# ------------------------------------------------------------------------------------------
# analytic stand-ins for the geometry


class SphereGeometry(BaseModule):
    """A ball of constant density and constant colour features; normals point outwards."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        sphere_radius: float = 0.5
        density: float = 50.0
        color: Tuple[float, float, float] = (0.2, 0.5, 0.8)

    cfg: Config

    def configure(self) -> None:
        self.density_scale = nn.Parameter(torch.tensor(float(self.cfg.density)))
        self.feature = nn.Parameter(torch.logit(torch.tensor(list(self.cfg.color))))

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        inside = (points.norm(dim=-1, keepdim=True) < self.cfg.sphere_radius).to(points)
        return inside * self.density_scale

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> dict:
        out = {
            "density": self.forward_density(points),
            "features": self.feature.expand(points.shape[0], -1),
        }
        if output_normal:
            out["normal"] = F.normalize(points, dim=-1)
            out["shading_normal"] = out["normal"]
        return out


class SlabGeometry(SphereGeometry):
    """Density ``sigma`` for ``x0 <= x < x1``, zero elsewhere."""

    @dataclass
    class Config(SphereGeometry.Config):
        x0: float = -0.2
        x1: float = 0.3

    cfg: Config

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        x = points[:, :1]
        return ((x >= self.cfg.x0) & (x < self.cfg.x1)).to(points) * self.density_scale


def make_renderer(geometry=None, material="no-material", background=None, **cfg):
    geometry = geometry if geometry is not None else SphereGeometry({})
    mat = find(material)({})
    bg = background if background is not None else find("solid-color-background")({})
    renderer = find("nerf-volume-renderer")(cfg, geometry=geometry, material=mat, background=bg)
    return renderer, geometry, mat, bg


def camera_rays(size: int = 16, batch: int = 1, distance: float = 2.0):
    elev = torch.full((batch,), 0.3)
    azim = torch.linspace(0.0, 2.0, batch)
    c2w = c2w_from_spherical(elev, azim, torch.full((batch,), distance))
    return rays_for_cameras(c2w, torch.full((batch,), math.radians(50.0)), size, size)


def one_ray(origin=(-2.0, 0.0, 0.0), direction=(1.0, 0.0, 0.0)):
    rays_o = torch.tensor(origin).view(1, 1, 1, 3)
    rays_d = torch.tensor(direction).view(1, 1, 1, 3)
    return rays_o, rays_d


# ------------------------------------------------------------------------------------------
# compositing of one ray


def test_slab_compositing_matches_hand_computation():
    sigma, x0, x1 = 3.0, -0.2, 0.3
    geo = SlabGeometry({"density": sigma, "x0": x0, "x1": x1, "color": (0.25, 0.5, 0.75)})
    renderer, *_ = make_renderer(geo, grid_prune=False, randomized=False)
    renderer.eval()
    rays_o, rays_d = one_ray()
    out = renderer(rays_o, rays_d)
    dt = renderer.render_step_size
    assert dt == pytest.approx(1.732 * 2 / 512)

    # The discrete sum, by hand: lattice t_mid = (k + 0.5) dt from the near plane 0; the ray is
    # at x = t - 2, so the slab holds t in [1.8, 2.3).
    t_mid = (torch.arange(0, 1000, dtype=torch.float64) + 0.5) * dt
    in_slab = (t_mid - 2.0 >= x0) & (t_mid - 2.0 < x1)
    n = int(in_slab.sum())
    trans = torch.exp(-sigma * dt * torch.arange(n, dtype=torch.float64))
    w = trans * (1 - math.exp(-sigma * dt))
    opacity = float(w.sum())
    depth = float((w * t_mid[in_slab]).sum())
    assert out["opacity"].item() == pytest.approx(opacity, abs=1e-5)
    assert out["depth"].item() == pytest.approx(depth, abs=1e-4)

    # The continuous integral, up to one step of discretisation.
    L, t0 = x1 - x0, 2.0 + x0
    assert out["opacity"].item() == pytest.approx(1 - math.exp(-sigma * L), abs=sigma * dt)
    depth_cont = t0 * (1 - math.exp(-sigma * L)) + 1 / sigma - (L + 1 / sigma) * math.exp(-sigma * L)
    assert out["depth"].item() == pytest.approx(depth_cont, abs=3 * dt)

    # Colour: sample colour times opacity plus white background times transparency.
    color = torch.tensor([0.25, 0.5, 0.75])
    expected = color * opacity + 1.0 * (1 - opacity)
    assert torch.allclose(out["comp_rgb"].view(3), expected, atol=1e-5)
    assert torch.allclose(out["comp_rgb_fg"].view(3), color * opacity, atol=1e-5)


def test_weights_sum_to_opacity_and_training_outputs():
    renderer, geo, *_ = make_renderer(num_samples_per_ray=128)
    renderer.train()
    rays_o, rays_d = camera_rays(12, batch=2)
    out = renderer(rays_o, rays_d, c2w=None, fovy=None)  # unknown kwargs are ignored
    ns = out["weights"].shape[0]
    for key, shape in [("t_points", (ns, 1)), ("t_intervals", (ns, 1)), ("t_dirs", (ns, 3)),
                       ("points", (ns, 3)), ("ray_indices", (ns,)), ("density", (ns, 1))]:
        assert out[key].shape == shape, key
    per_ray = torch.zeros(2 * 12 * 12).index_add(0, out["ray_indices"], out["weights"][:, 0])
    assert torch.allclose(per_ray, out["opacity"].reshape(-1), atol=1e-5)
    for key in ("comp_rgb", "comp_rgb_fg", "comp_rgb_bg"):
        assert out[key].shape == (2, 12, 12, 3)
    for key in ("opacity", "depth", "z_variance"):
        assert out[key].shape == (2, 12, 12, 1)
    assert out["opacity"].max() > 0.99 and out["opacity"].min() < 1e-6


def test_empty_scene_and_missing_rays_give_background():
    geo = SphereGeometry({"density": 0.0})
    bg = find("solid-color-background")({"color": (0.1, 0.2, 0.3)})
    renderer, *_ = make_renderer(geo, background=bg, num_samples_per_ray=64)
    for mode in (True, False):
        renderer.train(mode)
        rays_o, rays_d = camera_rays(8)
        rays_d[:, :4] = -rays_d[:, :4]  # half the rays point away from the box
        out = renderer(rays_o, rays_d)
        for value in out.values():
            if value.is_floating_point():
                assert torch.isfinite(value).all()
        assert torch.all(out["opacity"] == 0) and torch.all(out["depth"] == 0)
        assert torch.allclose(out["comp_rgb"], torch.tensor([0.1, 0.2, 0.3]).expand(1, 8, 8, 3))


def test_bg_color_argument_replaces_background():
    renderer, *_ = make_renderer(num_samples_per_ray=64)
    renderer.eval()
    rays_o, rays_d = camera_rays(8, batch=2)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = renderer(rays_o, rays_d, bg_color=bg)
    corner = out["comp_rgb"][:, 0, 0]  # corners miss the sphere
    assert torch.allclose(corner, bg, atol=1e-6)
    assert torch.allclose(out["comp_rgb_bg"][:, 3, 3], bg)


def test_diffuse_material_gives_normals_and_lighting():
    renderer, *_ = make_renderer(material="diffuse-with-point-light-material", num_samples_per_ray=128)
    renderer.eval()
    rays_o, rays_d = camera_rays(16)
    light = rays_o[:, 0, 0]  # light at the camera
    out = renderer(rays_o, rays_d, light_positions=light)
    assert out["comp_normal"].shape == (1, 16, 16, 3)
    assert torch.all(out["comp_normal"] <= out["opacity"] + 1e-6)
    centre = out["comp_rgb"][0, 8, 8]
    albedo = torch.tensor([0.2, 0.5, 0.8])
    # Facing the light: colour = albedo * (ambient 0.1 + diffuse 0.9 * ~1).
    assert torch.allclose(centre, albedo, atol=0.03)
    textureless = renderer(rays_o, rays_d, light_positions=light, shading="textureless")
    assert torch.allclose(textureless["comp_rgb"][0, 8, 8], torch.ones(3), atol=0.03)


# ------------------------------------------------------------------------------------------
# occupancy grid


def test_grid_update_marks_empty_space():
    renderer, *_ = make_renderer(num_samples_per_ray=128)
    renderer.train()
    assert renderer.estimator.binaries.all()  # an unrefreshed grid prunes nothing
    renderer.update_step(0, 0)  # step 0 refreshes (n = 16), warm-up: every cell
    binaries = renderer.estimator.binaries[0]
    res = binaries.shape[0]
    centres = (torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1) + 0.5) / res * 2 - 1
    dist = centres.norm(dim=-1)
    half_diag = math.sqrt(3) / res
    assert not binaries[dist > 0.5 + half_diag].any()
    assert binaries[dist < 0.5 - half_diag].all()
    # Only every n-th step refreshes; evaluation never does.
    renderer.geometry.density_scale.data.fill_(0.0)
    renderer.update_step(0, 5)
    assert renderer.estimator.binaries.any()
    renderer.eval()
    renderer.update_step(0, 32)
    assert renderer.estimator.binaries.any()


def test_grid_pruning_keeps_image_and_cuts_samples():
    rays_o, rays_d = camera_rays(24, batch=2)
    dense, *_ = make_renderer(grid_prune=False, randomized=False, num_samples_per_ray=256)
    pruned, *_ = make_renderer(grid_prune=True, randomized=False, num_samples_per_ray=256)
    dense.train(), pruned.train()
    torch.manual_seed(0)
    for step in range(0, 80, 16):  # a few EMA updates, each probing one random point per cell
        pruned.update_step(0, step)
    out_dense = dense(rays_o, rays_d)
    out_pruned = pruned(rays_o, rays_d)
    assert out_pruned["weights"].shape[0] < 0.05 * out_dense["weights"].shape[0]
    for key, tol in (("opacity", 0.05), ("comp_rgb", 0.05), ("depth", 0.1)):  # depth ~ 1.5
        diff = (out_pruned[key] - out_dense[key]).abs()
        assert diff.mean() < 2e-3 and diff.max() < tol, key


def test_estimator_state_survives_checkpoint():
    renderer, geo, mat, bg = make_renderer(num_samples_per_ray=64)
    renderer.train()
    renderer.update_step(0, 0)
    state = renderer.state_dict()
    assert {"estimator.binaries", "estimator.occs"} <= set(state)
    fresh, *_ = make_renderer(geo, num_samples_per_ray=64)
    assert fresh.estimator.binaries.all()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.estimator.binaries, renderer.estimator.binaries)

    # A system owning all four parts has each parameter exactly once.
    system = nn.Module()
    system.geometry, system.material, system.background, system.renderer = geo, mat, bg, renderer
    keys = list(system.state_dict())
    assert len(keys) == len(set(keys))
    assert not any(k.startswith("renderer.geometry") for k in keys)
    assert sum(1 for _ in system.parameters()) == sum(1 for _ in geo.parameters()) + sum(
        1 for _ in bg.parameters()
    ) + sum(1 for _ in mat.parameters())


# ------------------------------------------------------------------------------------------
# gradients, eval chunking


def test_gradients_reach_geometry_parameters():
    renderer, geo, *_ = make_renderer(num_samples_per_ray=128)
    renderer.train()
    renderer.update_step(0, 0)
    rays_o, rays_d = camera_rays(12)
    out = renderer(rays_o, rays_d)
    (out["comp_rgb"].mean() + out["opacity"].mean()).backward()
    assert geo.density_scale.grad is not None and geo.density_scale.grad.abs() > 0
    assert geo.feature.grad is not None and geo.feature.grad.abs().sum() > 0


def test_eval_chunking_matches_single_chunk():
    rays_o, rays_d = camera_rays(12, batch=2)
    geo = SphereGeometry({})
    whole, *_ = make_renderer(geo, num_samples_per_ray=128)
    chunked, *_ = make_renderer(geo, num_samples_per_ray=128, eval_chunk_size=37)
    whole.eval(), chunked.eval()
    with torch.no_grad():
        a, b = whole(rays_o, rays_d), chunked(rays_o, rays_d)
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert "weights" not in a  # per-sample tensors are training-only


def test_stratified_jitter_only_in_training():
    renderer, *_ = make_renderer(num_samples_per_ray=64)
    rays_o, rays_d = camera_rays(8)
    renderer.eval()
    assert torch.equal(renderer(rays_o, rays_d)["depth"], renderer(rays_o, rays_d)["depth"])
    renderer.train()
    t1 = renderer(rays_o, rays_d)["t_points"]
    t2 = renderer(rays_o, rays_d)["t_points"]
    assert t1.shape != t2.shape or not torch.equal(t1, t2)


# ------------------------------------------------------------------------------------------
# parity of the torch marcher with nerfacc's semantics


def _reference_samples(binaries, aabb, rays_o, rays_d, near, far, dt):
    """Brute force: every lattice midpoint of every ray, kept if in the box and an occupied cell."""
    res = torch.tensor(binaries.shape)
    out = []
    for r in range(rays_o.shape[0]):
        o, d = rays_o[r], rays_d[r]
        t1 = (aabb[:3] - o) / d
        t2 = (aabb[3:] - o) / d
        t_in, t_out = torch.minimum(t1, t2).max().item(), torch.maximum(t1, t2).min().item()
        if not (t_out > t_in and t_out > 0):
            continue
        lo, hi = max(t_in, near[r].item()), min(t_out, far)
        k = torch.arange(0, int((hi - near[r].item()) / dt) + 2, dtype=torch.float64)
        t_mid = near[r] + (k + 0.5) * dt
        keep = (t_mid >= lo) & (t_mid < hi)
        pts = o + d * t_mid[:, None]
        cell = ((pts - aabb[:3]) / (aabb[3:] - aabb[:3]) * res).floor().long()
        cell = torch.minimum(cell.clamp(min=0), res - 1)
        keep &= binaries[cell[:, 0], cell[:, 1], cell[:, 2]]
        out += [(r, int(kk)) for kk in k[keep]]
    return out


@pytest.mark.parametrize("occupancy_case", ["random", "sparse-corner"])
def test_torch_marcher_matches_bruteforce_lattice(occupancy_case):
    gen = torch.Generator().manual_seed(0)
    binaries = torch.rand(8, 8, 8, generator=gen) < 0.3
    if occupancy_case == "sparse-corner":  # a small occupied block: exercises the sub-box march
        binaries = torch.zeros(8, 8, 8, dtype=torch.bool)
        binaries[1:4, 2:6, 5:7] = torch.rand(3, 4, 2, generator=gen) < 0.7
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    n = 64
    rays_o = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.2
    rays_o[:8] *= 0.3  # some origins inside the box
    rays_d = F.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    rays_d[8:16] = F.normalize(-rays_o[8:16], dim=-1)  # some aimed at the centre
    rays_d[16, 1:] = 0.0  # axis-aligned
    rays_d[16, 0] = 1.0
    near = torch.rand(n, generator=gen, dtype=torch.float64) * 0.05
    near[:4] = 0.7  # near planes inside the box
    dt = 0.0237
    ray_idx, k = occupancy.occupied_lattice_samples(binaries, aabb, rays_o, rays_d, near, 1e10, dt)
    got = list(zip(ray_idx.tolist(), [int(x) for x in k.tolist()]))
    expected = _reference_samples(binaries, aabb, rays_o, rays_d, near, 1e10, dt)
    assert len(expected) > 50
    assert got == expected  # same samples, packed in ray-then-marching order


def test_packed_weights_match_nerfacc_batched():
    gen = torch.Generator().manual_seed(1)
    counts = torch.tensor([5, 0, 3, 7, 1])
    n_rays, max_len = counts.shape[0], int(counts.max())
    sig = torch.rand(n_rays, max_len, generator=gen) * 20
    t0 = torch.cumsum(torch.rand(n_rays, max_len, generator=gen) * 0.1, dim=1)
    t1 = t0 + torch.rand(n_rays, max_len, generator=gen) * 0.05
    mask = torch.arange(max_len)[None] < counts[:, None]
    sig_b = (sig * mask).requires_grad_(True)
    w_b, _, _ = nerfacc.render_weight_from_density(t0, t1, sig_b)  # batched: pure torch
    sig_p = sig[mask].clone().requires_grad_(True)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    w_p = occupancy.render_weight_from_density(t0[mask], t1[mask], sig_p, ray_indices, n_rays)
    assert torch.allclose(w_p, w_b[mask], atol=1e-6)
    w_b[mask].pow(2).sum().backward()
    w_p.pow(2).sum().backward()
    assert torch.allclose(sig_p.grad, sig_b.grad[mask], atol=1e-6)


def test_renderer_matches_nerfacc_rendering_reference():
    """The renderer's outputs equal nerfacc's batched maths on the same samples."""
    renderer, geo, *_ = make_renderer(num_samples_per_ray=128, grid_prune=False, randomized=False)
    renderer.train()
    rays_o, rays_d = camera_rays(8)
    out = renderer(rays_o, rays_d)
    ri, n = out["ray_indices"], 64
    counts = torch.bincount(ri, minlength=n)
    mask = torch.arange(int(counts.max()))[None] < counts[:, None]
    t_mid = torch.zeros(mask.shape)
    t_mid[mask] = out["t_points"][:, 0]
    dt = torch.zeros(mask.shape)
    dt[mask] = out["t_intervals"][:, 0]
    sig = torch.zeros(mask.shape)
    sig[mask] = out["density"][:, 0].detach()
    colors, opacities, depths, _ = nerfacc.rendering(
        t_mid - dt / 2, t_mid + dt / 2,
        rgb_sigma_fn=lambda *a: (torch.sigmoid(geo.feature).detach().expand(*mask.shape, 3), sig),
    )
    assert torch.allclose(opacities.view(-1), out["opacity"].view(-1), atol=1e-5)
    assert torch.allclose(colors, out["comp_rgb_fg"].view(-1, 3), atol=1e-5)
    # nerfacc's `rendering` normalises depth by opacity; ours is the plain expectation.
    assert torch.allclose((depths * opacities).view(-1), out["depth"].view(-1), atol=1e-4)


# ------------------------------------------------------------------------------------------
# the CPU path never reaches nerfacc's CUDA extension


def test_cpu_path_never_touches_nerfacc_cuda(monkeypatch):
    import nerfacc.cuda as nerfacc_cuda
    import torch.utils.cpp_extension as cpp_extension

    def forbidden(*args, **kwargs):
        raise AssertionError("nerfacc's CUDA extension was reached on CPU")

    patched = 0
    for name in dir(nerfacc_cuda):
        if getattr(getattr(nerfacc_cuda, name), "__name__", "") == "call_cuda":
            monkeypatch.setattr(nerfacc_cuda, name, forbidden)
            patched += 1
    assert patched >= 8
    backend = types.ModuleType("nerfacc.cuda._backend")
    backend.__getattr__ = lambda name: forbidden()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", backend)
    monkeypatch.setattr(cpp_extension, "load", forbidden)
    for module in (nerfacc.pack, nerfacc.volrend):
        monkeypatch.setattr(module, "pack_info", forbidden)
    for name in ("exclusive_sum", "exclusive_prod"):
        monkeypatch.setattr(nerfacc.volrend, name, forbidden)
    occupancy._nerfacc_extension_loads.cache_clear()

    renderer, geo, *_ = make_renderer(material="diffuse-with-point-light-material", num_samples_per_ray=64)
    rays_o, rays_d = camera_rays(8)
    renderer.train()
    for step in (0, 16):
        renderer.update_step(0, step)
        out = renderer(rays_o, rays_d, light_positions=rays_o[:, 0, 0])
        out["comp_rgb"].sum().backward()
    renderer.eval()
    renderer(rays_o, rays_d)
    assert geo.density_scale.grad is not None
    assert not occupancy.use_nerfacc_kernels(torch.device("cpu"))
    with pytest.raises(RuntimeError):
        occupancy.use_nerfacc_kernels(torch.device("cpu"), "nerfacc")


def test_torch_marcher_is_chosen_on_cuda_when_nerfacc_cannot_load(monkeypatch):
    # nerfacc missing or failing to compile: 'auto' falls back to the torch marcher on CUDA too.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(occupancy, "_nerfacc_extension_loads", lambda: False)
    cuda = torch.device("cuda")
    assert not occupancy.nerfacc_cuda_available(cuda)
    assert not occupancy.use_nerfacc_kernels(cuda, "auto")
    with pytest.raises(RuntimeError, match="nerfacc"):
        occupancy.use_nerfacc_kernels(cuda, "nerfacc")
    monkeypatch.setattr(occupancy, "_nerfacc_extension_loads", lambda: True)
    assert occupancy.use_nerfacc_kernels(cuda, "auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nerfacc_and_torch_marchers_agree():
    if not occupancy.nerfacc_cuda_available(torch.device("cuda")):
        pytest.skip("nerfacc's CUDA extension does not load here")
    geo = SphereGeometry({}).cuda()
    rays_o, rays_d = camera_rays(32)
    outs, state = [], None
    for backend in ("nerfacc", "torch"):
        renderer, *_ = make_renderer(geo, num_samples_per_ray=256, randomized=False, backend=backend)
        renderer.cuda().train()
        if state is None:
            renderer.update_step(0, 0)
            state = renderer.state_dict()
        renderer.load_state_dict(state)  # the same occupancy grid for both
        outs.append(renderer(rays_o.cuda(), rays_d.cuda()))
    assert outs[0]["weights"].shape == outs[1]["weights"].shape
    for key in ("opacity", "depth", "comp_rgb"):
        assert torch.allclose(outs[0][key], outs[1][key], atol=1e-3), key


def test_registered_name():
    assert find("nerf-volume-renderer") is NeRFVolumeRenderer
