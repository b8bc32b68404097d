"""Implicit volume (density bias, normals, export), isosurface extraction, MLP and SH encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.config import ConfigError
from threestudio_like.geometry import (
    HashGridImplicitVolume,
    IsosurfaceError,
    SphericalHarmonicsEncoding,
    get_encoding,
    get_mlp,
    marching_cubes,
)

TINY_ENCODING = {"n_levels": 4, "log2_hashmap_size": 12, "backend": "torch"}


def make_volume(**cfg) -> HashGridImplicitVolume:
    base = {"pos_encoding_config": dict(TINY_ENCODING), "mlp_network_config": {"n_neurons": 16}}
    base.update(cfg)
    return find("hashgrid-implicit-volume")(base)


def raw_density(geo: HashGridImplicitVolume, points: torch.Tensor) -> torch.Tensor:
    """The density head's output before bias and activation."""
    return geo.density_network(geo.encoding(geo.normalize_points(points)))


def shell_points(
    n: int = 64, r_min: float = 0.2, r_max: float = 0.8, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    radii = r_min + (r_max - r_min) * torch.rand(n, 1, generator=g)
    return dirs * radii


# ---------------------------------------------------------------------------------------------
# implicit volume


def test_registered_and_defaults_follow_threestudio():
    geo = find("hashgrid-implicit-volume")({"pos_encoding_config": {"backend": "torch"}})
    cfg = geo.cfg
    assert (cfg.radius, cfg.n_feature_dims, cfg.density_activation) == (1.0, 3, "softplus")
    assert (cfg.density_bias, cfg.density_blob_scale, cfg.density_blob_std) == (
        "blob_magic3d",
        10.0,
        0.5,
    )
    assert cfg.normal_type is None and cfg.finite_difference_normal_eps == 0.01
    assert cfg.isosurface_resolution == 128 and cfg.isosurface_threshold == 25.0
    enc = geo.encoding
    assert (enc.n_levels, enc.n_features_per_level, enc.log2_hashmap_size, enc.base_resolution) == (
        16,
        2,
        19,
        16,
    )
    assert enc.per_level_scale == pytest.approx(1.447269237440378)
    linears = [m for m in geo.density_network.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [
        (32, 64, None),
        (64, 1, None),
    ]


def test_unknown_config_key_names_the_closest():
    with pytest.raises(ConfigError, match="density_blob_std"):
        make_volume(density_blob_sdt=0.3)
    with pytest.raises(ValueError, match="density_bias"):
        make_volume(density_bias="blob")


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (
            {"pos_encoding_config": dict(TINY_ENCODING, n_level=8)},
            r"'system\.geometry\.pos_encoding_config\.n_level'.*"
            r"Did you mean 'system\.geometry\.pos_encoding_config\.n_levels'",
        ),
        (
            {"pos_encoding_config": dict(TINY_ENCODING, otype="HashGrd")},
            r"system\.geometry\.pos_encoding_config\.otype='HashGrd'.*Did you mean 'HashGrid'",
        ),
        (
            {"pos_encoding_config": dict(TINY_ENCODING, backend="cuda")},
            r"system\.geometry\.pos_encoding_config: .*backend",
        ),
        (
            {"mlp_network_config": {"n_neuron": 16}},
            r"'system\.geometry\.mlp_network_config\.n_neuron'.*"
            r"Did you mean 'system\.geometry\.mlp_network_config\.n_neurons'",
        ),
        (
            {"mlp_network_config": {"output_activation": "sigmoidd"}},
            r"system\.geometry\.mlp_network_config: .*'sigmoidd'.*Did you mean 'sigmoid'",
        ),
        ({"density_activation": "softplu"}, r"system\.geometry\.density_activation.*Did you mean 'softplus'"),
        ({"isosurface_resolution": 1}, r"system\.geometry\.isosurface_resolution must be >= 2"),
    ],
)
def test_bad_encoding_and_mlp_configs_are_config_errors_naming_the_key(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_volume(**cfg)


def test_forward_shapes_and_keys():
    geo = make_volume()
    pts = torch.rand(2, 5, 3) * 2 - 1
    out = geo(pts)
    assert out["density"].shape == (2, 5, 1) and out["features"].shape == (2, 5, 3)
    assert "normal" not in out  # normal_type None: no normals even when asked
    assert "normal" not in geo(pts, output_normal=True)
    assert (out["density"] >= 0).all()
    torch.testing.assert_close(geo.forward_density(pts), out["density"])
    assert "features" not in make_volume(n_feature_dims=0)(pts)
    torch.testing.assert_close(geo.export(pts)["features"], out["features"])


def test_blob_magic3d_bias_at_origin_and_radius():
    geo = make_volume()
    origin = torch.zeros(1, 3)
    raw = raw_density(geo, origin)
    torch.testing.assert_close(geo.forward_density(origin), F.softplus(raw + 10.0))
    assert geo.forward_density(origin).item() == pytest.approx(
        F.softplus(torch.tensor(10.0)).item(), abs=1e-3
    )
    p = torch.tensor([[0.0, 0.3, 0.4]])  # |p| = 0.5 = std -> bias 0
    torch.testing.assert_close(geo.forward_density(p), F.softplus(raw_density(geo, p)))


def test_blob_dreamfusion_float_bias_and_activations():
    p = torch.tensor([[0.1, -0.2, 0.3]])
    geo = make_volume(density_bias="blob_dreamfusion", density_blob_scale=5.0, density_blob_std=0.2)
    bias = 5.0 * math.exp(-0.5 * 0.14 / 0.04)
    torch.testing.assert_close(geo.forward_density(p), F.softplus(raw_density(geo, p) + bias))
    geo = make_volume(density_bias=-1.5, density_activation="exp")
    torch.testing.assert_close(geo.forward_density(p), torch.exp(raw_density(geo, p) - 1.5))
    geo = make_volume(density_bias=2.0, density_activation="relu")
    torch.testing.assert_close(geo.forward_density(p), torch.relu(raw_density(geo, p) + 2.0))
    geo = make_volume(density_activation="trunc_exp")
    x = torch.tensor([20.0], requires_grad=True)
    from threestudio_like.geometry import trunc_exp

    trunc_exp(x).backward()
    assert x.grad.item() == pytest.approx(math.exp(15.0), rel=1e-5)
    assert geo.forward_density(p).item() == pytest.approx(
        torch.exp(raw_density(geo, p) + 10 * (1 - p.norm() / 0.5)).item(), rel=1e-5
    )


def test_analytic_normals_point_outward_and_work_without_grad():
    geo = make_volume(normal_type="analytic")
    pts = shell_points()
    out = geo(pts, output_normal=True)
    n = out["normal"]
    assert n.shape == (64, 3)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(64))
    cos = (n * F.normalize(pts, dim=-1)).sum(-1)
    assert cos.min() > 0.99  # the blob dominates a fresh model
    torch.testing.assert_close(out["shading_normal"], n)
    # eval mode under no_grad: same normals, nothing attached to a graph
    geo.eval()
    with torch.no_grad():
        out_eval = geo(pts, output_normal=True)
    assert not out_eval["normal"].requires_grad and not out_eval["density"].requires_grad
    torch.testing.assert_close(out_eval["normal"], n.detach())
    assert not pts.requires_grad  # the caller's tensor is left alone


