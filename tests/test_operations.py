"""Operating a run: one device per run, trainer overrides, logs that survive resuming, the active
backends said and recorded, and no trial folder left by a run that could not start."""
from __future__ import annotations

import csv
import glob
import os

import pytest

from threestudio_like.cli import main
from threestudio_like.run_status import read_status

from conftest import TINY_OVERRIDES


def _train(tmp_path, *extra):
    return main(["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES, *extra])


def _trial(tmp_path):
    (trial,) = glob.glob(os.path.join(str(tmp_path), "demo", "*"))
    return trial


@pytest.mark.parametrize("override", ["trainer.devices=2", "trainer.devices=-1", "trainer.devices=[0,1]",
                                      "trainer.num_nodes=2"])
def test_more_than_one_device_is_refused_with_the_batch_hint(tmp_path, capsys, override):
    assert _train(tmp_path, override) == 2
    err = capsys.readouterr().err
    assert "one run trains on one device" in err and "--batch jobs.yaml --gpus 0,1" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "demo")


def test_several_gpu_ids_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["--config", "demo.yaml", "--train", "--gpu", "0,1", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES]) == 2
    assert "--batch jobs.yaml --gpus 0,1" in capsys.readouterr().err
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def test_trainer_overrides_take_precedence_over_the_defaults(tmp_path, capsys):
    assert _train(tmp_path / "a", "trainer.logger=false", "trainer.enable_progress_bar=true", "trainer.devices=1") == 0
    trial = _trial(tmp_path / "a")
    assert not os.path.exists(os.path.join(trial, "logs"))  # logger=false: no logs
    assert read_status(trial)["state"] == "finished"
    assert _train(tmp_path / "b", "trainer.callbacks=[]") == 2
    assert "trainer.callbacks" in capsys.readouterr().err


