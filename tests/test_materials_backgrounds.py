"""Materials (no-material, diffuse with point light) and backgrounds (solid, neural env map)."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.base import Updateable


def _logit(x):
    return torch.logit(torch.as_tensor(x, dtype=torch.float32))


# ------------------------------------------------------------------------------------------
# no-material


def test_no_material_activations_and_export():
    feats = torch.tensor([[-2.0, 0.0, 2.0, 5.0]])
    sig = find("no-material")({})
    assert torch.allclose(sig(features=feats, viewdirs=None), torch.sigmoid(feats[:, :3]))
    assert not sig.requires_normal
    four = find("no-material")({"n_output_dims": 4, "color_activation": "none"})
    assert torch.equal(four(features=feats), feats)
    clamp = find("no-material")({"color_activation": "clamp"})
    assert torch.equal(clamp(features=feats), torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.allclose(sig.export(feats)["albedo"], torch.sigmoid(feats[:, :3]))
    with pytest.raises(ValueError):
        find("no-material")({"n_output_dims": 5})(features=feats)
    with pytest.raises(Exception):
        find("no-material")({"color_activation": "bogus"})


# ------------------------------------------------------------------------------------------
# diffuse-with-point-light-material


def _one_point():
    albedo = torch.tensor([0.2, 0.4, 0.6])
    feats = _logit(albedo)[None]
    pos = torch.tensor([[0.0, 0.0, 0.5]])
    normal = F.normalize(torch.tensor([[0.0, 0.6, 0.8]]), dim=-1)
    light = torch.tensor([[0.0, 3.0, 4.5]])  # direction from the point: (0, 3, 4)/5
    return albedo, dict(features=feats, positions=pos, shading_normal=normal, light_positions=light,
                        viewdirs=-normal)


def test_diffuse_shading_hand_computed():
    mat = find("diffuse-with-point-light-material")({})
    assert mat.requires_normal and isinstance(mat, Updateable)
    mat.eval()
    albedo, kw = _one_point()
    n_dot_l = 0.6 * 0.6 + 0.8 * 0.8  # normal (0, .6, .8), light dir (0, .6, .8)
    expected = albedo * (0.1 + 0.9 * n_dot_l)
    assert torch.allclose(mat(**kw), expected[None], atol=1e-6)

    # Light behind the surface: only ambient.
    kw_back = dict(kw, light_positions=torch.tensor([[0.0, -3.0, -4.5]]))
    assert torch.allclose(mat(**kw_back), (albedo * 0.1)[None], atol=1e-6)

    # Overrides: shading modes and ambient ratio.
    assert torch.allclose(mat(**kw, shading="albedo"), albedo[None], atol=1e-6)
    assert torch.allclose(mat(**kw, shading="textureless"), torch.full((1, 3), 0.1 + 0.9 * n_dot_l))
    half = albedo * (0.3 + 0.7 * n_dot_l)
    assert torch.allclose(mat(**kw, ambient_ratio=0.3), half[None], atol=1e-6)
    with pytest.raises(ValueError):
        mat(**kw, shading="metallic")
    assert torch.allclose(mat.export(kw["features"])["albedo"], albedo[None], atol=1e-6)


def test_diffuse_ambient_only_warmup_then_random_modes():
    mat = find("diffuse-with-point-light-material")({"ambient_only_steps": 100})
    mat.train()
    albedo, kw = _one_point()
    mat.do_update_step(0, 10)
    assert mat.ambient_only and mat.global_step == 10
    for _ in range(20):  # warm-up: always albedo in training...
        assert torch.allclose(mat(**kw), albedo[None], atol=1e-6)
    mat.eval()  # ...and in evaluation
    assert torch.allclose(mat(**kw), albedo[None], atol=1e-6)

    mat.train()
    mat.do_update_step(0, 100)
    assert not mat.ambient_only
    random.seed(0)
    modes = [mat.pick_shading() for _ in range(4000)]
    frac = {m: modes.count(m) / len(modes) for m in ("albedo", "textureless", "diffuse")}
    # threestudio's draw: albedo 1 - 0.75; textureless 0.75 * 0.5; diffuse 0.75 * 0.5
    assert frac["albedo"] == pytest.approx(0.25, abs=0.03)
    assert frac["textureless"] == pytest.approx(0.375, abs=0.03)
    assert frac["diffuse"] == pytest.approx(0.375, abs=0.03)
    mat.eval()
    assert mat.pick_shading() == "diffuse"


def test_textureless_ignores_albedo_and_keeps_graph():
    mat = find("diffuse-with-point-light-material")({})
    mat.eval()
    _, kw = _one_point()
    feats = torch.randn(1, 3, requires_grad=True)
    out_a = mat(**dict(kw, features=feats), shading="textureless")
    out_b = mat(**dict(kw, features=feats.detach() + 3.0), shading="textureless")
    assert torch.allclose(out_a, out_b)
    out_a.sum().backward()  # the "* 0" keeps features in the graph
    assert feats.grad is not None and torch.all(feats.grad == 0)


def test_soft_shading_draws_light_share():
    mat = find("diffuse-with-point-light-material")({"soft_shading": True, "ambient_only_steps": 0})
    mat.train()
    mat.do_update_step(0, 1)
    _, kw = _one_point()
    values = [mat(**kw, shading="textureless")[0, 0].item() for _ in range(10)]
    assert all(abs(v - 1.0) < 1e-5 for v in values)  # ambient + diffuse with n.l = 1: always 1
    kw_side = dict(kw, light_positions=torch.tensor([[3.0, 0.0, 0.5]]))  # n.l = 0: ambient only
    side = [mat(**kw_side, shading="textureless")[0, 0].item() for _ in range(10)]
    assert min(side) >= 0.0 and max(side) <= 1.0 and len(set(side)) > 1


def test_diffuse_requires_normals():
    mat = find("diffuse-with-point-light-material")({})
    _, kw = _one_point()
    with pytest.raises(ValueError, match="normal"):
        mat(**dict(kw, shading_normal=None))


# ------------------------------------------------------------------------------------------
# backgrounds


def _dirs(batch=8, size=4):
    return F.normalize(torch.randn(batch, size, size, 3), dim=-1)


def test_solid_color_background():
    bg = find("solid-color-background")({"color": (0.25, 0.5, 1.0)})
    out = bg(_dirs(2))
    assert out.shape == (2, 4, 4, 3)
    assert torch.equal(out, torch.tensor([0.25, 0.5, 1.0]).expand(2, 4, 4, 3))
    assert sum(p.numel() for p in bg.parameters()) == 0
    learned = find("solid-color-background")({"learned": True})
    learned(_dirs(1)).sum().backward()
    assert learned.env_color.grad is not None and torch.all(learned.env_color.grad == 16)
    with pytest.raises(ValueError):
        find("solid-color-background")({"color": (1.0, 1.0), "n_output_dims": 3})


def test_neural_env_map_shapes_range_and_grad():
    bg = find("neural-environment-map-background")({})
    dirs = _dirs(2)
    out = bg(dirs)
    assert out.shape == (2, 4, 4, 3)
    assert torch.all((out > 0) & (out < 1))
    out.sum().backward()
    assert all(p.grad is not None for p in bg.parameters())
    # Depends on the direction only: the same direction gives the same colour.
    same = bg(dirs[:1, :1, :1].expand(1, 2, 2, 3))
    assert torch.allclose(same, same[:, :1, :1].expand_as(same))


def test_sh_basis_is_orthonormal():
    from threestudio_like.renderers.background import _SphericalHarmonics

    sh = _SphericalHarmonics(3)
    # Monte-Carlo over the sphere: E[Y_i Y_j] * 4 pi = delta_ij.
    dirs = F.normalize(torch.randn(400000, 3, dtype=torch.float64), dim=-1)
    basis = sh(dirs)
    gram = basis.T @ basis / dirs.shape[0] * 4 * math.pi
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=0.02)


def test_shared_random_aug_color_per_object():
    bg = find("neural-environment-map-background")(
        {"random_aug": True, "random_aug_prob": 1.0, "share_aug_bg": True}
    )
    bg.train()
    out = bg(_dirs(8), n_views=4)
    colors = out[:, 0, 0]
    assert torch.all(out == colors[:, None, None, :])  # solid colour per image
    assert torch.equal(colors[0:4], colors[0:1].expand(4, 3))  # one colour per object
    assert torch.equal(colors[4:8], colors[4:5].expand(4, 3))
    assert not torch.allclose(colors[0], colors[4])  # differs across objects
    colors = bg(_dirs(8), n_views=torch.tensor([2]))[:, 0, 0]  # as a collated batch carries it
    assert torch.equal(colors[0], colors[1]) and not torch.equal(colors[1], colors[2])

    unshared = find("neural-environment-map-background")({"random_aug": True, "random_aug_prob": 1.0})
    unshared.train()
    colors = unshared(_dirs(8), n_views=4)[:, 0, 0]
    assert len({tuple(c.tolist()) for c in colors}) == 8  # one colour per image

    # Never in evaluation; never with probability 0.
    bg.eval()
    assert not torch.allclose(bg(_dirs(2))[:, 0, 0], bg(_dirs(2))[:, 1, 1])
    never = find("neural-environment-map-background")({"random_aug": True, "random_aug_prob": 0.0})
    never.train()
    out = never(_dirs(2))
    assert not torch.allclose(out[:, 0, 0], out[:, 1, 1])


def test_random_aug_probability():
    bg = find("solid-color-background")({"random_aug": True, "random_aug_prob": 0.3})
    bg.train()
    random.seed(1)
    augmented = sum(not torch.all(bg(_dirs(1, 1)) == 1.0) for _ in range(2000)) / 2000
    assert augmented == pytest.approx(0.3, abs=0.04)


def test_eval_color():
    bg = find("neural-environment-map-background")({"eval_color": (0.5, 0.5, 0.5)})
    bg.eval()
    assert torch.equal(bg(_dirs(2)), torch.full((2, 4, 4, 3), 0.5))
    bg.train()
    assert not torch.equal(bg(_dirs(2)), torch.full((2, 4, 4, 3), 0.5))
