"""The demo-quality benchmark's measures: the lattice IoU of the object's own density is 1, and
a level the density never reaches counts as no surface (IoU 0) with the fitted level reported."""
from __future__ import annotations

import os
import sys

import pytest
from conftest import REPO_ROOT

from threestudio_like import find
from threestudio_like.reference.object import ReferenceObjectGeometry

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import bench_demo_quality as B


def test_lattice_iou_of_the_object_itself_is_one_at_its_surface_level():
    ious = B.lattice_ious(ReferenceObjectGeometry({}), levels=(100.0, 199.0))
    assert ious["100"] == pytest.approx(1.0)
    assert ious["199"] < 0.9  # deep inside only: a level inside the object loses volume
    assert ious["recall5"] == pytest.approx(1.0) and 0.5 < ious["precision5"] <= 1.0


def _blob(threshold: float):
    return find("hashgrid-implicit-volume")(
        {"isosurface_resolution": 24, "isosurface_threshold": threshold,
         "pos_encoding_config": {"n_levels": 4, "log2_hashmap_size": 10}, "mlp_network_config": {"n_neurons": 8}}
    )


def test_a_missed_level_is_no_surface_and_reports_the_fitted_one():
    missed = B.measure(_blob(1e6))
    assert missed["iou"] == 0.0 and missed["surface"] is False
    assert 0.0 < missed["fitted_iou"] < 1.0 and missed["fitted_level"] < 1e6
    crossed = B.measure(_blob(5.0))
    assert crossed["surface"] is True and 0.0 < crossed["iou"] < 1.0
