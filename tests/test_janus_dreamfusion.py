"""DreamFusion SD2.1 baseline: view-dependent prompts, Perp-Neg math, tiny-random SDS on CPU."""
from __future__ import annotations

import torch

from threestudio_like import find
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.guidance import distillation as D
from threestudio_like.prompt.view_dependent import DIRECTIONS, direction_index


def test_directions_follow_threestudio():
    ele = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0])
    azi = torch.tensor([10.0, 90.0, 170.0, -150.0, 0.0])
    assert [DIRECTIONS[i] for i in direction_index(ele, azi)] == ["front", "side", "back", "back", "overhead"]


def test_perp_neg_removes_the_parallel_part():
    u, pos = torch.zeros(1, 4), torch.tensor([[1.0, 0, 0, 0]])
    negs = torch.tensor([[[2.0, 3.0, 0, 0], [0, 0, 1.0, 0]]])
    out = D.perp_neg_guidance(u, pos, negs, torch.tensor([[-1.0, 0.0]]), 2.0)
    assert torch.allclose(out, torch.tensor([[2.0, -6.0, 0, 0]]))


def test_tiny_random_sds_with_view_dependent_prompts_and_perp_neg(tmp_path):
    pp = find("view-dependent-prompt-processor")({"prompt": "a corgi", "pretrained_model_name_or_path": "tiny-random",
                                                  "cache_dir": str(tmp_path)})
    cond = pp()
    assert pp.direction_prompts()["back"] == "a corgi, back view"
    ele, azi = torch.tensor([0.0, 10.0]), torch.tensor([0.0, 170.0])
    for perp in (False, True):
        g = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64,
                                               "use_perp_neg": perp})
        rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
        c2w = c2w_from_spherical(deg2rad(ele), deg2rad(azi), torch.full((2,), 2.0))
        out = g(rgb, cond, Cameras.from_c2w(c2w))
        out["loss_sds"].backward()
        assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
