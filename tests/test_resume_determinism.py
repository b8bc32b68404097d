"""Resuming is exact: a run interrupted at a checkpoint and resumed ends bit-identical (every
parameter, buffer and optimiser moment) to the run that was never interrupted, on CPU.

The tiny demo refreshes its occupancy grid every 4 steps (so right at the checkpoint step) and
leaves the grid's warm-up early (so the refresh draws random cells), and validates at the
checkpoint step as the full demo does: every source of randomness around the save point is live.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict

import torch

from conftest import TINY_OVERRIDES
from threestudio_like.cli import main
from threestudio_like.models.checkpoints import read_training_checkpoint

RESUME_DEMO = [
    *TINY_OVERRIDES,
    "data.batch_size=2",
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
