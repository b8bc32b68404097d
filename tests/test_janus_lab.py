"""The reference-object lab: Janus appears and disappears where the mechanism says it must."""
from __future__ import annotations

import math

import pytest
import torch

from threestudio_like.reference import modes as M
from threestudio_like.janus.lab import LAB_SETTINGS, TurntableLab, lab_markdown, run_lab_benchmark, turntable_views
from threestudio_like.janus.measures import count_arcs, janus_measures
from threestudio_like.janus.stats import wilson_interval


def test_count_arcs_on_a_circle():
    assert count_arcs([0, 0, 0]) == 0
    assert count_arcs([1, 1, 1]) == 1
    assert count_arcs([1, 0, 0, 1]) == 1  # wraps around
    assert count_arcs([1, 0, 1, 0, 0, 0]) == 2
    assert count_arcs([1, 0, 1, 0, 0, 0], min_gap=2) == 1
    assert count_arcs([0, 1, 1, 0, 0, 1, 0, 0, 1, 0]) == 3


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(3, 3)
    assert hi == 1.0 and lo == pytest.approx(0.4385, abs=1e-3)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_view_bins_follow_threestudio_thresholds():
    az = torch.tensor([0.0, 44.0, 46.0, -90.0, 134.0, 136.0, -170.0, 360.0])
    assert M.view_bin(az).tolist() == [0, 0, 1, 1, 1, 2, 2, 0]


def test_measures_on_the_truth_and_on_a_rotated_two_faced_copy():
    lab = TurntableLab()
    truth = lab.measure(lab.texture)
    assert truth["face_arcs"] == 1 and truth["back_front_fraction"] == 0.0
    rotated = lab.measure(torch.roll(lab.texture, 7, dims=0))
    assert rotated["face_arcs"] == 1 and rotated["back_front_fraction"] == 0.0  # rotation-invariant
    n = lab.texture.shape[0]
    janus = lab.texture.clone()
    janus[n // 2 - 4: n // 2 + 5] = lab.texture[list(range(-4, 5))]  # the face pasted on the back
    m = janus_measures(turntable_views(janus, lab.window), lab.truth)
    assert m["face_arcs"] == 2 and m["back_front_fraction"] > 0.1


def test_lab_orderings_over_three_seeds():
    """Unconditioned + CFG: Janus in most seeds; camera-conditioned and multi-view-joint: one
    face in every seed; view-binned: never more Janus than unconditioned."""
    torch.set_num_threads(1)
    settings = [s for s in LAB_SETTINGS if s[0] != "unconditioned, no CFG"]
    result = run_lab_benchmark((0, 1, 2), settings=settings)
    print(lab_markdown(result))
    s = result["summary"]
    assert s["unconditioned"]["janus"]["k"] >= 2
    assert all(a == 1 for a in s["camera-conditioned"]["face_arcs"])
    assert all(a == 1 for a in s["multi-view-joint"]["face_arcs"])
    assert s["view-binned"]["face_arcs_mean"]["mean"] <= s["unconditioned"]["face_arcs_mean"]["mean"]
    assert s["view-binned"]["janus"]["k"] <= s["unconditioned"]["janus"]["k"]
    lo, hi = s["unconditioned"]["janus"]["lo"], s["unconditioned"]["janus"]["hi"]
    assert 0 <= lo <= hi <= 1 and not math.isnan(lo)


def test_lab_writes_its_result_to_a_file_by_default(tmp_path, monkeypatch, capsys):
    import json

    from threestudio_like.janus.lab import lab_main

    monkeypatch.chdir(tmp_path)
    assert lab_main(["--seeds", "0", "steps=2"]) == 0
    saved = json.loads((tmp_path / "outputs" / "janus-lab" / "lab.json").read_text())
    assert saved["provenance"]["seeds"] == "0" and "no diffusion weights" in saved["provenance"]["note"]
    assert saved["summary"] and (tmp_path / "outputs" / "janus-lab" / "lab.md").read_text().startswith("|")
    assert "written: outputs/janus-lab/lab.json" in capsys.readouterr().out
