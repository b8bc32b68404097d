"""Resuming is exact: a run interrupted at a checkpoint and resumed ends bit-identical (every
parameter, buffer and optimiser moment) to the run that was never interrupted, on CPU.

The tiny demo refreshes its occupancy grid every 4 steps (so right at the checkpoint step),
leaves the grid's warm-up early (so the refresh draws random cells), switches resolution at the
checkpoint step (Lightning collates that batch a step ahead) and validates there as the full demo
does: every source of randomness and every step-dependent setting around the save point is live.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict

import pytest
import torch

from conftest import TINY_OVERRIDES
from threestudio_like.cli import main
from threestudio_like.models.checkpoints import read_training_checkpoint

RESUME_DEMO = [
    *TINY_OVERRIDES,
    "data.batch_size=2",
    "data.height=[16,20]",
    "data.width=[16,20]",
    "data.resolution_milestones=[20]",
    "data.camera_perturb=0.1",
    "data.center_perturb=0.1",
    "system.renderer.occ_update_every_n=4",
    "system.renderer.occ_warmup_steps=8",
    "trainer.val_check_interval=20",
    "checkpoint.every_n_train_steps=20",
]


def _run(root: str, *extra: str) -> str:
    assert main(["--config", "demo.yaml", "--train", f"exp_root_dir={root}", *RESUME_DEMO, *extra]) == 0
    (trial,) = glob.glob(os.path.join(root, "demo", "*"))
    return trial


def _flat(prefix: str, value: Any, out: Dict[str, Any]) -> Dict[str, Any]:
    """Every tensor and number of a (nested) checkpoint section, by path."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}", item, out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flat(f"{prefix}.{i}", item, out)
    else:
        out[prefix] = value
    return out


def _differences(a: Dict[str, Any], b: Dict[str, Any]) -> list:
    keys = sorted(set(a) | set(b))
    bad = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if torch.is_tensor(x) and torch.is_tensor(y):
            same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            bad.append(key)
    return bad


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    straight = _run(str(tmp_path / "straight"), "trainer.max_steps=40")
    first = _run(str(tmp_path / "resumed"), "trainer.max_steps=20")
    last = os.path.join(first, "ckpts", "last.ckpt")
    assert read_training_checkpoint(last)["global_step"] == 20
    parsed = os.path.join(first, "configs", "parsed.yaml")
    assert main(["--config", parsed, "--train", f"resume={last}", "trainer.max_steps=40"]) == 0

    a = read_training_checkpoint(os.path.join(straight, "ckpts", "last.ckpt"))
    b = read_training_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 40
    params = _differences(_flat("state_dict", a["state_dict"], {}), _flat("state_dict", b["state_dict"], {}))
    optim = _differences(_flat("optimizer", a["optimizer_states"], {}), _flat("optimizer", b["optimizer_states"], {}))
    assert "state_dict.renderer.estimator.occs" in _flat("state_dict", a["state_dict"], {})  # the grid is compared
    assert not params, f"resumed run differs from the uninterrupted one in {params}"
    assert not optim, f"optimiser state differs in {optim}"


# ------------------------------------------------------------------------------------------
# the pieces: per-step seeds, step-numbered cameras, a deterministic grid refresh


def test_step_seeds_depend_on_seed_and_step_only():
    import random

    import numpy as np

    from threestudio_like.utils.rng import seed_global_generators, step_seed

    def draws(seed, step):
        seed_global_generators(seed, step)
        return torch.rand(4), np.random.rand(2), random.random()

    first = draws(0, 7)
    torch.rand(100), np.random.rand(5), random.random()  # whatever ran before
    again = draws(0, 7)
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]
    assert not torch.equal(draws(0, 8)[0], first[0]) and not torch.equal(draws(1, 7)[0], first[0])
    assert step_seed(0, 7, "global") != step_seed(0, 7, "cameras")
    assert 0 <= step_seed(-5, 2**70) < 2**63


