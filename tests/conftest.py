"""Shared test set-up: small thread counts under xdist, quiet libraries, tiny configs."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=UserWarning)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long runs, only with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# Overrides that turn the demo recipe into a seconds-long smoke run.
TINY_OVERRIDES = [
    "data.height=16",
    "data.width=16",
    "data.resolution_milestones=[]",
    "data.batch_size=1",
    "data.eval_height=16",
    "data.eval_width=16",
    "data.n_val_views=1",
    "data.n_test_views=4",
    "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.mlp_network_config.n_neurons=8",
    "system.geometry.isosurface_resolution=32",
    "system.exporter.texture_size=64",
    "system.geometry.isosurface_threshold=auto",
    "system.renderer.num_samples_per_ray=32",
    "system.guidance.resolution=16",
    "system.guidance.num_samples_per_ray=32",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=2",
    "system.test_fps=4",
    "trainer.log_every_n_steps=1",
]


def known_answer_ious(trial: str, step: int = 300):
    """Volume IoU at 64^3 against the reference object: of a trial's exported mesh, and of the
    untrained density blob the recipes start from (the bar a real reconstruction must clear). The
    PLY is written +Y up (the exporter's default ``up_axis``): it is turned back into the world."""
    import trimesh

    from threestudio_like import find
    from threestudio_like.export.frames import to_world_frame
    from threestudio_like.export.mesh_exporter import MeshExporter, volume_iou
    from threestudio_like.reference.object import ReferenceObjectGeometry

    truth = ReferenceObjectGeometry({}).occupancy
    path = os.path.join(trial, "save", f"it{step}-export", "model.ply")
    mesh = trimesh.load(path, force="mesh", process=False)
    mesh.vertices = to_world_frame(np.asarray(mesh.vertices), "y")
    untrained = find("hashgrid-implicit-volume")(
        {"density_bias": "blob_magic3d", "density_blob_scale": 10.0, "density_blob_std": 0.5,
         "isosurface_resolution": 64, "isosurface_threshold": 5.0,
         "pos_encoding_config": {"n_levels": 12, "log2_hashmap_size": 16, "per_level_scale": 1.3}}
    )
    blob = MeshExporter({}).build_mesh(untrained, find("no-material")({}))
    return mesh, volume_iou(mesh, truth, resolution=64), volume_iou(blob, truth, resolution=64)
