"""DepthFusion scenes: equirectangular geometry against hand-derived directions, a synthetic
room (a box of known size) rebuilt from its RGBD panorama, the GLB's axes, seam, poles and cuts,
and the preview videos."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threestudio_like.models.rgbd import unit_to_depth16
from threestudio_like.scenes import depthfusion as DF


def _dir(lon, lat):
    return torch.tensor([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)],
                        dtype=torch.float64)


def test_equirect_directions_match_hand_derived_ones():
    d = DF.equirect_directions(4, 8)  # pixel centres at u + 0.5 of 8 columns, v + 0.5 of 4 rows
    # next to the centre: lon = pi - 2 pi 3.5 / 8 = pi / 8 (left of the front), lat = pi/2 - pi 1.5/4 = pi / 8
    assert torch.allclose(d[1, 3], _dir(math.pi / 8, math.pi / 8))
    assert torch.allclose(d[2, 4], _dir(-math.pi / 8, -math.pi / 8))  # right of and below the front
    # the seam: the first and last columns look behind (-x), mirror images across the x-z plane
    assert torch.allclose(d[1, 0], _dir(7 * math.pi / 8, math.pi / 8))
    assert torch.allclose(d[1, 7], _dir(-7 * math.pi / 8, math.pi / 8))
    assert d[1, 0, 0] < -0.8 and torch.allclose(d[1, 0, 1], -d[1, 7, 1])
    # near the poles: the top row's latitude is pi/2 - pi/8
    assert torch.allclose(d[0, 2], _dir(math.pi - 2 * math.pi * 2.5 / 8, 3 * math.pi / 8))
    assert d[0, :, 2].min() > 0.92 and d[3, :, 2].max() < -0.92
    # moving right turns right (towards -y) for a viewer inside; unit length everywhere
    big = DF.equirect_directions(64, 128)
    assert big[32, 96, 1] < -0.99 and torch.allclose(big.norm(dim=-1), torch.ones(64, 128, dtype=torch.float64))


BOX = np.array([[-3.0, 4.0], [-2.0, 2.5], [-1.2, 1.5]])  # x, y, z extents of the room around the viewer


def _room_distances(dirs: np.ndarray):
    """Distance to the box walls along each direction, and the axis/side of the wall hit."""
    with np.errstate(divide="ignore"):
        t = np.where(dirs > 0, BOX[:, 1] / dirs, np.where(dirs < 0, BOX[:, 0] / dirs, np.inf))
    return t.min(-1), t.argmin(-1)


def _room_panorama(height=128, width=256):
    dirs = DF.equirect_directions(height, width).numpy()
    dist, axis = _room_distances(dirs)
    near, far = float(dist.min()), float(dist.max())
    unit = DF.disparity_from_distance(torch.from_numpy(dist), near, far).numpy()
    depth16 = unit_to_depth16(unit)
    u = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack(np.broadcast_arrays(u[None, :], (axis * 80).astype(np.uint8), np.uint8(128)), -1)
    return rgb, depth16, near, far, dirs, axis


def test_box_room_walls_are_rebuilt_within_one_percent():
    rgb, depth16, near, far, dirs, axis = _room_panorama()
    mesh = DF.sphere_mesh(rgb, depth16, near, far, max_depth_ratio=1.5)
    height, width = depth16.shape
    grid = mesh.vertices.reshape(height + 2, width + 1, 3)[1:-1, :width]
    for a in range(3):
        hit = axis == a
        for side in (0, 1):
            wall = BOX[a, side]
            on = hit & ((dirs[..., a] > 0) == (side == 1))
            assert on.sum() > 20
            rel = np.abs(grid[..., a][on] - wall) / abs(wall)
            assert rel.max() < 0.01, (a, side, rel.max())


def test_sphere_mesh_closes_the_seam_and_poles_and_faces_the_viewer():
    rgb, depth16, near, far, _, _ = _room_panorama(32, 64)
    mesh = DF.sphere_mesh(rgb, depth16, near, far, max_depth_ratio=1.5)
    grid = mesh.vertices.reshape(34, 65, 3)
    assert np.array_equal(grid[:, 0], grid[:, 64])  # seam: the duplicated column coincides
    assert np.ptp(grid[0], axis=0).max() == 0 and np.ptp(grid[-1], axis=0).max() == 0  # one point per pole
    assert len(mesh.faces) == 2 * 33 * 64  # no quad cut: closed, including the pole fans
    tri = mesh.vertices[mesh.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = (normal * tri.mean(1)).sum(-1)
    assert (facing[np.linalg.norm(normal, axis=-1) > 1e-12] < 0).mean() > 0.99
    uv = mesh.uv.reshape(34, 65, 2)
    assert uv[:, 0, 0].max() < 0.01 and uv[:, 64, 0].min() > 1.0  # the seam column maps past u = 1


def test_depth_discontinuities_are_cut_not_stretched():
    rgb, depth16, near, far, _, _ = _room_panorama(32, 64)
    depth16 = depth16.copy()
    depth16[12:20, 20:30] = 65535  # a near object in front of the wall
    mesh = DF.sphere_mesh(rgb, depth16, near, far, max_depth_ratio=1.2)
    r = np.linalg.norm(mesh.vertices, axis=-1)[mesh.faces]
    assert (r.max(1) / r.min(1)).max() <= 1.2
    assert len(mesh.faces) < 2 * 33 * 64


def test_glb_is_y_up_and_textured(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    rgb, depth16, near, far, _, _ = _room_panorama(32, 64)
    mesh = DF.sphere_mesh(rgb, depth16, near, far, max_depth_ratio=1.5)
    path = DF.save_glb(mesh, str(tmp_path / "room.glb"))
    loaded = trimesh.load(path, force="mesh")
    lo, hi = loaded.bounds
    # our z (room height -1.2..1.5) is glTF's Y; our x (-3..4) its Z; our y its X
    assert abs(lo[1] + 1.2) < 0.02 and abs(hi[1] - 1.5) < 0.02
    assert abs(lo[2] + 3.0) < 0.03 and abs(hi[2] - 4.0) < 0.04 and abs(lo[0] + 2.0) < 0.02
    assert loaded.visual.uv is not None and loaded.visual.material.baseColorTexture is not None


def test_pano_video_from_the_centre_sees_the_room_all_around(tmp_path):
    rgb, depth16, near, far, _, _ = _room_panorama(64, 128)
    mesh = DF.sphere_mesh(rgb, depth16, near, far, max_depth_ratio=1.5)
    frames = DF.pano_video(mesh, str(tmp_path / "room.mp4"), n_frames=8, size=(48, 64))
    assert (tmp_path / "room.mp4").stat().st_size > 0 and len(frames) == 8
    for frame in frames:
        assert (frame.sum(-1) > 0).mean() > 0.95  # inside a closed room every pixel sees a wall
    # the red channel encodes the panorama's column: the front (frame 0) sees its middle (~128),
    # a quarter turn left (frame 2, looking along +y) the first quarter (~64)
    red = [f[..., 0][f.sum(-1) > 0].astype(float).mean() for f in frames]
    assert abs(red[0] - 128) < 15 and abs(red[2] - 64) < 15 and abs(red[6] - 192) < 15


def test_perspective_mesh_puts_a_flat_wall_at_its_planar_depth(tmp_path):
    depth16 = np.full((24, 32), 40000, np.uint16)
    rgb = np.full((24, 32, 3), 200, np.uint8)
    mesh = DF.perspective_mesh(rgb, depth16, 60.0, 1.0, 5.0)
    expected = float(DF.distance_from_disparity(torch.tensor(40000 / 65535), 1.0, 5.0))
    assert np.allclose(mesh.vertices[:, 0], expected, rtol=1e-4)  # planar: one x for the whole wall
    assert mesh.vertices[:, 1].max() > 0 > mesh.vertices[:, 1].min()
    paths = DF.build_scene(rgb, depth16, str(tmp_path), "wall", kind="perspective", near=1.0, far=5.0, frames=4)
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 0 for p in paths.values())
