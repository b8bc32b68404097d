"""The one camera convention, checked against hand-derived matrices."""
from __future__ import annotations

import math

import torch

from threestudio_like.cameras import c2w_from_spherical, get_rays, ray_directions
from threestudio_like.data.random_camera import RandomCameraDataModule


def _c2w(elev_deg, azim_deg, dist):
    t = torch.tensor
    return c2w_from_spherical(t([math.radians(elev_deg)]), t([math.radians(azim_deg)]), t([float(dist)]))[0]


def test_front_camera():
    # Azimuth 0, elevation 0, distance 2: camera on +x looking at the origin (-x), z up.
    # right = look x up = (-1,0,0) x (0,0,1) = (0,1,0); back = +x.
    expected = torch.tensor(
        [[0.0, 0.0, 1.0, 2.0],
         [1.0, 0.0, 0.0, 0.0],
         [0.0, 1.0, 0.0, 0.0],
         [0.0, 0.0, 0.0, 1.0]]
    )
    assert torch.allclose(_c2w(0, 0, 2), expected, atol=1e-6)


def test_side_camera_counter_clockwise():
    # Azimuth 90: camera on +y (counter-clockwise from +x seen from above); right = -x.
    expected = torch.tensor(
        [[-1.0, 0.0, 0.0, 0.0],
         [0.0, 0.0, 1.0, 3.0],
         [0.0, 1.0, 0.0, 0.0],
         [0.0, 0.0, 0.0, 1.0]]
    )
    assert torch.allclose(_c2w(0, 90, 3), expected, atol=1e-6)


def test_elevated_camera():
    # Elevation 30, azimuth 0, distance 2: position (2cos30, 0, 2sin30) = (sqrt3, 0, 1);
    # back = position / 2; up = (-sin30, 0, cos30); right = (0, 1, 0).
    s, c = 0.5, math.sqrt(3) / 2
    expected = torch.tensor(
        [[0.0, -s, c, 2 * c],
         [1.0, 0.0, 0.0, 0.0],
         [0.0, c, s, 2 * s],
         [0.0, 0.0, 0.0, 1.0]]
    )
    assert torch.allclose(_c2w(30, 0, 2), expected, atol=1e-6)


def test_top_view_is_well_defined():
    c2w = _c2w(90, 0, 2)
    assert torch.isfinite(c2w).all()
    assert torch.allclose(c2w[:3, 2], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    rot = c2w[:3, :3]
    assert torch.allclose(rot.T @ rot, torch.eye(3), atol=1e-6)


def test_centre_ray_hits_the_origin_and_pixel_layout():
    c2w = _c2w(20, 45, 2.5)[None]
    dirs = ray_directions(4, 4, focal=2.0)
    # the image's top-left pixel looks up and left
    assert dirs[0, 0, 0] < 0 and dirs[0, 0, 1] > 0 and dirs[0, 0, 2] == -1
    rays_o, rays_d = get_rays(dirs, c2w)
    centre = (rays_d[0, 1, 1] + rays_d[0, 2, 2]) / 2  # symmetric pair around the centre
    hit = rays_o[0, 0, 0] + centre / centre.norm() * 2.5
    assert hit.norm() < 1e-5


def test_multiview_groups_share_pose_and_are_90_degrees_apart():
    dm = RandomCameraDataModule({"batch_size": 8, "n_view": 4, "height": 8, "width": 8,
                                 "camera_perturb": 0.0, "center_perturb": 0.0, "up_perturb": 0.0})
    batch = dm.train_dataset.collate([{}])
    az = batch["azimuth"].reshape(2, 4)
    diffs = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    assert torch.allclose(diffs, torch.full_like(diffs, 90.0), atol=1e-4)
    for key in ("elevation", "fovy", "camera_distances"):
        grouped = batch[key].reshape(2, 4)
        assert torch.allclose(grouped, grouped[:, :1].expand(-1, 4))
    # c2w follows the spherical pose exactly when nothing is perturbed
    expected = c2w_from_spherical(
        torch.deg2rad(batch["elevation"]), torch.deg2rad(batch["azimuth"]), batch["camera_distances"]
    )
    assert torch.allclose(batch["c2w"], expected, atol=1e-5)


def test_progressive_resolution_and_batch_size():
    dm = RandomCameraDataModule({"height": [8, 16], "width": [8, 16], "batch_size": [4, 2],
                                 "resolution_milestones": [10]})
    ds = dm.train_dataset
    ds.update_step(0, 9)
    assert ds.collate([{}])["rays_o"].shape == (4, 8, 8, 3)
    ds.update_step(0, 10)
    assert ds.collate([{}])["rays_o"].shape == (2, 16, 16, 3)


def test_turntable_starts_at_the_front_and_loops():
    dm = RandomCameraDataModule({"n_test_views": 8, "eval_height": 8, "eval_width": 8,
                                 "eval_elevation_deg": 0.0})
    ds = dm.test_dataloader().dataset
    assert len(ds) == 8
    az = ds.batch["azimuth"]
    assert az[0] == 0 and az[-1] == 315.0
    assert torch.allclose(ds.batch["camera_positions"][0], torch.tensor([1.5, 0.0, 0.0]), atol=1e-6)


def test_turntable_size_and_extra_elevations_leave_validation_alone():
    from threestudio_like.config import parse_structured
    from threestudio_like.data.random_camera import RandomCameraConfig, orbit_loader

    cfg = parse_structured(RandomCameraConfig, {"eval_height": 32, "eval_width": 48, "test_height": 64,
                                                "test_width": 96, "test_elevations_deg": [45.0],
                                                "eval_elevation_deg": 10.0})
    val = orbit_loader(cfg, 3).dataset
    test = orbit_loader(cfg, 4, turntable=True).dataset
    assert (val.height, val.width, len(val)) == (32, 48, 3)
    assert (test.height, test.width, len(test)) == (64, 96, 8)
    assert test.batch["elevation"].tolist() == [10.0] * 4 + [45.0] * 4
    assert test.batch["azimuth"].tolist()[:4] == test.batch["azimuth"].tolist()[4:] == [0.0, 90.0, 180.0, 270.0]
    batch = test.collate([test[5]])
    assert batch["rays_o"].shape[1:3] == (64, 96) and batch["height"] == 64