def test_analytic_normals_are_trainable():
    geo = make_volume(normal_type="analytic")
    out = geo(shell_points(), output_normal=True)
    out["normal"][:, 0].sum().backward()  # e.g. an orientation loss: double backward
    grads = [p.grad for p in geo.encoding.parameters()] + [
        p.grad for p in geo.density_network.parameters()
    ]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_finite_difference_normals_agree_with_analytic():
    pts = shell_points(seed=1)
    geo = make_volume(normal_type="analytic")
    torch.manual_seed(3)
    with torch.no_grad():
        geo.encoding.params.uniform_(-0.05, 0.05)  # some structure beyond the blob
    analytic = geo(pts, output_normal=True)["normal"]
    geo_fd = make_volume(normal_type="finite_difference", finite_difference_normal_eps=1e-3)
    geo_fd.load_state_dict(geo.state_dict())
    with torch.no_grad():
        fd = geo_fd(pts, output_normal=True)["normal"]
    cos = (fd * analytic).sum(-1)
    assert cos.min() > 0.98, cos.min()
    assert (fd * F.normalize(pts, dim=-1)).sum(-1).min() > 0.9


def test_progressive_encoding_follows_geometry_update_step():
    geo = make_volume(
        pos_encoding_config=dict(
            TINY_ENCODING,
            otype="ProgressiveBandHashGrid",
            start_level=2,
            start_step=0,
            update_steps=10,
        )
    )
    assert geo.encoding.current_level == 2
    geo.do_update_step(0, 15)
    assert geo.encoding.current_level == 3


