"""End-to-end CLI runs on the reference-object demo at toy size: trial layout, resume,
NaN stop, Ctrl-C, test/export from a checkpoint, and early config errors."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.guidance.reference_object import ReferenceObjectGuidance
from threestudio_like.run_status import read_status

from conftest import TINY_OVERRIDES


def _train(tmp_path, *extra):
    args = ["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES, *extra]
    return main(args)


def _trial(tmp_path):
    trials = glob.glob(os.path.join(str(tmp_path), "demo", "*"))
    assert len(trials) == 1, trials
    return trials[0]


def _ckpt(trial):
    return torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)


def test_train_writes_the_trial_layout(tmp_path):
    assert _train(tmp_path) == 0
    trial = _trial(tmp_path)
    assert os.path.basename(trial).startswith("reference-object@")
    for rel in ("configs/parsed.yaml", "cmd.txt", "ckpts/last.ckpt", "save/it4-test.mp4",
                "save/it2-0.png", "save/it4-export/model.obj", "save/it4-export/model.glb",
                "save/it4-export/model.ply", "logs/csv/metrics.csv"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = _ckpt(trial)
    assert ckpt["global_step"] == 4
    assert not [k for k in ckpt["state_dict"] if "guidance" in k]
    assert not glob.glob(os.path.join(trial, "ckpts", "*.tmp"))


def test_resume_continues_step_and_optimiser(tmp_path):
    assert _train(tmp_path) == 0
    trial = _trial(tmp_path)
    first = _ckpt(trial)
    adam_first = first["optimizer_states"][0]["state"]
    assert int(adam_first[0]["step"]) == 4
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    assert main(["--config", parsed, "--train", f"resume={last}", "trainer.max_steps=6"]) == 0
    second = _ckpt(trial)
    assert second["global_step"] == 6
    # Adam's per-parameter step counter continued instead of restarting at 0
    assert int(second["optimizer_states"][0]["state"][0]["step"]) == 6
    assert os.path.isfile(os.path.join(trial, "save", "it6-test.mp4"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    original = ReferenceObjectGuidance.__call__

    def poisoned(self, rgb, *args, **kwargs):
        out = original(self, rgb, *args, **kwargs)
        if self.global_step >= 3:
            out["loss_sds"] = out["loss_sds"] * float("nan")
        return out

    monkeypatch.setattr(ReferenceObjectGuidance, "__call__", poisoned)
    assert _train(tmp_path, "trainer.max_steps=10") == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "loss_sds" in err and "last.ckpt" in err
    ckpt = _ckpt(_trial(tmp_path))
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_ctrl_c_saves_then_exits(tmp_path, monkeypatch):
    original = ReferenceObjectGuidance.__call__

    def interrupted(self, rgb, *args, **kwargs):
        if self.global_step >= 3:
            raise KeyboardInterrupt
        return original(self, rgb, *args, **kwargs)

    monkeypatch.setattr(ReferenceObjectGuidance, "__call__", interrupted)
    with pytest.raises(SystemExit):
        _train(tmp_path, "trainer.max_steps=10", "checkpoint.every_n_train_steps=100")
    ckpt = _ckpt(_trial(tmp_path))
    assert ckpt["global_step"] == 3


def test_test_and_export_from_checkpoint(tmp_path):
    assert _train(tmp_path) == 0
    trial = _trial(tmp_path)
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    last = os.path.join(trial, "ckpts", "last.ckpt")
    for f in glob.glob(os.path.join(trial, "save", "it4-*")):
        if os.path.isfile(f):
            os.remove(f)
    assert main(["--config", parsed, "--test", f"resume={last}", "system.test_formats=[mp4,gif]"]) == 0
    assert os.path.isfile(os.path.join(trial, "save", "it4-test.mp4"))
    assert os.path.isfile(os.path.join(trial, "save", "it4-test.gif"))
    assert main(["--config", parsed, "--export", f"resume={last}"]) == 0
    import trimesh

    mesh = trimesh.load(os.path.join(trial, "save", "it4-export", "model.ply"), force="mesh", process=False)
    assert len(mesh.faces) > 0 and mesh.visual.kind == "vertex"
    status = read_status(trial)
    assert set(status["outputs"]["meshes"]) == {"glb", "obj", "ply", "usdz"}
    assert status["export"]["cleanup"]["faces_after"] == len(mesh.faces)
    assert status["export"]["level"]["source"] == "auto"  # the tiny runs' threshold=auto was crossed
    assert not any("isosurface" in note for note in status["notes"])


def test_export_with_a_threshold_never_crossed_still_finishes(tmp_path, capsys):
    """A density that never reaches the configured level is exported at a fitted level; the log
    and the run's status say so, and every format is written."""
    assert _train(tmp_path, "system.geometry.isosurface_threshold=1000000") == 0
    trial = _trial(tmp_path)
    out = capsys.readouterr().out
    assert "note: the density never crosses the isosurface threshold 1e+06" in out
    status = read_status(trial)
    assert status["state"] == "finished" and status["exit_code"] == 0
    assert status["export"]["level"]["source"] in ("opacity-matched", "positive-mean")
    assert any("never crosses the isosurface threshold" in note for note in status["notes"])
    for fmt in ("glb", "obj", "ply", "usdz"):
        assert os.path.isfile(os.path.join(trial, status["outputs"]["meshes"][fmt])), fmt


def test_config_errors_fail_before_any_work(tmp_path, capsys):
    assert _train(tmp_path, "system.guidance.resolutin=3") == 2
    assert "Did you mean 'system.guidance.resolution'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(str(tmp_path), "demo"))
    assert main(["--config", "demo.yaml", "--export", f"exp_root_dir={tmp_path}"]) == 2
    assert "resume=" in capsys.readouterr().err


def test_image_grid_keeps_colours(tmp_path):
    import imageio.v2 as imageio

    from threestudio_like.utils.saving import save_image_grid

    rgb = torch.zeros(4, 4, 3)
    rgb[..., 0] = 0.5
    save_image_grid(tmp_path / "g.png", [rgb, torch.ones(4, 4, 1)])
    img = imageio.imread(tmp_path / "g.png")
    assert img.shape == (4, 8, 3)
    assert abs(int(img[0, 0, 0]) - 128) <= 1 and img[0, 0, 1] == 0 and img[0, 4, 1] == 255
