"""Mesh export: frames (the GLB opens upright), clean-up, every format's writer (texture right
way up), the automatic isosurface level, and the config's checks. Known answers come from the
bundled reference object (face at +x, head on top, tail at the back; world z up)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch

from threestudio_like import find
from threestudio_like.errors import ConfigError, IsosurfaceError
from threestudio_like.export import cleanup, formats, mesh_exporter
from threestudio_like.export.frames import rotation, to_export_frame, to_world_frame
from threestudio_like.export.mesh_exporter import MeshExporter, volume_iou
from threestudio_like.reference.object import ReferenceObjectGeometry

NOSE = np.array([0.85, 0.10, 0.10])
HEAD = np.array([0.96, 0.86, 0.70])
TAIL = np.array([0.10, 0.45, 0.15])
RED, BLUE = (230, 20, 20), (20, 20, 230)


@pytest.fixture(scope="module")
def reference():
    return ReferenceObjectGeometry({}), find("no-material")({"color_activation": "none"})


def _near(rgb: np.ndarray, colour: np.ndarray, tol: float = 0.06) -> np.ndarray:
    return np.abs(rgb - colour).max(axis=1) < tol


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(np.clip(c, 0, None), 1 / 2.4) - 0.055)


def _primitive(gltf: dict, blob: bytes, name: str) -> np.ndarray:
    prim = gltf["meshes"][0]["primitives"][0]
    index = prim["indices"] if name == "indices" else prim["attributes"][name]
    return formats.glb_accessor(gltf, blob, index)


# ------------------------------------------------------------------------------------ frames
def test_the_frame_rotation_is_proper_and_sends_front_to_z_and_up_to_y():
    r = rotation("y")
    assert np.isclose(np.linalg.det(r), 1.0) and np.allclose(r @ r.T, np.eye(3))
    front, left, up = np.eye(3)  # world +x (front), +y (the object's left), +z (up)
    assert np.allclose(to_export_frame(front[None]), [[0, 0, 1]])
    assert np.allclose(to_export_frame(left[None]), [[1, 0, 0]])  # glTF: +X is the asset's left
    assert np.allclose(to_export_frame(up[None]), [[0, 1, 0]])
    pts = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(to_world_frame(to_export_frame(pts)), pts)
    assert np.allclose(to_export_frame(pts, "z"), pts)


def test_glb_opens_upright_with_the_face_along_z_and_the_top_along_y(tmp_path, reference):
    import trimesh

    exporter = MeshExporter({"formats": ["glb"], "isosurface_resolution": 64, "bake_texture": False})
    (path,) = exporter(*reference, str(tmp_path))
    gltf, blob = formats.read_glb(path)
    pos = _primitive(gltf, blob, "POSITION")
    rgb = _linear_to_srgb(_primitive(gltf, blob, "COLOR_0"))  # COLOR_0 is linear
    assert gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["max"] == \
        pytest.approx(pos.max(0).tolist())
    # the face: the front-most vertex (largest Z) is on the nose; the tail is at the back (-Z)
    assert _near(rgb[np.argmax(pos[:, 2])][None], NOSE, 0.1)[0]
    assert pos[_near(rgb, TAIL), 2].mean() < -0.4
    # the top: the head sits above the body's middle, centred left-right
    head = pos[_near(rgb, HEAD)]
    assert head[:, 1].mean() > pos[:, 1].mean() + 0.2 and abs(head[:, 0].mean()) < 0.05
    # height (world z extent, 0.86) is along Y; length (world x extent, 1.3) along Z
    extent = pos.max(0) - pos.min(0)
    assert extent[1] == pytest.approx(0.86, abs=0.05) and extent[2] == pytest.approx(1.31, abs=0.05)
    # trimesh's own loader sees the same frame (it does not convert GLB axes)
    scene = trimesh.load(path)
    loaded = np.concatenate([g.vertices for g in scene.dump()])
    assert np.allclose(loaded.max(0) - loaded.min(0), extent, atol=1e-4)
    material = gltf["materials"][0]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0 and material["roughnessFactor"] == 1.0


def test_obj_and_ply_follow_up_axis(tmp_path, reference):
    import trimesh

    world = MeshExporter({"isosurface_resolution": 32, "bake_texture": False, "target_faces": 0})
    raw = world.build_mesh(*reference)
    for axis in ("y", "z"):
        out = tmp_path / axis
        MeshExporter({"formats": ["obj", "ply"], "isosurface_resolution": 32, "bake_texture": False,
                      "target_faces": 0, "up_axis": axis})(*reference, str(out))
        for name in ("model.obj", "model.ply"):
            mesh = trimesh.load(out / name, force="mesh", process=False)
            back = to_world_frame(np.asarray(mesh.vertices), axis)
            assert np.allclose(back.min(0), raw.vertices.min(0), atol=1e-4), (axis, name)
            assert np.allclose(back.max(0), raw.vertices.max(0), atol=1e-4), (axis, name)
            assert mesh.volume > 0  # outward winding kept


# ------------------------------------------------------------------------------------ clean-up
def test_cleanup_drops_floaters_and_decimates_without_losing_the_shape():
    noisy = ReferenceObjectGeometry({"ripple": 0.012, "floaters": True})
    verts, faces = (t.numpy() for t in noisy.isosurface(resolution=64))
    import trimesh

    raw = trimesh.Trimesh(verts, faces, process=False)
    v, f, report = cleanup.clean_mesh(verts, faces, keep_share=0.95, target_faces=4000)
    clean = trimesh.Trimesh(v, f, process=False)
    assert report.components_before == 4 and report.components_after == 1
    assert report.faces_before == len(faces) and report.faces_after == len(f) <= 4000
    assert clean.is_watertight and clean.volume > 0
    truth = noisy.occupancy
    raw_iou, clean_iou = volume_iou(raw, truth, resolution=48), volume_iou(clean, truth, resolution=48)
    assert abs(raw_iou - clean_iou) <= 0.02, (raw_iou, clean_iou)
    assert "4 -> 1 components" in report.summary()
    # keeping the whole share keeps every piece
    assert cleanup.clean_mesh(verts, faces, keep_share=1.0, target_faces=0)[2].components_after == 4


def test_the_walls_of_internal_cavities_are_dropped_so_the_mesh_is_solid():
    """A distilled density is an opaque shell with an untrained inside: its level set has an
    inward-facing inner wall. Clean-up drops it (and only it), so the exported mesh is solid."""
    import trimesh

    from threestudio_like.geometry.isosurface import marching_cubes

    def shell(x):  # dense between radius 0.4 and 0.6, empty inside and out
        r = x.norm(dim=-1)
        return 100.0 * ((r > 0.4) & (r < 0.6)).float()

    verts, faces = (t.numpy() for t in marching_cubes(shell, 48, -1.0, 1.0, 50.0))
    hollow = trimesh.Trimesh(verts, faces, process=False)
    assert cleanup.face_components(faces, len(verts))[1] == 2
    v, f, report = cleanup.clean_mesh(verts, faces, target_faces=0)
    solid = trimesh.Trimesh(v, f, process=False)
    assert report.cavities_filled == 1 and report.components_after == 1
    assert "1 internal cavities filled" in report.summary()
    assert solid.is_watertight and solid.volume > 0

    def ball(x):
        return x.norm(dim=-1) < 0.6

    assert volume_iou(hollow, ball, resolution=40) < 0.8  # the void counts as outside
    assert volume_iou(solid, ball, resolution=40) > 0.95
    # kept when asked, and never judged on a component that is open (its volume depends on the origin)
    assert cleanup.clean_mesh(verts, faces, target_faces=0, cavities=False)[2].components_after == 2
    is_inner = np.linalg.norm(verts[faces].mean(1), axis=1) < 0.5
    opened = np.concatenate([faces[~is_inner], faces[is_inner][1:]])  # the inner wall with one face cut out
    assert cleanup.drop_cavities(verts, faces)[2] == 1
    assert cleanup.drop_cavities(verts, opened)[2] == 0


def test_slivers_pinched_off_by_decimation_are_dropped(monkeypatch):
    import trimesh

    body, sliver = trimesh.creation.icosphere(subdivisions=3), trimesh.creation.icosphere(subdivisions=0, radius=0.05)
    sliver.vertices += [2.0, 0, 0]
    both = trimesh.util.concatenate([body, sliver])

    monkeypatch.setattr(cleanup, "decimate", lambda v, f, target: (np.asarray(both.vertices), np.asarray(both.faces)))
    _, f, report = cleanup.clean_mesh(np.asarray(body.vertices), np.asarray(body.faces), target_faces=100)
    assert report.decimated and report.components_before == 1 and report.components_after == 1
    assert len(f) == len(body.faces)


def test_fill_holes_closes_a_cut_mesh(reference):
    verts, faces = (t.numpy() for t in reference[0].isosurface(resolution=32))
    cut = faces[verts[faces][:, :, 2].mean(1) < 0.3]  # slice off the top of the head
    v, f, loops = cleanup.fill_holes(verts, cut)
    import trimesh

    assert loops >= 1 and trimesh.Trimesh(v, f, process=False).is_watertight
    assert trimesh.Trimesh(v, f, process=False).volume > 0


def test_vertex_normals_point_out_of_a_sphere():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2)
    normals = cleanup.vertex_normals(np.asarray(sphere.vertices), np.asarray(sphere.faces))
    assert np.einsum("vd,vd->v", normals, sphere.vertices).min() > 0.99


# ------------------------------------------------------------------------------ texture writers
@dataclass
class _StandInTexture:
    """The texture baker's result as its contract describes it (tiny, made by hand)."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    vmapping: np.ndarray
    image: np.ndarray
    normal_map: Optional[np.ndarray] = None