def _camera_stream(start, n, **cfg):
    from threestudio_like.data.random_camera import RandomCameraDataModule

    torch.manual_seed(3)  # the run's seed, taken when the data module is built
    dataset = RandomCameraDataModule({"height": [8, 16], "width": [8, 16], "batch_size": [2, 1],
                                      "resolution_milestones": [5], **cfg}).train_dataset
    dataset.do_update_step(0, start, on_load_weights=True)  # what a resumed system passes on
    items = iter(dataset)
    torch.rand(10)  # the global generator plays no part
    return [dataset.collate([next(items)]) for _ in range(n)]


def test_cameras_follow_the_step_not_the_history():
    straight = _camera_stream(0, 8)
    resumed = _camera_stream(4, 4)  # a stream restarted at step 4 draws steps 4..7 again
    for a, b in zip(straight[4:], resumed, strict=True):
        assert torch.equal(a["c2w"], b["c2w"]) and torch.equal(a["light_positions"], b["light_positions"])
    assert not torch.equal(straight[0]["c2w"][:1], straight[1]["c2w"][:1])
    # the level follows each batch's own step (Lightning collates one step ahead of training)
    assert [b["height"] for b in straight] == [8] * 5 + [16] * 3
    assert [b["rays_o"].shape[0] for b in straight] == [2] * 5 + [1] * 3


def test_direct_collate_calls_still_vary():
    from threestudio_like.data.random_camera import RandomCameraDataModule

    dataset = RandomCameraDataModule({"height": 8, "width": 8}).train_dataset
    a, b = dataset.collate([None]), dataset.collate([{}])
    assert not torch.equal(a["c2w"], b["c2w"])


def _estimator(resolution=8):
    import nerfacc

    est = nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=resolution, levels=1)
    est.binaries.fill_(True)
    return est


def _ball(x):
    return (x.norm(dim=-1, keepdim=True) < 0.6).float() * 0.5 + 0.001


def test_grid_refresh_matches_nerfacc_without_repeated_cells():
    from threestudio_like.renderers.occupancy import update_occupancy_ema

    ours, theirs = _estimator(), _estimator()
    for step in (0, 1, 2):  # warm-up: every cell exactly once, the same draws
        torch.manual_seed(step)
        update_occupancy_ema(ours, step, _ball, warmup_steps=4)
        torch.manual_seed(step)
        theirs._update(step=step, occ_eval_fn=_ball, warmup_steps=4)
        assert torch.equal(ours.occs, theirs.occs) and torch.equal(ours.binaries, theirs.binaries)


def test_grid_refresh_takes_the_maximum_of_repeated_cells():
    from threestudio_like.renderers.occupancy import update_occupancy_ema

    est = _estimator(resolution=4)  # 64 cells: the uniform and occupied draws overlap
    est.occs.fill_(0.2)
    calls = []

    def probe(x):
        values = torch.rand(x.shape[0], 1)
        calls.append((x, values))
        return values

    torch.manual_seed(0)
    update_occupancy_ema(est, 10, probe, ema_decay=0.5, warmup_steps=0)
    (x, values), = calls
    cells = ((x + 1) / 2 * 4).floor().long()
    flat = cells[:, 0] * 16 + cells[:, 1] * 4 + cells[:, 2]
    assert len(set(flat.tolist())) < len(flat)  # some cells were drawn twice
    for cell in set(flat.tolist()):
        expected = max(0.1, values[flat == cell].max().item())
        assert est.occs[cell].item() == pytest.approx(expected)
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[flat] = False
    assert (est.occs[untouched] == 0.2).all()


def test_reference_prior_grid_is_the_same_whenever_it_is_built():
    from threestudio_like.guidance.reference_object import ReferenceObjectGuidance

    grids = []
    for seed in (0, 1):
        guidance = ReferenceObjectGuidance({"resolution": 16, "num_samples_per_ray": 32})
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        guidance._prepare_grid(torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), state)  # the step's own draws are not shifted
        grids.append(guidance.renderer.estimator.occs.clone())
    assert torch.equal(*grids)
