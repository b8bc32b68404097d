"""Janus in 3-D: the demo (a hash-grid NeRF) distilled from the reference-object prior in each mode.

Short runs (16 x 16 renders, 150 steps, about 10 s each on an idle 2-core CPU) are measured
against the reference object's own turntable (12 views at 32 x 32, :mod:`threestudio_like.janus.measures`).
At this size the exact face-arc count is noisy (renders are blurry), but the back-half front
fraction is not: the unconditioned prior with CFG puts the front's colours all around the object
(fraction 1), the view-binned, camera-conditioned and multi-view-joint priors give it a back
(fraction 0). Slow: run with ``--runslow``.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.data.random_camera import make_batch
from threestudio_like.guidance.reference_object import ReferenceObjectGuidance
from threestudio_like.janus.measures import janus_measures

N_VIEWS = 12
SMALL = [
    "data.height=16", "data.width=16", "data.resolution_milestones=[]", "trainer.max_steps=150",
    "system.guidance.resolution=16", "system.guidance.max_step_percent=[0,0.98,0.5,100]",
    f"data.n_test_views={N_VIEWS}", "data.eval_height=32", "data.eval_width=32",
    "system.guidance.guidance_scale=7.5", "system.guidance.n_other=4", "system.guidance.bank_elevation_step=20",
    "system.renderer.num_samples_per_ray=64", "system.guidance.num_samples_per_ray=128",
    "system.exporter_type=''", "system.test_formats=[]", "checkpoint.every_n_train_steps=100000",
    "trainer.val_check_interval=100000",
]


def _measure(tmp_path, mode: str, truth: torch.Tensor):
    import imageio.v2 as imageio

    out = tmp_path / mode
    extra = ["data.n_view=4", "data.batch_size=4"] if mode == "multi-view-joint" else []
    args = ["--config", "demo.yaml", "--train", f"exp_root_dir={out}", f"system.guidance.mode={mode}", *SMALL, *extra]
    assert main(args) == 0
    frames = sorted(glob.glob(os.path.join(str(out), "demo", "*", "save", "it*-test", "*.png")),
                    key=lambda p: int(os.path.basename(p)[:-4]))
    assert len(frames) == N_VIEWS
    views = np.stack([imageio.imread(f)[..., :3] for f in frames]).astype(np.float32) / 255
    return janus_measures(torch.from_numpy(views), truth)


@pytest.mark.slow
def test_unconditioned_prior_loses_the_back_in_3d(tmp_path):
    torch.manual_seed(0)
    g = ReferenceObjectGuidance({"resolution": 32})
    t = torch.tensor
    az = torch.arange(N_VIEWS, dtype=torch.float32) * 360 / N_VIEWS
    cam = make_batch(t([15.0] * N_VIEWS), az, t([2.0] * N_VIEWS), t([45.0] * N_VIEWS), 32, 32)
    truth = g.render_reference(cam["c2w"], cam["fovy"], 32, 32)
    m = {mode: _measure(tmp_path, mode, truth)
         for mode in ("unconditioned", "view-binned", "camera-conditioned", "multi-view-joint")}
    for mode, r in m.items():
        print(f"{mode}: face arcs {r['face_arcs']:.0f}, back-half front fraction {r['back_front_fraction']:.2f}")
    assert m["unconditioned"]["back_front_fraction"] >= 0.5
    for mode in ("view-binned", "camera-conditioned", "multi-view-joint"):
        assert m[mode]["back_front_fraction"] <= 0.25, mode
    assert m["camera-conditioned"]["face_arcs"] == 1
