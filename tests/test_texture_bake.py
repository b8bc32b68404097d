"""UV texture baking (export/texture.py), its rasteriser (export/raster.py) and the checking ray
caster (export/raycast.py): known answers on tiny inputs, and the acceptance figures of the
textured export on the bundled reference object."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from threestudio_like.errors import ConfigError, FieldError
from threestudio_like.export.raster import (
    candidate_pairs,
    dilate_ids,
    push_pull_fill,
    rasterise,
)
from threestudio_like.export.raycast import cast, psnr, shade, turntable_cameras
from threestudio_like.export.tangents import decode_tangent_space, texel_frames, to_tangent_space, vertex_tangents
from threestudio_like.export.texture import (
    bake_texture,
    sample_surface,
    sample_texture,
    uv_to_pixel,
)
from threestudio_like.reference.object import ReferenceObjectGeometry


def _grid_mesh(n: int = 4, size: float = 1.0):
    """A flat ``n x n`` quad grid in the z = 0 plane, ``[0, size]^2``."""
    lin = np.linspace(0.0, size, n + 1, dtype=np.float32)
    xs, ys = np.meshgrid(lin, lin, indexing="xy")
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size, np.float32)], -1)
    faces = []
    for r in range(n):
        for c in range(n):
            a = r * (n + 1) + c
            faces += [[a, a + 1, a + n + 2], [a, a + n + 2, a + n + 1]]
    return verts, np.asarray(faces, np.int64)


def _icosphere(subdivisions: int = 3):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64)


# --------------------------------------------------------------------------------------------
# rasteriser


def test_rasterise_covers_the_known_texels_of_one_triangle():
    xy = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
    ids, bary = rasterise(xy, 6, 7)
    rows, cols = np.nonzero(ids.numpy() >= 0)
    # Texel centres (x = col, y = row) with x, y >= 0 and x + y <= 4: 5 + 4 + 3 + 2 + 1.
    assert len(rows) == 15
    assert ((rows + cols) <= 4).all()
    assert torch.allclose(bary[1, 1], torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(bary[0, 4], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(bary[3, 0], torch.tensor([0.25, 0.0, 0.75]))
    # Either winding covers the same texels.
    ids_cw, _ = rasterise(xy[:, [0, 2, 1]], 6, 7)
    assert torch.equal(ids_cw, ids)


def test_rasterise_matches_a_brute_force_inside_test():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(40, 3, 2, generator=gen) * torch.tensor([37.0, 23.0]) - 2.0
    ids, bary = rasterise(xy, 21, 35, max_pairs=97)  # tiny chunks exercise the chunking
    r, c = torch.meshgrid(torch.arange(21.0), torch.arange(35.0), indexing="ij")
    p = torch.stack([c, r], -1).reshape(-1, 1, 2)
    a, b, cc = xy[:, 0], xy[:, 1], xy[:, 2]

    def side(u, v, q):
        return (v[..., 0] - u[..., 0]) * (q[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (q[..., 0] - u[..., 0])

    s = torch.stack([side(a, b, p), side(b, cc, p), side(cc, a, p)], -1)  # [P, F, 3]
    inside = ((s >= 0).all(-1) | (s <= 0).all(-1)).reshape(21, 35, 40)
    expected = torch.where(inside.any(-1), 39 - inside.flip(-1).float().argmax(-1), -1)
    bary_bf = s / side(a, b, cc)[:, None]  # edge functions over twice the area: barycentrics
    on_edge = (bary_bf >= -1e-3).all(-1) & (bary_bf.abs() < 1e-3).any(-1)
    clear = ~on_edge.any(-1).reshape(21, 35)  # tolerances of the two tests differ on edges only
    assert clear.float().mean() > 0.9
    assert torch.equal(ids[clear], expected[clear])
    covered = ids >= 0
    recon = (bary[covered][..., None] * xy[ids[covered]]).sum(1)
    assert torch.allclose(recon, p.reshape(21, 35, 2)[covered], atol=1e-4)


def test_candidate_pairs_do_not_depend_on_chunk_size():
    xy = torch.rand(25, 3, 2, generator=torch.Generator().manual_seed(1)) * 30
    whole = {tuple(t) for t in torch.stack(next(candidate_pairs(xy, 31, 31)), -1).tolist()}
    parts = set()
    for tri, row, col in candidate_pairs(xy, 31, 31, max_pairs=50):
        parts |= {tuple(t) for t in torch.stack([tri, row, col], -1).tolist()}
    assert parts == whole and len(whole) > 100


def test_dilation_grows_by_exactly_the_padding_and_push_pull_fills_the_rest():
    ids = torch.full((15, 15), -1, dtype=torch.long)
    ids[7, 7] = 3
    grown = dilate_ids(ids, 2)
    assert set(grown.unique().tolist()) == {-1, 3}
    assert torch.equal(torch.nonzero(grown >= 0).amin(0), torch.tensor([5, 5]))
    assert torch.equal(torch.nonzero(grown >= 0).amax(0), torch.tensor([9, 9]))
    image = torch.zeros(15, 15, 3)
    image[grown >= 0] = torch.tensor([0.2, 0.6, 0.9])
    filled = push_pull_fill(image, grown >= 0)
    assert torch.allclose(filled, torch.tensor([0.2, 0.6, 0.9]).expand(15, 15, 3))


# --------------------------------------------------------------------------------------------
# UV convention, sampling


def test_sample_texture_reads_v0_at_the_bottom_row():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = (255, 0, 0)  # top row red
    image[1] = (0, 0, 255)  # bottom row blue
    out = sample_texture(image, np.array([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5]], np.float32))
    np.testing.assert_allclose(out[0], [1, 0, 0], atol=1e-6)  # top texel centre
    np.testing.assert_allclose(out[1], [0, 0, 1], atol=1e-6)  # bottom texel centre
    np.testing.assert_allclose(out[2], [0.5, 0, 0.5], atol=1e-6)


def test_baked_gradient_is_stored_the_right_way_up():
    verts, faces = _grid_mesh(4)

    def gradient(p):  # red follows world x, green world y
        return torch.stack([p[:, 0], p[:, 1], torch.full_like(p[:, 0], 0.5)], -1)

    baked = bake_texture(verts, faces, gradient, texture_size=64, padding=2)
    points, face_ids, bary = sample_surface(baked.vertices, baked.faces, 500, seed=1)
    uv = (bary[..., None] * baked.uvs[baked.faces[face_ids]]).sum(1)
    truth = gradient(torch.from_numpy(points)).numpy()
    # Nearest texel by the documented convention: row 0 is the top of the image (v = 1).
    rows = np.clip(((1.0 - uv[:, 1]) * 64).astype(int), 0, 63)
    cols = np.clip((uv[:, 0] * 64).astype(int), 0, 63)
    nearest = baked.image[rows, cols] / 255.0
    flipped = baked.image[63 - rows, cols] / 255.0
    assert np.abs(nearest - truth).max() < 0.06  # within a texel or two of the gradient
    assert np.abs(flipped - truth).mean() > 0.1  # the other way up would be wrong
    assert np.abs(sample_texture(baked.image, uv) - truth).max() < 0.03


def test_sample_surface_is_area_weighted_and_on_the_mesh():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 2, 1]], np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 3
    points, face_ids, bary = sample_surface(verts, faces, 7000, seed=0)
    assert abs((face_ids == 1).mean() - 6 / 7) < 0.02
    assert (bary >= 0).all() and np.allclose(bary.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(points, (bary[..., None] * verts[faces[face_ids]]).sum(1), atol=1e-6)
    assert np.allclose(points[face_ids == 1, 2], 1.0)


# --------------------------------------------------------------------------------------------
# seams, normals, bad input, devices


def test_texels_next_to_chart_edges_are_not_black():
    verts, faces = _icosphere(2)
    colour = torch.tensor([0.2, 0.6, 0.9])
    baked = bake_texture(verts, faces, lambda p: colour.expand(len(p), 3), texture_size=64, padding=1)
    xy = uv_to_pixel(torch.from_numpy(baked.uvs), 64, 64)[torch.from_numpy(baked.faces)]
    covered = rasterise(xy, 64, 64)[0] >= 0
    near = F.max_pool2d(covered[None, None].float(), 3, 1, 1)[0, 0].bool() & ~covered
    assert near.sum() > 50 and (~covered).sum() > near.sum()  # the atlas has seams and a background
    image = torch.from_numpy(baked.image).float() / 255
    assert torch.allclose(image[near], colour, atol=1 / 255)
    assert torch.allclose(image, colour.expand(64, 64, 3), atol=1 / 255)  # the whole background
    # Mip-maps (2x2 box averages) therefore never darken along the seams.
    mip = image.permute(2, 0, 1)[None]
    while mip.shape[-1] > 1:
        mip = F.avg_pool2d(mip, 2)
        assert torch.allclose(mip[0].permute(1, 2, 0), colour, atol=1 / 255)


def _bumpy_normals(points):
    """A smooth field of unit normals near a sphere's radial ones (tilted by up to ~20 degrees)."""
    p = torch.as_tensor(points, dtype=torch.float32)
    radial = F.normalize(p, dim=-1)
    return F.normalize(radial + 0.35 * torch.sin(5.0 * p.roll(1, dims=-1)), dim=-1)


