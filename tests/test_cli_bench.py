"""``launch.py --bench NAME``: arguments forwarded to the benchmark, unknown names refused; the
CLI's error handling for unsafe checkpoints; the ``--sample`` help."""
from __future__ import annotations

import pytest

from threestudio_like import cli
from threestudio_like.errors import UnsafeCheckpointError

from conftest import TINY_OVERRIDES


def _recorder(calls, code=0):
    def fake(argv=None, prog=None):
        calls.append((list(argv), prog))
        return code

    return fake


def test_bench_janus_forwards_every_argument(monkeypatch):
    from threestudio_like.janus import report

    calls = []
    monkeypatch.setattr(report, "main", _recorder(calls))
    args = ["--suite", "suite.json", "--configs", "a.yaml,b.yaml", "--seeds", "0,1,2", "--out", "rep",
            "trainer.max_steps=2"]
    assert cli.main(["--bench", "janus", *args]) == 0
    assert cli.main([*args[:2], "--bench=janus", *args[2:]]) == 0
    assert calls == [(args, "launch.py --bench janus")] * 2


def test_bench_lab_forwards_and_runs(monkeypatch, capsys):
    from threestudio_like.janus import lab

    calls = []
    with monkeypatch.context() as m:
        m.setattr(lab, "lab_main", _recorder(calls, code=3))
        assert cli.main(["--bench", "janus-lab", "--seeds", "0", "steps=5"]) == 3
    assert calls == [(["--seeds", "0", "steps=5"], "launch.py --bench janus-lab")]
    # and for real, at toy size (a second)
    assert cli.main(["--bench", "lab", "--seeds", "0", "steps=3", "n_other=2"]) == 0
    out = capsys.readouterr().out
    assert "| multi-view-joint |" in out and "Wilson" in out


def test_unknown_bench_lists_the_available_ones(capsys):
    assert cli.main(["--bench", "janos"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'janos'" in err and "janus" in err and "lab" in err
    assert cli.main(["--bench"]) == 2
    assert "needs a benchmark name" in capsys.readouterr().err


def test_batch_help_shows_the_queue_options(capsys):
    assert cli.main(["--batch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--gpus" in out and "--retry-failed" in out and "--workers" in out


def test_sample_help_mentions_image_conditioned_recipes():
    text = " ".join(cli.build_parser().format_help().split())
    assert "prompt= or image=" in text and "--bench janus" in text


def _unsafe(*args, **kwargs):
    raise UnsafeCheckpointError("the checkpoint holds Python objects")


def test_unsafe_checkpoints_are_reported_not_raised(monkeypatch, capsys, tmp_path):
    from threestudio_like.models import loader
    from threestudio_like.sampling import run as sampling
    from threestudio_like.systems.sds import SDSSystem

    monkeypatch.setattr(loader, "convert_checkpoint", _unsafe)
    assert cli.main(["--convert", "mvdream", "x.pt", str(tmp_path / "out")]) == 2
    assert "error: the checkpoint holds Python objects" in capsys.readouterr().err

    monkeypatch.setattr(sampling, "run_sample", _unsafe)
    assert cli.main(["--config", "demo.yaml", "--sample", f"exp_root_dir={tmp_path}"]) == 2
    assert "error: the checkpoint holds Python objects" in capsys.readouterr().err

    monkeypatch.setattr(SDSSystem, "training_step", _unsafe)
    assert cli.main(["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES]) == 2
    assert "error: the checkpoint holds Python objects" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
