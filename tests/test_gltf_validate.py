"""Exported GLBs pass the Khronos glTF validator (npm ``gltf-validator``) with 0 errors.

The mesh exporter runs on a tiny untrained density blob (the demo recipes' starting shape, a
32^3 isosurface lattice); the validator's warnings are listed in the test's output. A damaged
GLB must be reported with errors, so the check can fail. Skipped, saying why, where Node.js or
the pinned package is missing (``make preview-assets`` installs it).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from threestudio_like.preview import assets
from threestudio_like.preview.validate import unavailable_reason, validate_gltf

REASON = unavailable_reason()
needs_validator = pytest.mark.skipif(REASON is not None, reason=f"glTF validator unavailable: {REASON}")


def export_tiny_demo_mesh(out_dir: Path, **exporter: object) -> Path:
    """The project's mesh exporter (``exporter`` settings) on an untrained hash-grid blob; returns the GLB."""
    from threestudio_like import find

    geometry = find("hashgrid-implicit-volume")(
        {"density_bias": "blob_magic3d", "density_blob_scale": 10.0, "density_blob_std": 0.5,
         "isosurface_resolution": 32, "isosurface_threshold": 5.0,
         "pos_encoding_config": {"n_levels": 4, "log2_hashmap_size": 10}, "mlp_network_config": {"n_neurons": 8}})
    written = find("mesh-exporter")(dict(exporter))(geometry, find("no-material")({}), str(out_dir))
    (glb,) = [Path(p) for p in written if p.endswith(".glb")]
    return glb


@needs_validator
def test_exported_glb_has_no_validation_errors(tmp_path):
    glb = export_tiny_demo_mesh(tmp_path / "export")
    report = validate_gltf(glb)
    print(report.summary())  # the warnings, for the record (pytest -s, or the failure output)
    assert report.raw["info"]["totalTriangleCount"] > 100
    assert report.errors == 0, report.summary()
    assert report.counts["warning"] == len(report.issues("warning"))


@needs_validator
def test_a_normal_mapped_glb_has_no_validation_errors(tmp_path):
    """TANGENTs (unit, w = +-1) and the normal texture pass the validator's checks."""
    glb = export_tiny_demo_mesh(tmp_path / "export", normal_map=True, texture_size=128)
    report = validate_gltf(glb)
    print(report.summary())
    assert report.raw["info"]["materialCount"] == 1 and report.raw["info"]["hasTextures"]
    assert report.errors == 0 and report.counts["warning"] == 0, report.summary()


@needs_validator
def test_a_damaged_glb_is_reported(tmp_path):
    glb = export_tiny_demo_mesh(tmp_path / "export")
    data = bytearray(glb.read_bytes())
    data[12:16] = (len(data) * 4).to_bytes(4, "little")  # the JSON chunk claims more bytes than there are
    bad = tmp_path / "bad.glb"
    bad.write_bytes(bytes(data))
    report = validate_gltf(bad)
    assert report.errors > 0 and report.issues("error"), report.summary()
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a model")
    assert validate_gltf(junk).issues("error")[0]["code"] == "UNREADABLE_GLTF"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    cli = subprocess.run([sys.executable, "launch.py", "--validate-gltf", str(glb), str(bad)], check=False,
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr
    assert f"{glb}: 0 errors" in cli.stdout and f"{bad}: {report.errors} errors" in cli.stdout


def test_without_the_package_the_reason_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.ENV_WEB_DIR, str(tmp_path / "empty"))
    reason = unavailable_reason()
    assert reason is not None and ("make preview-assets" in reason or "Node.js" in reason)
    glb = tmp_path / "x.glb"
    glb.write_bytes(b"glTF")
    with pytest.raises(assets.WebAssetsError, match="cannot validate"):
        validate_gltf(glb)
    with pytest.raises(FileNotFoundError, match="no glTF file"):
        validate_gltf(tmp_path / "missing.glb")


@needs_validator
def test_depthfusion_scene_glb_has_no_validation_errors(tmp_path):
    """The 360-degree scene mesh goes through the same GLB writer (double-sided material)."""
    import numpy as np

    from threestudio_like.scenes import depthfusion as DF

    rows, cols = 16, 32
    rgb = np.random.default_rng(0).integers(0, 255, (rows, cols, 3), dtype=np.uint8)
    depth16 = np.full((rows, cols), 30000, np.uint16)
    mesh = DF.sphere_mesh(rgb, depth16, 0.5, 5.0)
    report = validate_gltf(DF.save_glb(mesh, str(tmp_path / "scene.glb")))
    print(report.summary())
    assert report.errors == 0 and report.counts["warning"] == 0, report.summary()