def test_tangent_space_normal_map_recovers_the_field_normals():
    """Decoded as a viewer does (n = x T + y B + z N in the interpolated frame of the written
    tangents and normals), the map gives back the field's normals, which the coarse mesh's own
    normals miss by far more."""
    verts, faces = _icosphere(2)
    normals = verts / np.linalg.norm(verts, axis=-1, keepdims=True)
    baked = bake_texture(verts, faces, lambda p: torch.ones_like(p), texture_size=256, normal_fn=_bumpy_normals,
                         normals=normals)
    assert baked.normal_map is not None and baked.normal_map.dtype == np.uint8
    assert baked.tangents.shape == (len(baked.vertices), 4)
    assert np.allclose(np.linalg.norm(baked.tangents[:, :3], axis=-1), 1, atol=1e-5)
    assert set(np.unique(baked.tangents[:, 3])) <= {-1.0, 1.0}
    split = normals[baked.vmapping]
    assert np.abs((baked.tangents[:, :3] * split).sum(-1)).max() < 1e-3  # T is orthogonal to N
    points, face_ids, bary = sample_surface(baked.vertices, baked.faces, 3000, seed=2)
    uv = (bary[..., None] * baked.uvs[baked.faces[face_ids]]).sum(1)
    frames = texel_frames(torch.from_numpy(split.astype(np.float32)), torch.from_numpy(baked.tangents),
                          torch.from_numpy(baked.faces[face_ids]), torch.from_numpy(bary))
    decoded = decode_tangent_space(sample_texture(baked.normal_map, uv), tuple(f.numpy() for f in frames))
    truth = _bumpy_normals(points).numpy()

    def degrees(a, b):
        return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))

    assert degrees(decoded, truth).mean() < 0.5  # measured 0.11 (8-bit texels, bilinear)
    assert degrees(frames[2].numpy(), truth).mean() > 8.0  # measured 19.1: the mesh alone misses the detail


