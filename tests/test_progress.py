"""Progress lines on every long phase: time-throttled, with an ETA, also in status.json."""
from __future__ import annotations

import glob
import io
import json
import os

from threestudio_like.cli import main
from threestudio_like.utils import progress as progress_mod
from threestudio_like.utils.progress import Progress, format_duration, track

from conftest import TINY_OVERRIDES


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_throttled_to_every_n_seconds_and_carry_an_eta(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress_mod.time, "time", clock)
    out = io.StringIO()
    p = Progress("turntable: frame", 40, every=10.0, stream=out)
    for _ in range(40):
        clock.now += 1.0  # one item per second: a line every 10 items
        p.update()
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "turntable: frame ..."
    assert lines[1:] == [
        "turntable: frame  10/40   25%  10s  ETA 30s",
        "turntable: frame  20/40   50%  20s  ETA 20s",
        "turntable: frame  30/40   75%  30s  ETA 10s",
        "turntable: frame  40/40  100%  40s",
        "turntable: frame  40/40  100%  40s",
    ][: len(lines) - 1]
    assert len(lines) == 6  # start, three throttled lines, the 40th (10 s after the 30th), close


def test_every_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress_mod.ENV_EVERY, "0")
    assert progress_mod.default_every() == 0.0
    monkeypatch.setenv(progress_mod.ENV_EVERY, "soon")
    assert progress_mod.default_every() == 10.0
    assert format_duration(42) == "42s" and format_duration(185) == "3m05s" and format_duration(3720) == "1h02m"


def test_track_ticks_the_run_status(tmp_path):
    from threestudio_like.run_status import RunStatus

    status = RunStatus(tmp_path / "status.json", "sample", min_interval=0.0)
    with progress_mod.use_status(status):
        assert list(track(range(3), "sample: DDIM step", every=100.0)) == [0, 1, 2]
    data = json.loads((tmp_path / "status.json").read_text())
    assert data["progress"] == {"done": 3, "total": 3}


def test_sample_prints_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.ENV_EVERY, "0")
    args = ["--config", "mvdream-sd21.yaml", "--sample", "prompt=a corgi", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", "sample.steps=3",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sample: DDIM step  1/3" in out and "sample: DDIM step  3/3  100%" in out
    assert "ETA" in out


def test_training_eta_counts_the_turntable_and_each_phase_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.ENV_EVERY, "0")
    args = ["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES,
            "trainer.max_steps=4", "trainer.val_check_interval=2", "data.n_test_views=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "(then turntable ~" in out  # validation at step 2 timed the views
    assert "turntable: frame  3/3  100%" in out
    (trial,) = glob.glob(str(tmp_path / "demo" / "*"))
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    capsys.readouterr()
    assert main(["--config", "demo.yaml", "--validate", f"resume={trial}/ckpts/last.ckpt"]) == 0
    assert "validate: view  1/1  100%" in capsys.readouterr().out


def test_export_prints_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.ENV_EVERY, "0")
    args = ["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES, "trainer.max_steps=2",
            "system.exporter_type=''"]
    assert main(args) == 0
    (trial,) = glob.glob(str(tmp_path / "demo" / "*"))
    capsys.readouterr()
    assert main(["--config", "demo.yaml", "--export", f"resume={trial}/ckpts/last.ckpt",
                 "system.exporter_type=mesh-exporter", "system.exporter.formats=[glb,obj]"]) == 0
    out = capsys.readouterr().out
    assert "export: phase ..." in out and "export: phase  6/6  100%" in out and "ETA" in out