def test_geometry_isosurface_of_fresh_blob():
    geo = make_volume()
    # softplus(10 (1 - r / 0.5)) = 5  <=>  r = 0.5 (1 - softplus^-1(5) / 10) ~= 0.2503
    r_expected = 0.5 * (1 - math.log(math.expm1(5.0)) / 10)
    verts, faces = geo.isosurface(resolution=48, threshold=5.0)
    voxel = 2.0 / 47
    radii = verts.norm(dim=-1)
    assert (radii - r_expected).abs().max() < voxel
    import trimesh

    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.volume > 0
    features = geo.export(verts)["features"]
    assert features.shape == (len(verts), 3)
    v_auto, _ = geo.isosurface(resolution=32, threshold="auto")
    assert len(v_auto) > 0
    with pytest.raises(IsosurfaceError, match=r"system\.geometry\.isosurface_threshold="):
        geo.isosurface(resolution=16)  # default 25 > softplus(10): never reached


# ---------------------------------------------------------------------------------------------
# isosurface of an analytic field


def sphere_density(radius: float = 0.6):
    return lambda p: 10.0 * (radius - p.norm(dim=-1))  # higher inside


def test_marching_cubes_sphere_watertight_outward():
    import trimesh

    res, radius = 40, 0.6
    verts, faces = marching_cubes(sphere_density(radius), res, -1.0, 1.0, 0.0, chunk=5000)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    voxel = 2.0 / (res - 1)
    assert (verts.norm(dim=-1) - radius).abs().max() < voxel
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight
    assert mesh.volume > 0  # signed volume positive: normals point out
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.05)
    normals = torch.tensor(np.array(mesh.face_normals), dtype=torch.float32)
    centres = torch.tensor(np.array(mesh.triangles_center), dtype=torch.float32)
    assert ((normals * F.normalize(centres, dim=-1)).sum(-1) > 0).all()


def test_marching_cubes_offset_box_maps_to_world():
    centre = torch.tensor([0.3, -0.2, 0.1])
    field = lambda p: 0.25 - (p - centre).norm(dim=-1)  # noqa: E731
    verts, _ = marching_cubes(field, 33, (-0.2, -0.7, -0.4), (0.8, 0.3, 0.6), 0.0)
    assert ((verts - centre).norm(dim=-1) - 0.25).abs().max() < 1.0 / 32


def test_marching_cubes_error_names_density_range():
    with pytest.raises(IsosurfaceError) as info:
        marching_cubes(sphere_density(0.5), 17, -1.0, 1.0, 25.0)  # lattice hits the origin
    msg = str(info.value)
    assert "25" in msg and "max 5" in msg and "system.geometry.isosurface_threshold=" in msg
    with pytest.raises(IsosurfaceError, match="below"):
        marching_cubes(lambda p: torch.zeros(p.shape[0]), 8, -1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# networks


def test_get_mlp_layout():
    mlp = get_mlp(
        8,
        3,
        {"otype": "VanillaMLP", "n_neurons": 16, "n_hidden_layers": 2, "output_activation": "none"},
    )
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 3)]
    assert all(m.bias is None for m in linears)
    assert mlp(torch.randn(2, 4, 8)).shape == (2, 4, 3)
    sig = get_mlp(8, 3, {"output_activation": "sigmoid"})
    out = sig(torch.randn(5, 8))
    assert ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="n_neurons"):
        get_mlp(8, 3, {"n_neuron": 4})


def fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z**2).sqrt()
    return torch.stack((r * phi.cos(), r * phi.sin(), z), dim=-1)


@pytest.mark.parametrize("degree", [3, 4, 5])
def test_spherical_harmonics_are_orthonormal(degree):
    sh = SphericalHarmonicsEncoding(degree)
    dirs = fibonacci_sphere(20000)
    y = sh(dirs)
    assert y.shape == (20000, degree**2)
    gram = 4 * math.pi * y.T @ y / len(dirs)
    torch.testing.assert_close(gram, torch.eye(degree**2, dtype=torch.float64), atol=2e-3, rtol=0)


def test_spherical_harmonics_tcnn_values_and_input_range():
    sh = SphericalHarmonicsEncoding(3)
    up = sh(torch.tensor([[0.0, 0.0, 1.0]]))[0]
    # tcnn ordering: Y00, -c y, c z, -c x, xy, -yz, (3z^2-1), -xz, x^2-y^2
    expected = torch.zeros(9)
    expected[0] = 0.28209479177387814
    expected[2] = 0.48860251190291987
    expected[6] = 0.94617469575755997 - 0.31539156525251999
    torch.testing.assert_close(up, expected)
    d = F.normalize(torch.randn(10, 3), dim=-1)
    sh01 = SphericalHarmonicsEncoding(3, inputs_in_01=True)
    torch.testing.assert_close(sh01((d + 1) / 2), sh(d))
    enc = get_encoding(3, {"otype": "SphericalHarmonics", "degree": 3})
    assert isinstance(enc, SphericalHarmonicsEncoding) and enc.n_output_dims == 9