def test_tangents_follow_the_gltf_convention():
    """glTF (and Blender, USD): the map's +X is +u, its +Y is up in the image (+v in OpenGL UVs),
    B = w (N x T). A field normal tilted towards +v reads green > 1/2, towards +u red > 1/2; a
    mirrored chart (u running the other way) gets w = -1 and still reads the same way."""
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int64)
    normals = np.tile(np.array([[0, 0, 1]], np.float32), (4, 1))
    centre = (torch.tensor([[0, 1, 2]]), torch.tensor([[1 / 3, 1 / 3, 1 / 3]]))
    for mirror, u_dir in ((1.0, [1.0, 0.0, 0.0]), (-1.0, [-1.0, 0.0, 0.0])):
        uvs = np.stack([mirror * verts[:, 0], verts[:, 1]], 1)
        tangents = vertex_tangents(verts, faces, uvs, normals)
        assert np.allclose(tangents[:, :3], u_dir) and np.all(tangents[:, 3] == mirror)
        frames = texel_frames(torch.from_numpy(normals), torch.from_numpy(tangents), *centre)
        towards_v = to_tangent_space(torch.tensor([[0.0, 0.5, 1.0]]), frames)[0]
        towards_u = to_tangent_space(torch.tensor([u_dir]) * 0.5 + torch.tensor([[0.0, 0.0, 1.0]]), frames)[0]
        assert towards_v[1] > 0.7 and abs(towards_v[0] - 0.5) < 1e-6
        assert towards_u[0] > 0.7 and abs(towards_u[1] - 0.5) < 1e-6


def test_bad_input_names_the_problem():
    verts, faces = _grid_mesh(1)

    def white(p):
        return torch.ones_like(p)

    with pytest.raises(ConfigError, match="faces must be integer indices"):
        bake_texture(verts, faces + 10, white, texture_size=16)
    with pytest.raises(ConfigError, match=r"vertices must have shape \[V, 3\]"):
        bake_texture(verts[:, :2], faces, white, texture_size=16)
    with pytest.raises(FieldError, match="texture_size"):
        bake_texture(verts, faces, white, texture_size=4)
    with pytest.raises(ValueError, match="colour must return"):
        bake_texture(verts, faces, lambda p: p[:, 0], texture_size=16)


def test_non_finite_colours_bake_as_mid_grey():
    verts, faces = _grid_mesh(2)

    def broken(p):
        return torch.where(p[:, :1] > 0.5, torch.full_like(p, float("nan")), torch.zeros_like(p))

    image = bake_texture(verts, faces, broken, texture_size=32, padding=1).image
    assert image.max() <= 128  # nothing brighter than the grey that stands in for NaN
    assert (image == 128).mean() > 0.2 and (image == 0).mean() > 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here; the CUDA path runs the same code")
