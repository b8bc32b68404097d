"""The reference-object prior in RGBD: the exact denoiser over colour + LDM3D-convention depth
renders of the bundled object (the known answer of the RGBD distillation path)."""
from __future__ import annotations

import glob
import os

import pytest
import torch
from conftest import known_answer_ious

from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.cli import main
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.reference_object import ReferenceObjectGuidance


def _guidance(**cfg):
    return ReferenceObjectGuidance({"resolution": 16, "num_samples_per_ray": 64, "channels": "rgbd", **cfg})


def _cameras(azimuths):
    az = deg2rad(torch.tensor(azimuths))
    c2w = c2w_from_spherical(torch.full_like(az, 0.3), az, torch.full_like(az, 2.0))
    return Cameras.from_c2w(c2w, fovy=torch.full_like(az, 45.0))


def test_rgbd_candidates_carry_inverse_depth_with_the_background_far():
    g = _guidance()
    cams = _cameras([0.0, 90.0])
    renders = g.render_reference(cams.c2w, cams.fovy, 16, 16)
    assert renders.shape == (2, 16, 16, 5)
    data, _ = g.candidates(cams.c2w, cams.fovy)["cond"]
    assert data.shape == (2, 1, 4, 16, 16)
    depth = data[:, 0, 3]
    corner, centre = depth[:, 0, 0], depth[:, 8, 8]
    assert torch.allclose(corner, torch.full_like(corner, -1.0), atol=1e-3)  # background: far (0 -> -1)
    assert (centre > 0).all() and depth.amax(dim=(1, 2)).allclose(torch.ones(2))  # object: near, max at 1


@pytest.mark.parametrize("convention, tiny", [("inverse", True), ("metric", False)])
def test_exact_object_has_zero_update_only_in_the_right_convention(convention, tiny):
    """At the object's own renders the exact prior has nothing to change (eps_hat = eps), unless
    the query's depth is converted with another convention than the prior's data."""
    g = _guidance(depth_convention=convention, min_step_percent=0.3, max_step_percent=0.3)
    cams = _cameras([20.0, 200.0])
    renders = g.render_reference(cams.c2w, cams.fovy, 16, 16).requires_grad_(True)
    out = g(renders, None, cams)
    out["loss_sds"].backward()
    assert (out["grad_norm"] < 1e-3) == tiny, float(out["grad_norm"])
    if not tiny:
        assert renders.grad[..., 3:].abs().sum() > 0  # the mismatch pushes on depth and opacity


def test_rgbd_mode_refuses_colour_only_renders():
    g = _guidance()
    with pytest.raises(ConfigError, match="5-channel renders"):
        g(torch.rand(1, 16, 16, 3), None, _cameras([0.0]))


SHORT_DEMO = [
    "data.height=32", "data.width=32", "data.resolution_milestones=[]", "trainer.max_steps=300",
    "system.guidance.resolution=32", "system.guidance.max_step_percent=[0,0.98,0.5,200]",
    "data.n_test_views=4", "data.eval_height=32", "data.eval_width=32",
    "system.geometry.isosurface_resolution=64", "checkpoint.every_n_train_steps=1000",
    "trainer.val_check_interval=1000",
]


def _demo_iou(tmp_path, name, *extra):
    root = tmp_path / name
    assert main(["--config", "demo.yaml", "--train", f"exp_root_dir={root}", *SHORT_DEMO, *extra]) == 0
    (trial,) = glob.glob(os.path.join(str(root), "demo", "*"))
    return known_answer_ious(trial)[1]


@pytest.mark.slow
def test_rgbd_distillation_matches_or_beats_rgb_and_a_broken_convention_fails(tmp_path):
    """Same steps and resolution as the RGB known-answer test (32 px, 300 steps). Measured on 2
    idle CPU cores with the crisp reference renders: RGBD 0.894, RGB 0.912, RGBD with the metric
    (wrong) depth convention 0.655, the untrained blob 0.285 (volume IoU at 64^3); 2 minutes.
    (With the earlier soft renders: 0.769, 0.682, 0.431.) Both right conventions now sit near the
    photometric-fit ceiling (0.909), where depth has nothing left to add: RGBD must match RGB
    within 0.03, and the wrong convention must fall far below both."""
    rgbd = _demo_iou(tmp_path, "rgbd", "system.guidance.channels=rgbd")
    rgb = _demo_iou(tmp_path, "rgb")
    metric = _demo_iou(tmp_path, "metric", "system.guidance.channels=rgbd", "system.guidance.depth_convention=metric")
    print(f"volume IoU at 64^3 after 300 steps: rgbd {rgbd:.3f}, rgb {rgb:.3f}, rgbd with metric depth {metric:.3f}")
    assert rgbd >= rgb - 0.03
    assert rgbd >= RGBD_IOU_BOUND > metric


RGBD_IOU_BOUND = 0.8
"""Lower bound of the RGBD known answer: measured 0.894 with LDM3D's depth convention, 0.655 with
the metric one (which this bound must fail)."""