def _stand_in_baker(vertices, faces, colour_fn, texture_size=1024, padding=4, normal_fn=None, device=None,
                    chunk=262144, progress=None):
    """UVs by planar projection: u along world x, v along world z (the top of the object is
    v = 1, the image's top row); a 2x2 image, top row red, bottom row blue."""
    v = np.asarray(vertices, np.float32)
    lo, hi = v.min(0), v.max(0)
    uvs = np.stack([(v[:, 0] - lo[0]) / (hi[0] - lo[0]), (v[:, 2] - lo[2]) / (hi[2] - lo[2])], 1)
    image = np.array([[RED, RED], [BLUE, BLUE]], np.uint8)
    return _StandInTexture(v, np.asarray(faces, np.int64), uvs.astype(np.float32), np.arange(len(v)), image)


@pytest.fixture()
def textured_export(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(mesh_exporter, "import_baker", lambda: _stand_in_baker)
    exporter = MeshExporter({"isosurface_resolution": 32, "target_faces": 0})
    paths = exporter(*reference, str(tmp_path))
    return exporter, paths, tmp_path


def _is(rgb: np.ndarray, colour) -> np.ndarray:
    return np.abs(rgb[:, :3].astype(int) - np.array(colour)).max(axis=1) < 40


def test_glb_texture_is_right_way_up(textured_export):
    import io

    import trimesh
    from PIL import Image

    exporter, _, folder = textured_export
    assert exporter.last_report.textured
    gltf, blob = formats.read_glb(str(folder / "model.glb"))
    prim = gltf["meshes"][0]["primitives"][0]
    assert "COLOR_0" not in prim["attributes"]  # glTF would multiply it into the texture
    pbr = gltf["materials"][0]["pbrMetallicRoughness"]
    assert pbr["baseColorTexture"]["index"] == 0 and pbr["metallicFactor"] == 0.0
    view = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
    image = np.asarray(Image.open(io.BytesIO(blob[view["byteOffset"]:view["byteOffset"] + view["byteLength"]])))
    pos, uv = _primitive(gltf, blob, "POSITION"), _primitive(gltf, blob, "TEXCOORD_0")
    # glTF: (0, 0) is the image's top-left; sample the nearest texel of each vertex
    texel = image[np.clip((uv[:, 1] * 2).astype(int), 0, 1), np.clip((uv[:, 0] * 2).astype(int), 0, 1)]
    top, bottom = pos[:, 1] > pos[:, 1].max() - 0.15, pos[:, 1] < pos[:, 1].min() + 0.15
    assert _is(texel[top], RED).all() and _is(texel[bottom], BLUE).all()
    # a third-party reader agrees: trimesh samples the texture at its own UVs
    mesh = trimesh.load(folder / "model.glb", force="mesh")
    colours = mesh.visual.to_color().vertex_colors
    assert _is(colours[mesh.vertices[:, 1] > mesh.vertices[:, 1].max() - 0.15], RED).all()
    assert _is(colours[mesh.vertices[:, 1] < mesh.vertices[:, 1].min() + 0.15], BLUE).all()


def test_obj_has_vt_mtllib_usemtl_and_its_texture_is_right_way_up(textured_export):
    import trimesh

    _, _, folder = textured_export
    text = (folder / "model.obj").read_text()
    assert "mtllib model.mtl" in text and "usemtl model_material" in text and "\nvt " in text
    assert "map_Kd model.png" in (folder / "model.mtl").read_text()
    mesh = trimesh.load(folder / "model.obj", force="mesh")
    colours = mesh.visual.to_color().vertex_colors
    assert _is(colours[mesh.vertices[:, 1] > mesh.vertices[:, 1].max() - 0.15], RED).all()
    assert _is(colours[mesh.vertices[:, 1] < mesh.vertices[:, 1].min() + 0.15], BLUE).all()


def test_usdz_is_y_up_with_a_textured_preview_surface(textured_export):
    pytest.importorskip("pxr")
    import zipfile

    from pxr import Usd, UsdGeom, UsdShade

    _, _, folder = textured_export
    import struct

    raw = (folder / "model.usdz").read_bytes()
    with zipfile.ZipFile(folder / "model.usdz") as z:
        names = z.namelist()
        assert names[0].endswith(".usdc") and any(n.endswith("model.png") for n in names)
        for info in z.infolist():  # USDZ: stored, each file's data 64-byte aligned
            name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
            assert info.compress_type == zipfile.ZIP_STORED
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
        z.extractall(folder / "unpacked")
    stage = Usd.Stage.Open(str(folder / "unpacked" / names[0]))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/model/mesh"))
    pos = np.array(mesh.GetPointsAttr().Get())
    st = np.array(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get())
    top = pos[:, 1] > pos[:, 1].max() - 0.15
    assert (st[top, 1] > 0.75).all()  # USD: v = 1 is the image's top row (red)
    material = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()[0]
    assert material.GetPath() == "/model/material"
    texture = UsdShade.Shader(stage.GetPrimAtPath("/model/material/basecolor"))
    asset = texture.GetInput("file").Get()
    assert os.path.isfile(folder / "unpacked" / asset.path)  # the packaged path resolves
    assert texture.GetInput("sourceColorSpace").Get() == "sRGB"


def test_ply_keeps_vertex_colours(textured_export, reference):
    import trimesh

    _, _, folder = textured_export
    mesh = trimesh.load(folder / "model.ply", force="mesh", process=False)
    assert mesh.visual.kind == "vertex"
    rgb = mesh.visual.vertex_colors[:, :3] / 255.0
    front = np.argmax(mesh.vertices[:, 2])
    assert _near(rgb[front][None], NOSE, 0.1)[0]


def test_the_real_baker_s_glb_texture_matches_the_colour_field(tmp_path, reference):
    """With the texture baker installed: read back through glTF's own convention (v = 0 at the top
    row), the GLB's texture at 2,000 random surface points matches the field (MAE < 0.02)."""
    pytest.importorskip("threestudio_like.export.texture", reason="the texture baker is not installed here")
    import io

    from PIL import Image

    exporter = MeshExporter({"formats": ["glb"], "isosurface_resolution": 48, "texture_size": 256})
    (path,) = exporter(*reference, str(tmp_path))
    assert exporter.last_report.textured
    gltf, blob = formats.read_glb(path)
    pos, uv = _primitive(gltf, blob, "POSITION"), _primitive(gltf, blob, "TEXCOORD_0")
    tri = _primitive(gltf, blob, "indices").reshape(-1, 3)
    view = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
    png = blob[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    image = np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255
    rng = np.random.default_rng(0)
    faces = tri[rng.integers(0, len(tri), 2000)]
    w = rng.dirichlet((1, 1, 1), 2000)[..., None]
    points, texcoords = (pos[faces] * w).sum(1), (uv[faces] * w).sum(1)
    h, wid = image.shape[:2]
    x = np.clip(texcoords[:, 0] * wid - 0.5, 0, wid - 1)
    y = np.clip(texcoords[:, 1] * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, wid - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    texture = (image[y0, x0] * (1 - fx) * (1 - fy) + image[y0, x1] * fx * (1 - fy)
               + image[y1, x0] * (1 - fx) * fy + image[y1, x1] * fx * fy)
    field = reference[0].export(torch.from_numpy(to_world_frame(points).astype(np.float32)))["features"].numpy()
    assert np.abs(texture - field).mean() < 0.02


def _glb_image(gltf: dict, blob: bytes, index: int) -> np.ndarray:
    import io

    from PIL import Image

    view = gltf["bufferViews"][gltf["images"][index]["bufferView"]]
    return np.asarray(Image.open(io.BytesIO(blob[view["byteOffset"]:view["byteOffset"] + view["byteLength"]])))


def test_the_glb_normal_map_gives_back_the_field_normals(tmp_path, reference):
    """Read back as glTF defines it (B = w (N x T), +Y of the map up in the image, UVs with v = 0
    at the top), the GLB's normal map at 2,000 random surface points gives the field's own normals
    (the analytic density gradient) in the GLB's frame; OBJ and USDZ carry the same map."""
    pytest.importorskip("threestudio_like.export.texture", reason="the texture baker is not installed here")
    from threestudio_like.export.tangents import decode_tangent_space
    from threestudio_like.export.texture import sample_texture

    wanted = ["glb", "obj"] + (["usdz"] if formats.usd_available() else [])
    exporter = MeshExporter({"formats": wanted, "isosurface_resolution": 48, "texture_size": 256,
                             "target_faces": 2000, "normal_map": True})
    paths = exporter(*reference, str(tmp_path))
    assert exporter.last_report.normal_map
    gltf, blob = formats.read_glb(paths[0])
    material = gltf["materials"][0]
    assert material["normalTexture"]["index"] == 1 and gltf["textures"][1]["source"] == 1
    pos, normal, tangent = (_primitive(gltf, blob, k) for k in ("POSITION", "NORMAL", "TANGENT"))
    uv = _primitive(gltf, blob, "TEXCOORD_0")
    assert np.allclose(np.linalg.norm(tangent[:, :3], axis=-1), 1, atol=1e-4) and set(np.unique(tangent[:, 3])) <= {-1, 1}
    assert np.abs((tangent[:, :3] * normal).sum(-1)).max() < 1e-3
    tri = _primitive(gltf, blob, "indices").reshape(-1, 3).astype(np.int64)
    rng = np.random.default_rng(0)
    faces = tri[rng.integers(0, len(tri), 2000)]
    w = rng.dirichlet((1, 1, 1), 2000)[..., None]
    points, texcoords = (pos[faces] * w).sum(1), (uv[faces] * w).sum(1)
    n = (normal[faces] * w).sum(1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    t = (tangent[faces, :3] * w).sum(1)
    t -= n * (t * n).sum(-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    b = np.cross(n, t) * np.sign((tangent[faces, 3:] * w).sum(1))
    texels = sample_texture(_glb_image(gltf, blob, 1), np.stack([texcoords[:, 0], 1 - texcoords[:, 1]], 1))
    decoded = decode_tangent_space(texels, (t, b, n))
    world = torch.from_numpy(to_world_frame(points).astype(np.float32)).requires_grad_(True)
    (grad,) = torch.autograd.grad(reference[0].forward_density(world).sum(), world)
    truth = to_export_frame(-grad.numpy(), "y")
    truth /= np.linalg.norm(truth, axis=-1, keepdims=True)
    error = np.degrees(np.arccos(np.clip((decoded * truth).sum(-1), -1, 1)))
    mesh_error = np.degrees(np.arccos(np.clip((n * truth).sum(-1), -1, 1)))
    print(f"normal map: median {np.median(error):.2f} deg, mean {error.mean():.2f}; "
          f"mesh normals alone: median {np.median(mesh_error):.2f}, mean {mesh_error.mean():.2f}")
    assert np.median(error) < 1.5 and np.median(error) < np.median(mesh_error) / 2
    obj_dir = os.path.dirname(paths[1])
    with open(os.path.join(obj_dir, "model.mtl"), encoding="utf-8") as f:
        assert "map_Bump model_normal.png" in f.read()
    assert os.path.exists(os.path.join(obj_dir, "model_normal.png"))
    if "usdz" in wanted:
        from pxr import Usd, UsdShade

        stage = Usd.Stage.Open(paths[2])
        surface = UsdShade.Shader(stage.GetPrimAtPath("/model/material/surface"))
        (source,) = surface.GetInput("normal").GetConnectedSources()[0]
        assert source.source.GetPath().name == "normal"


def test_without_normals_in_the_recipe_no_normal_map_is_baked(tmp_path, reference):
    exporter = MeshExporter({"formats": ["glb"], "isosurface_resolution": 32, "texture_size": 64})
    exporter(*reference, str(tmp_path))
    gltf, _ = formats.read_glb(os.path.join(tmp_path, "model.glb"))
    assert not exporter.last_report.normal_map and "normalTexture" not in gltf["materials"][0]


def test_a_failing_baker_falls_back_to_vertex_colours(tmp_path, reference, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("atlas too small")

    monkeypatch.setattr(mesh_exporter, "import_baker", lambda: broken)
    exporter = MeshExporter({"formats": ["glb"], "isosurface_resolution": 24})
    (path,) = exporter(*reference, str(tmp_path))
    assert not exporter.last_report.textured
    assert "texture baking failed (RuntimeError: atlas too small)" in capsys.readouterr().out
    gltf, _ = formats.read_glb(path)
    assert "COLOR_0" in gltf["meshes"][0]["primitives"][0]["attributes"]


# -------------------------------------------------------------------------- a level that misses
def test_a_density_below_the_threshold_still_exports_every_format(tmp_path, capsys):
    faint = ReferenceObjectGeometry({"density_scale": 8.0, "isosurface_threshold": 100.0})
    material = find("no-material")({})
    with pytest.raises(IsosurfaceError, match="never crosses"):
        MeshExporter({"on_threshold_miss": "raise", "isosurface_resolution": 32})(faint, material, str(tmp_path))
    exporter = MeshExporter({"isosurface_resolution": 48, "bake_texture": False})
    paths = exporter(faint, material, str(tmp_path / "fit"))
    assert sorted(os.path.basename(p) for p in paths) == ["model.glb", "model.obj", "model.ply", "model.usdz"]
    level = exporter.last_report.level
    assert level["source"] == "opacity-matched" and 0 < level["level"] < 8
    assert "never crosses the isosurface threshold 100" in capsys.readouterr().out
    assert exporter.last_report.notes[0] == level["note"]
    import trimesh

    mesh = trimesh.load(tmp_path / "fit" / "model.ply", force="mesh", process=False)
    mesh.vertices = to_world_frame(np.asarray(mesh.vertices))
    assert volume_iou(mesh, faint.occupancy, resolution=40) > 0.85


def test_an_empty_field_is_still_an_error():
    from threestudio_like.geometry.isosurface import extract_isosurface

    with pytest.raises(IsosurfaceError, match="never crosses"):
        extract_isosurface(np.zeros((8, 8, 8), np.float32), -1, 1, 5.0, on_miss="fit")


# ------------------------------------------------------------------------------------ options
def test_usdz_asked_without_usd_core_names_the_extra(monkeypatch, tmp_path, reference, capsys):
    monkeypatch.setattr(formats, "usd_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install threestudio_like\[usdz\]"):
        MeshExporter({"formats": ["glb", "usdz"]})
    exporter = MeshExporter({"isosurface_resolution": 24, "bake_texture": False})
    paths = exporter(*reference, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["model.glb", "model.obj", "model.ply"]
    assert "usdz skipped" in capsys.readouterr().out


def test_exporter_config_is_checked():
    for bad in ({"keep_volume_share": 0}, {"keep_volume_share": 1.5}, {"target_faces": -1},
                {"texture_size": 2}, {"formats": ["stl"]}, {"up_axis": "x"}, {"formats": []}):
        with pytest.raises(ConfigError):
            MeshExporter(bad)


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "model.glb")
    with open(path, "w") as f:
        f.write("old")

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        formats.replace_into(path, broken)
    with open(path) as f:
        assert f.read() == "old"
    assert not os.path.exists(path + ".tmp")