def test_cuda_bake_matches_cpu():
    verts, faces = _icosphere(3)

    def colour(p):
        return (p * 0.5 + 0.5).clamp(0, 1)

    cpu = bake_texture(verts, faces, colour, texture_size=128)
    gpu = bake_texture(verts, faces, colour, texture_size=128, device=torch.device("cuda"))
    assert np.array_equal(cpu.faces, gpu.faces)
    assert np.abs(cpu.image.astype(int) - gpu.image.astype(int)).mean() < 0.5


# --------------------------------------------------------------------------------------------
# ray caster


def test_ray_caster_silhouette_and_barycentrics():
    verts, faces = _icosphere(4)
    c2w = turntable_cameras(1, elevation_deg=20.0, distance=3.0)[0]
    hits = cast(verts, faces, c2w, fovy_deg=40.0, size=96)
    # The unit sphere seen from distance 3 is a disc of angular radius asin(1/3).
    focal = 48 / math.tan(math.radians(20.0))
    radius_px = focal * math.tan(math.asin(1 / 3))
    expected = math.pi * radius_px**2
    assert abs(int((hits.face >= 0).sum()) - expected) / expected < 0.03
    # Hits lie on the triangles, and the nearer half of the sphere is the one seen.
    ids = hits.face[hits.face >= 0]
    pts = hits.points[hits.face >= 0]
    assert (pts @ c2w[:3, 3] > 0).all()
    assert (hits.bary[hits.face >= 0] >= -1e-5).all()
    corners = torch.from_numpy(verts)[torch.from_numpy(faces)[ids]]
    assert torch.allclose(pts, (hits.bary[hits.face >= 0][..., None] * corners).sum(1), atol=1e-5)
    # A linear colour field: vertex colours interpolated at the hits equal the field there.
    def linear(p):
        return (p * 0.4 + 0.5).clamp(0, 1)

    by_vertex, cover = shade(hits, faces=faces, vertex_colours=linear(torch.from_numpy(verts)).numpy())
    by_field, _ = shade(hits, colour_fn=linear)
    assert np.abs(by_vertex - by_field).max() < 1e-5 and cover.max() == 1.0


# --------------------------------------------------------------------------------------------
# acceptance on the bundled reference object


@pytest.fixture(scope="module")
def demo_bake():
    geometry = ReferenceObjectGeometry({})

    def albedo(p):
        return geometry.export(p)["features"]

    verts, faces = geometry.isosurface(resolution=96)
    verts, faces = verts.numpy(), faces.numpy()
    return verts, faces, albedo, bake_texture(verts, faces, albedo, texture_size=1024, padding=4)


def test_demo_bake_keeps_the_mesh(demo_bake):
    verts, faces, _, baked = demo_bake
    assert baked.image.shape == (1024, 1024, 3) and baked.image.dtype == np.uint8
    assert baked.faces.shape == faces.shape and baked.faces.dtype == np.int64
    assert np.array_equal(baked.vmapping[baked.faces], faces)  # same triangles, same order
    assert np.array_equal(baked.vertices, verts[baked.vmapping])
    assert baked.uvs.dtype == np.float32 and baked.uvs.min() >= 0 and baked.uvs.max() <= 1
    assert len(baked.vertices) > len(verts)  # split along seams


def test_demo_texture_matches_the_colour_field(demo_bake):
    _, _, albedo, baked = demo_bake
    points, face_ids, bary = sample_surface(baked.vertices, baked.faces, 10000, seed=0)
    uv = (bary[..., None] * baked.uvs[baked.faces[face_ids]]).sum(1)
    error = np.abs(sample_texture(baked.image, uv) - albedo(torch.from_numpy(points)).numpy())
    assert error.mean() <= 0.02, f"texture vs field MAE {error.mean():.4f}"


def test_demo_turntable_renders_match_the_field(demo_bake):
    _, _, albedo, baked = demo_bake
    scores = []
    for c2w in turntable_cameras(8, elevation_deg=15.0, distance=2.0):
        hits = cast(baked.vertices, baked.faces, c2w, size=128)
        textured, cover = shade(hits, faces=baked.faces, uvs=baked.uvs, image=baked.image)
        field, _ = shade(hits, colour_fn=albedo)
        assert cover.mean() > 0.1
        scores.append(psnr(textured, field, mask=cover > 0))  # object pixels only
    assert min(scores) >= 30.0, f"PSNR per view {[round(s, 1) for s in scores]}"
