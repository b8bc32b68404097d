"""Shared test set-up: small thread counts under xdist, quiet libraries, tiny configs."""
from __future__ import annotations

import os
import warnings

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
