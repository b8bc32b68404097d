"""Real-run Janus metrics on synthetic turntables with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from threestudio_like.janus.metrics import aggregate, asset_metrics, view_classification
from threestudio_like.janus.synthetic import synthetic_head_turntable

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def detector():
    from threestudio_like.janus.metrics import HaarFaceDetector

    return HaarFaceDetector()


@pytest.fixture(scope="module")
def heads():
    return {k: synthetic_head_turntable(36, 128, f) for k, f in (("one", (0.0,)), ("two", (0.0, 180.0)))}


def test_one_face_vs_two_faces(detector, heads):
    one = asset_metrics(heads["one"], "a head", detector=detector)
    two = asset_metrics(heads["two"], "a head", detector=detector)
    print({k: (one[k], two[k]) for k in ("face_arcs", "second_peak_ratio")})
    assert one["face_arcs"] == 1 and one["front_detected"] and one["janus_face"] is False
    assert two["face_arcs"] == 2 and two["janus_face"] is True
    assert one["second_peak_ratio"] < 1.0 < two["second_peak_ratio"]
    agg = aggregate([one, two])
    assert agg["janus_face"]["k"] == 1 and agg["janus_face"]["n"] == 2
    assert 0 < agg["janus_face"]["lo"] < 0.5 < agg["janus_face"]["hi"] < 1


def test_pluggable_view_classifier():
    labels = ["front" if abs(((i * 10 + 180) % 360) - 180) < 45 else "side" for i in range(36)]
    assert view_classification(labels)["janus_view"] is False
    janus = ["front" if abs(((i * 10 + 180) % 360) - 180) < 45 or abs(((i * 10) % 360) - 180) < 45 else "side"
             for i in range(36)]
    r = view_classification(janus)
    assert r["janus_view"] is True and r["back_as_front_rate"] > 0.5 and r["front_arcs"] == 2
    m = asset_metrics(np.zeros((36, 32, 32, 3), np.float32), "x", classifier=lambda v, s: janus)
    assert m["janus_view"] is True