def test_resume_keeps_every_attempts_rows(tmp_path):
    assert _train(tmp_path, "trainer.max_steps=12", "checkpoint.every_n_train_steps=4") == 0
    trial = _trial(tmp_path)
    parsed, last = os.path.join(trial, "configs", "parsed.yaml"), os.path.join(trial, "ckpts", "last.ckpt")
    assert main(["--config", parsed, "--train", f"resume={last}", "trainer.max_steps=20"]) == 0
    with open(os.path.join(trial, "logs", "csv", "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = {int(a): sorted(int(r["step"]) for r in rows if r["attempt"] == a) for a in {r["attempt"] for r in rows}}
    assert set(steps) == {1, 2}, steps
    assert steps[1][0] == 0 and steps[1][-1] == 11 and steps[2][0] == 12 and steps[2][-1] == 19, steps


def test_backends_are_printed_and_recorded(tmp_path, capsys):
    assert _train(tmp_path) == 0
    out = capsys.readouterr().out
    assert "Backends: device cpu, precision 32-true, hash grid torch (no CUDA), ray marching torch (no CUDA)" in out
    backends = read_status(_trial(tmp_path))["backends"]
    assert backends["hash_grid"] == "torch (no CUDA)" and backends["ray_marching"] == "torch (no CUDA)"


def test_tensorboard_gets_validation_grids_and_the_turntable(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _train(tmp_path) == 0
    events = EventAccumulator(os.path.join(_trial(tmp_path), "logs", "tb"), size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert any(t.startswith("validation/") for t in images) and any(t.startswith("turntable") for t in images), images
    assert "train/loss" in events.Tags()["scalars"]


def test_a_run_that_cannot_start_leaves_no_trial_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    args = ["--config", "mvdream-sd21.yaml", "--train", "prompt=a corgi", f"exp_root_dir={tmp_path / 'out'}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache",
            f"system.guidance.pretrained_model_name_or_path={tmp_path / 'no-such-weights'}"]
    assert main(args) == 2
    assert "no-such-weights" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "out" / "mvdream-sd21" / "*"))


def test_gallery_draws_the_loss_of_every_attempt(tmp_path):
    from threestudio_like.batch.gallery import loss_svg, read_loss_curve

    metrics = tmp_path / "metrics.csv"
    rows = ["epoch,step,train/loss,attempt"] + [f"0,{s},{10.0 / (s + 1)},1" for s in range(12)] \
        + [f"0,{s},{10.0 / (s + 1)},2" for s in range(8, 20)] + ["0,20,nan,2"]
    metrics.write_text("\n".join(rows) + "\n")
    curve = read_loss_curve(metrics)
    assert len(curve) == 24 and {p[2] for p in curve} == {1, 2} and curve[-1][0] == 19
    svg = loss_svg(curve)
    assert svg.count("<polyline") == 2 and "steps 0 to 19" in svg
    assert len(read_loss_curve(metrics, max_points=5)) <= 5


def test_sigterm_is_never_a_success(tmp_path):
    """SIGTERM while training: the checkpoint is saved, the exit status is 143 and the status
    says interrupted (supervisors and && chains must not read it as success)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    args = [sys.executable, "-m", "threestudio_like.cli", "--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}",
            *[o for o in TINY_OVERRIDES if not o.startswith("trainer.max_steps")], "trainer.max_steps=100000"]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    status = None
    while time.time() < deadline:
        trials = glob.glob(os.path.join(str(tmp_path), "demo", "*"))
        status = read_status(trials[0]) if trials else None
        if status and (status.get("step") or 0) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    trial = _trial(tmp_path)
    status = read_status(trial)
    assert status["state"] == "interrupted" and status["exit_code"] == 143
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt")) and "resume=" in err


@pytest.mark.parametrize("override, problem", [
    ("system.loss.lambda_sds=.nan", "weighted total loss"),
    ("system.loss.lambda_sds=.inf", "weighted total loss"),
    ("system.optimizer.args.lr=.inf", "non-finite"),
])
def test_a_non_finite_state_is_never_the_last_good_checkpoint(tmp_path, capsys, override, problem):
    import torch

    assert _train(tmp_path, "checkpoint.every_n_train_steps=1", "trainer.max_steps=6", override) == 1
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    last = os.path.join(_trial(tmp_path), "ckpts", "last.ckpt")
    if os.path.exists(last):  # a checkpoint from before the failure: finite
        state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert ("none saved yet" in err) == (not os.path.exists(last))


def test_name_cannot_leave_the_output_root(tmp_path):
    from threestudio_like.config import load_config

    for name in ("../../escape", "/absolute/escape"):
        trial = load_config("demo.yaml", [f"name={name}", f"exp_root_dir={tmp_path}"]).trial_dir
        assert os.path.realpath(trial).startswith(os.path.realpath(tmp_path) + os.sep), trial


def test_resume_applies_a_changed_learning_rate(tmp_path, capsys):
    import torch

    assert _train(tmp_path, "trainer.max_steps=4", "checkpoint.every_n_train_steps=2") == 0
    trial = _trial(tmp_path)
    parsed, last = os.path.join(trial, "configs", "parsed.yaml"), os.path.join(trial, "ckpts", "last.ckpt")
    capsys.readouterr()
    assert main(["--config", parsed, "--train", f"resume={last}", "trainer.max_steps=6",
                 "system.optimizer.args.lr=0.001"]) == 0
    assert "resumed with system.optimizer lr=0.001" in capsys.readouterr().out
    groups = torch.load(last, map_location="cpu", weights_only=True)["optimizer_states"][0]["param_groups"]
    assert all(abs(g["lr"] - 0.001) < 1e-12 for g in groups)


def test_a_failed_resume_keeps_the_trials_config(tmp_path, capsys):
    assert _train(tmp_path) == 0
    trial = _trial(tmp_path)
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    before = open(parsed).read()
    last = os.path.join(trial, "ckpts", "last.ckpt")
    # another geometry size: the checkpoint cannot load into this system
    try:
        code = main(["--config", "demo.yaml", "--train", f"resume={last}", *TINY_OVERRIDES,
                     "system.geometry.pos_encoding_config.n_levels=5"])
    except RuntimeError:  # the load's own error, where no earlier check catches it
        code = 1
    assert code != 0
    assert open(parsed).read() == before


@pytest.mark.parametrize("where", ["turntable", "export"])
def test_a_full_disk_outside_checkpoints_is_one_clear_message(tmp_path, capsys, monkeypatch, where):
    import errno

    from threestudio_like.utils import saving
    from threestudio_like.export import mesh_exporter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "save/it4-test.mp4")

    if where == "turntable":
        monkeypatch.setattr(saving, "save_video", full)
    else:
        monkeypatch.setattr(mesh_exporter.MeshExporter, "__call__", full)
    assert _train(tmp_path) == 1
    err = capsys.readouterr().err
    assert "no space left on the device while writing save/it4-test.mp4" in err and "Traceback" not in err
    trial = _trial(tmp_path)
    assert "is intact" in err and os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    assert read_status(trial)["error"]["category"] == "disk-full"


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--workers", "-2"], ["--slurm-max-parallel", "0"]])
def test_batch_refuses_zero_workers(tmp_path, capsys, flags):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a corgi\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch", str(jobs), "--config", "demo.yaml", *flags])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_export_from_a_trial_needs_no_repeated_inputs(tmp_path, capsys):
    """``--export resume=<trial>/ckpts/last.ckpt --config <recipe>`` starts from the trial's own
    config: the recipe's required image need not be passed again."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 120, 60, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cube.png")
    tiny = ["data.height=8", "data.width=8", "data.random_camera.height=8", "data.random_camera.width=8",
            "data.random_camera.eval_height=8", "data.random_camera.eval_width=8", "data.random_camera.n_val_views=1",
            "data.random_camera.n_test_views=2", "system.guidance.resolution=8", "system.renderer.num_samples_per_ray=16",
            "system.guidance.num_samples_per_ray=16", "system.geometry.isosurface_resolution=16",
            "system.exporter.texture_size=64",
            "system.geometry.isosurface_threshold=auto", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "checkpoint.every_n_train_steps=2", "system.test_fps=4"]
    assert main(["--config", "demo-sjc.yaml", "--train", f"image={tmp_path / 'cube.png'}",
                 f"exp_root_dir={tmp_path / 'out'}", *tiny]) == 0
    (trial,) = glob.glob(str(tmp_path / "out" / "demo-sjc" / "*"))
    os.remove(os.path.join(trial, "save", "it2-export", "model.ply"))
    capsys.readouterr()
    assert main(["--config", "demo-sjc.yaml", "--export", f"resume={trial}/ckpts/last.ckpt"]) == 0
    assert "starting from its own config" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(trial, "save", "it2-export", "model.ply"))
