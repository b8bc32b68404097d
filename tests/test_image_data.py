"""Image conditioning data: loading RGBA (or RGB + mask), clear errors, re-centring by the alpha
box, white compositing without edge bleeding, and the single-image data module's batches (one
image at the default camera, or several posed reference images)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_like import find
from threestudio_like.cameras import c2w_from_spherical, deg2rad, look_at
from threestudio_like.cli import main
from threestudio_like.config import ConfigError, load_config
from threestudio_like.data.image import (
    ImageLoadError,
    alpha_bbox,
    check_rigid_c2w,
    composite,
    load_reference_image,
    load_rgba,
    parse_references,
    resize_rgba,
    spherical_from_position,
)

from conftest import SHARED_DATA


def _rgba(path, size=(40, 60), box=(10, 20, 30, 50), colour=(200, 30, 30), background=(0, 0, 0, 0)):
    """A ``size`` (h, w) RGBA image, transparent except an opaque rectangle ``box`` (t, l, b, r)."""
    img = np.zeros((*size, 4), np.uint8)
    img[...] = background
    t, l, b, r = box
    img[t:b, l:r, :3] = colour
    img[t:b, l:r, 3] = 255
    Image.fromarray(img, "RGBA").save(path)
    return img


def test_load_rgba_and_mask(tmp_path):
    src = _rgba(tmp_path / "obj.png")
    rgba = load_rgba(str(tmp_path / "obj.png"))
    assert rgba.shape == (40, 60, 4) and rgba.dtype == torch.float32
    assert torch.allclose(rgba[..., 3], torch.from_numpy(src[..., 3] / 255.0).float())
    # RGB + a separate mask gives the same alpha
    Image.fromarray(src[..., :3]).save(tmp_path / "rgb.png")
    Image.fromarray(src[..., 3]).save(tmp_path / "mask.png")
    with_mask = load_rgba(str(tmp_path / "rgb.png"), str(tmp_path / "mask.png"))
    assert torch.equal(with_mask[..., 3], rgba[..., 3])
    assert alpha_bbox(rgba[..., 3]) == (10, 20, 30, 50)


def test_clear_errors(tmp_path):
    src = _rgba(tmp_path / "obj.png")
    with pytest.raises(ImageLoadError, match="not found"):
        load_rgba(str(tmp_path / "missing.png"))
    with pytest.raises(ImageLoadError, match="No image given"):
        load_rgba("")
    Image.fromarray(src[..., :3]).save(tmp_path / "rgb.png")
    with pytest.raises(ImageLoadError, match="no alpha channel.*mask_path"):
        load_rgba(str(tmp_path / "rgb.png"))
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="empty"):
        load_rgba(str(tmp_path / "rgb.png"), str(tmp_path / "empty.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageLoadError, match="same size"):
        load_rgba(str(tmp_path / "rgb.png"), str(tmp_path / "small.png"))
    opaque = src.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    with pytest.raises(ImageLoadError, match="fully opaque"):
        load_rgba(str(tmp_path / "opaque.png"))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="Could not read"):
        load_rgba(str(tmp_path / "junk.png"))


def test_recentre_scales_the_alpha_box_and_composites_on_white(tmp_path):
    # an off-centre 20 x 30 box in a 40 x 60 image; black hidden under alpha = 0
    _rgba(tmp_path / "obj.png", background=(0, 0, 0, 0))
    rgba = load_rgba(str(tmp_path / "obj.png"))
    out = resize_rgba(rgba, 64, 64, recenter=True, object_fraction=0.5)
    top, left, bottom, right = alpha_bbox(out[..., 3])
    assert right - left == 32  # longer side = 0.5 * 64
    assert abs((bottom - top) - 21) <= 1  # aspect ratio kept (20/30 * 32)
    assert abs((top + bottom) / 2 - 32) <= 1 and abs((left + right) / 2 - 32) <= 1  # centred
    rgb = composite(out)
    assert torch.allclose(rgb[0, 0], torch.ones(3))  # white background
    # premultiplied resampling: partially covered edge pixels blend red with white, never black
    edge = out[..., 3] > 0.05
    assert (rgb[edge][:, 0] > 0.75).all()
    # without re-centring the whole image is resized
    plain = resize_rgba(rgba, 20, 30, recenter=False)
    assert alpha_bbox(plain[..., 3]) == (5, 10, 15, 25)


def _dm(path, **extra):
    cfg = {"image_path": str(path), "height": [16, 32], "width": [16, 32], "resolution_milestones": [5],
           "condition_size": 64, "random_camera": {"height": 8, "width": 8, "batch_size": 2}, **extra}
    return find("single-image-datamodule")(cfg)


def test_datamodule_batches_and_progressive_resolution(tmp_path):
    _rgba(tmp_path / "obj.png")
    dm = _dm(tmp_path / "obj.png", default_elevation_deg=20.0, default_camera_distance=2.5)
    ds = dm.train_dataset
    batch = ds.collate([None])
    assert batch["rays_o"].shape == (1, 16, 16, 3) and batch["rgb"].shape == (1, 16, 16, 3)
    assert batch["mask"].shape == (1, 16, 16, 1) and batch["cond_rgb"].shape == (1, 64, 64, 3)
    assert batch["random_camera"]["rays_o"].shape == (2, 8, 8, 3)
    # the reference camera: elevation 20 at distance 2.5, azimuth 0 = +x, looking at the origin
    pos = batch["camera_positions"][0]
    expected = [2.5 * np.cos(np.radians(20)), 0.0, 2.5 * np.sin(np.radians(20))]
    assert torch.allclose(pos, torch.tensor(expected, dtype=pos.dtype), atol=1e-5)
    centre_ray = batch["rays_d"][0, 7:9, 7:9].mean((0, 1))
    assert torch.nn.functional.cosine_similarity(centre_ray, -pos, dim=0) > 0.999
    # the reference image equals the preprocessing functions' output
    ref = load_reference_image(str(tmp_path / "obj.png"), 16, 16)
    assert torch.equal(batch["rgb"], ref["rgb"]) and torch.equal(batch["mask"], ref["mask"])
    ds.do_update_step(0, 5)
    assert ds.collate([None])["rgb"].shape == (1, 32, 32, 3)
    assert len(dm.val_dataloader().dataset) == 1 and len(dm.test_dataloader().dataset) == 120


def test_cli_reports_image_problems_before_any_work(tmp_path, capsys):
    args = ["--config", "zero123-sjc.yaml", "--train", f"exp_root_dir={tmp_path}",
            "system.guidance.pretrained_model_name_or_path=tiny-random"]
    assert main(args) == 2
    assert "image=" in capsys.readouterr().err  # the image is required and the alias is named
    assert main(args + [f"image={tmp_path / 'nope.png'}"]) == 2
    assert "not found" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert main(args + [f"image={tmp_path / 'rgb.png'}"]) == 2
    assert "no alpha channel" in capsys.readouterr().err
    assert not glob.glob(os.path.join(str(tmp_path), "zero123-sjc", "*", "ckpts"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "images")), reason="shared images absent")
def test_real_rgba_inputs_are_framed_like_zero123():
    for path in sorted(glob.glob(os.path.join(SHARED_DATA, "images", "*_rgba.png"))):
        ref = load_reference_image(path, 256, 256)
        top, left, bottom, right = alpha_bbox(ref["alpha"][0, ..., 0])
        assert max(bottom - top, right - left) in (199, 200, 201), path
        assert abs((top + bottom) / 2 - 128) <= 1.5 and abs((left + right) / 2 - 128) <= 1.5, path
        assert torch.allclose(ref["rgb"][0, 0, 0], torch.ones(3), atol=1e-3), path


# ------------------------------------------------------------------------------------------
# several posed reference images (data.references)

ANGLES = [(0.0, 0.0, 2.0), (20.0, 90.0, 2.5), (-10.0, 200.0, 1.8)]  # elevation, azimuth, distance


def _views(tmp_path, n=3):
    """``n`` small RGBA images (different boxes) in ``tmp_path/views``; their file names."""
    folder = tmp_path / "views"
    folder.mkdir(exist_ok=True)
    names = []
    for i in range(n):
        _rgba(folder / f"v{i}.png", box=(5 + 3 * i, 10, 30, 40 + 5 * i), colour=(50 * i, 200, 30))
        names.append(f"v{i}.png")
    return folder, names


def _ref_dm(references, **extra):
    cfg = {"references": references, "height": [16, 24], "width": [16, 24], "resolution_milestones": [5],
           "condition_size": 32, "random_camera": {"height": 8, "width": 8, "batch_size": 2}, **extra}
    return find("single-image-datamodule")(cfg)


def _write_yaml(path, entries):
    import yaml

    path.write_text(yaml.safe_dump(entries))
    return str(path)


def test_references_from_yaml_file_batch_all_views(tmp_path):
    folder, names = _views(tmp_path)
    entries = [{"image": n, "elevation": e, "azimuth": a, "distance": d} for n, (e, a, d) in zip(names, ANGLES)]
    entries[1]["fovy"] = 40.0
    del entries[0]["distance"]  # -> default_camera_distance
    path = _write_yaml(folder / "refs.yaml", entries)
    dm = _ref_dm(path, default_camera_distance=2.0, default_fovy_deg=50.0)
    batch = dm.train_dataset.collate([None])
    shapes = {
        "rays_o": (3, 16, 16, 3), "rays_d": (3, 16, 16, 3), "c2w": (3, 4, 4), "mvp_mtx": (3, 4, 4),
        "camera_positions": (3, 3), "light_positions": (3, 3), "elevation": (3,), "azimuth": (3,),
        "camera_distances": (3,), "fovy": (3,), "rgb": (3, 16, 16, 3), "mask": (3, 16, 16, 1),
        "cond_rgb": (3, 32, 32, 3), "cond_mask": (3, 32, 32, 1),
    }
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, key
    assert batch["height"] == 16 and batch["width"] == 16
    assert batch["n_references"] == 3 and batch["n_views"] == 1
    assert batch["random_camera"]["rays_o"].shape == (2, 8, 8, 3)
    assert torch.allclose(batch["fovy"], torch.tensor([50.0, 40.0, 50.0]))
    assert torch.allclose(batch["camera_distances"], torch.tensor([2.0, 2.5, 1.8]))
    # each camera at its spherical position, looking at the origin
    el, az, d = (torch.tensor(v) for v in zip(*ANGLES))
    expected = c2w_from_spherical(deg2rad(el), deg2rad(az), d)
    assert torch.allclose(batch["c2w"], expected, atol=1e-5)
    centre = batch["rays_d"][:, 7:9, 7:9].mean((1, 2))
    assert (torch.nn.functional.cosine_similarity(centre, -batch["camera_positions"], dim=-1) > 0.999).all()
    # each image is its own file, framed independently (re-centred) like the single-image path
    for i, name in enumerate(names):
        ref = load_reference_image(str(folder / name), 16, 16)
        assert torch.equal(batch["rgb"][i : i + 1], ref["rgb"]) and torch.equal(batch["mask"][i : i + 1], ref["mask"])
    assert not torch.equal(batch["cond_rgb"][0], batch["cond_rgb"][1])
    # progressive resolution applies to every reference
    dm.train_dataset.do_update_step(0, 5)
    later = dm.train_dataset.collate([None])
    assert later["rgb"].shape == (3, 24, 24, 3) and later["rays_o"].shape == (3, 24, 24, 3)
    # the posed conditioning views for sampling
    views = dm.reference_views()
    assert views["cond_rgb"].shape == (3, 32, 32, 3) and views["c2w"].shape == (3, 4, 4)
    assert views["camera_positions"].shape == (3, 3) and views["fovy"].shape == (3,)
    assert torch.equal(views["c2w"], batch["c2w"]) and torch.equal(views["cond_rgb"], batch["cond_rgb"])


def test_references_from_json_parallel_lists_match_the_entry_list(tmp_path, monkeypatch):
    folder, names = _views(tmp_path)
    el, az, d = (list(v) for v in zip(*ANGLES))
    path = folder / "refs.json"
    path.write_text(json.dumps({"images": names, "elevations": el, "azimuths": az, "distances": d}))
    batch = _ref_dm(str(path)).train_dataset.collate([None])
    assert batch["rgb"].shape == (3, 16, 16, 3) and batch["cond_rgb"].shape == (3, 32, 32, 3)
    assert batch["rays_o"].shape == (3, 16, 16, 3) and batch["n_references"] == 3
    # a JSON list of entries, and an inline list (paths relative to the working directory)
    entries = [{"image": n, "elevation": e, "azimuth": a, "distance": dd} for n, e, a, dd in zip(names, el, az, d)]
    (folder / "list.json").write_text(json.dumps(entries))
    other = _ref_dm(str(folder / "list.json")).train_dataset.collate([None])
    monkeypatch.chdir(folder)
    inline = _ref_dm(entries).train_dataset.collate([None])
    for b in (other, inline):
        for key in ("rays_o", "rays_d", "c2w", "rgb", "mask", "cond_rgb", "elevation", "azimuth"):
            assert torch.equal(b[key], batch[key]), key


def test_c2w_reference_uses_the_given_matrix(tmp_path):
    folder, names = _views(tmp_path, 2)
    # a camera that does not look at the origin, with a rolled up vector: not a spherical look-at
    c2w = look_at(torch.tensor([[1.2, -0.7, 0.9]]), torch.tensor([[0.1, 0.2, -0.1]]), torch.tensor([0.2, 0.1, 1.0]))[0]
    entries = [{"image": names[0], "c2w": c2w.tolist(), "fovy": 35.0},
               {"image": names[1], "c2w": c2w[:3].tolist()}]  # 3x4 is fine too
    batch = _ref_dm(_write_yaml(folder / "refs.yaml", entries)).train_dataset.collate([None])
    assert torch.equal(batch["c2w"][0], c2w) and torch.equal(batch["c2w"][1], c2w)
    assert torch.equal(batch["camera_positions"][0], c2w[:3, 3])
    assert torch.allclose(batch["rays_o"][0], c2w[:3, 3].expand(16, 16, 3))
    centre = batch["rays_d"][0, 7:9, 7:9].mean((0, 1))
    assert torch.nn.functional.cosine_similarity(centre, -c2w[:3, 2], dim=0) > 0.9999
    assert batch["fovy"].tolist() == pytest.approx([35.0, 49.1])
    # elevation/azimuth/distance are those of the camera position
    pos = c2w[:3, 3]
    assert batch["camera_distances"][0] == pytest.approx(float(pos.norm()), abs=1e-5)
    assert batch["elevation"][0] == pytest.approx(np.degrees(np.arcsin(0.9 / float(pos.norm()))), abs=1e-4)
    assert batch["azimuth"][0] == pytest.approx(np.degrees(np.arctan2(-0.7, 1.2)), abs=1e-4)


def test_look_at_c2w_entries_give_the_spherical_rays(tmp_path):
    folder, names = _views(tmp_path)
    el, az, d = (torch.tensor(v) for v in zip(*ANGLES))
    c2w = c2w_from_spherical(deg2rad(el), deg2rad(az), d)
    spherical = [{"image": n, "elevation": e, "azimuth": a, "distance": dd} for n, (e, a, dd) in zip(names, ANGLES)]
    matrices = [{"image": n, "c2w": m.tolist()} for n, m in zip(names, c2w)]
    a = _ref_dm(_write_yaml(folder / "a.yaml", spherical)).train_dataset.collate([None])
    b = _ref_dm(_write_yaml(folder / "b.yaml", matrices)).train_dataset.collate([None])
    for key in ("rays_o", "rays_d", "c2w", "mvp_mtx", "camera_positions", "elevation", "camera_distances"):
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert torch.allclose(torch.remainder(a["azimuth"] - b["azimuth"] + 180, 360) - 180, torch.zeros(3), atol=1e-3)
    e2, a2, d2 = spherical_from_position(c2w[:, :3, 3])
    assert torch.allclose(e2, el, atol=1e-4) and torch.allclose(d2, d, atol=1e-5)


def _rotation_z(deg):
    c, s = float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))
    return [[c, -s, 0, 1.0], [s, c, 0, 0.5], [0, 0, 1, 0.3], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    "entries, pattern",
    [
        ([], r"refs\.yaml.*empty"),
        ([{"image": "v0.png"}, {"mask": "v1.png", "azimuth": 3}], r"entry 1 of .*refs\.yaml.*missing 'image'"),
        ([{"image": "v0.png", "elevaton": 10}], r"entry 0 .*refs\.yaml.*unknown key 'elevaton'.*Did you mean 'elevation'"),
        ([{"image": "v0.png"}, {"image": "v1.png", "c2w": _rotation_z(30), "azimuth": 90}],
         r"entry 1 .*either as 'c2w' or as elevation/azimuth/distance.*azimuth"),
        ([{"image": "v0.png", "distance": 0}], r"entry 0 .*'distance' must be > 0"),
        ([{"image": "v0.png"}, {"image": "v1.png", "distance": -1.5}], r"entry 1 .*'distance' must be > 0"),
        ([{"image": "v0.png", "c2w": [[2, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]}],
         r"entry 0 .*not orthonormal.*rigid"),
        ([{"image": "v0.png", "c2w": [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]]}],
         r"entry 0 .*determinant -1.*mirrors"),
        ([{"image": "v0.png", "c2w": [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]}],
         r"entry 0 .*bottom row.*\[0, 0, 0, 1\]"),
        ([{"image": "v0.png", "c2w": [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]}],
         r"entry 0 .*non-finite"),
        ([{"image": "v0.png", "c2w": [[1, 0, 0], [0, 1, 0]]}], r"entry 0 .*4x4 \(or 3x4\).*2x3"),
        ([{"image": "v0.png", "c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}],
         r"entry 0 .*at the origin"),
        ([{"image": "v0.png", "elevation": "high"}], r"entry 0 .*'elevation' must be a number"),
        ([{"image": "v0.png", "fovy": 200}], r"entry 0 .*'fovy' must be in \(0, 180\)"),
        ({"image": "v0.png"}, r"single entry must still be in a list"),
        ({"images": None, "elevations": [0]}, r"mapping form needs 'images: \[...\]'"),
        ({"images": ["v0.png"], "azimuth": [0]}, r"unknown key 'azimuth'.*Did you mean 'azimuths'"),
        ({"images": ["v0.png", "v1.png"], "c2ws": [_rotation_z(0), _rotation_z(90)], "elevations": [0, 0]},
         r"either 'c2ws' or 'elevations'"),
        ({"images": ["v0.png", "v1.png", "v2.png"], "elevations": [0, 10], "azimuths": [0, 90, 180]},
         r"different lengths \(images: 3, elevations: 2, azimuths: 3\)"),
    ],
)
def test_bad_references_are_named(tmp_path, entries, pattern):
    folder, _ = _views(tmp_path)
    path = folder / "refs.yaml"
    if isinstance(entries, list) and any("c2w" in e and "nan" in str(e["c2w"]) for e in entries):
        path = folder / "refs.json"  # NaN needs JSON (or YAML's .nan)
        path.write_text(json.dumps(entries))
        pattern = pattern.replace("refs\\.yaml", "refs\\.json")
    else:
        _write_yaml(path, entries)
    with pytest.raises(ConfigError, match=pattern):
        _ref_dm(str(path))


def test_references_file_and_image_problems_name_the_entry(tmp_path):
    folder, names = _views(tmp_path)
    with pytest.raises(ConfigError, match=r"References file not found: .*nope\.yaml"):
        _ref_dm(str(folder / "nope.yaml"))
    (folder / "bad.json").write_text("[{\"image\": ")
    with pytest.raises(ConfigError, match=r"Could not read the references file .*bad\.json"):
        _ref_dm(str(folder / "bad.json"))
    path = _write_yaml(folder / "refs.yaml", [{"image": names[0]}, {"image": "missing.png"}])
    with pytest.raises(ImageLoadError, match=r"entry 1 of .*refs\.yaml.*not found: .*missing\.png"):
        _ref_dm(path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "rgb.png")
    path = _write_yaml(folder / "refs.yaml", [{"image": names[0]}, {"image": "rgb.png"}])
    with pytest.raises(ImageLoadError, match=r"entry 1 .*no alpha channel.*'mask:' key"):
        _ref_dm(path)
    # an RGB image with a mask entry works; the mask path is relative to the file too
    src = _rgba(folder / "obj.png")
    Image.fromarray(src[..., :3]).save(folder / "rgb2.png")
    Image.fromarray(src[..., 3]).save(folder / "mask2.png")
    path = _write_yaml(folder / "refs.yaml", [{"image": "rgb2.png", "mask": "mask2.png"}, {"image": "obj.png"}])
    batch = _ref_dm(path).train_dataset.collate([None])
    assert torch.equal(batch["mask"][0], batch["mask"][1])


def test_image_path_or_references_not_both(tmp_path):
    folder, names = _views(tmp_path, 1)
    path = _write_yaml(folder / "refs.yaml", [{"image": names[0]}])
    with pytest.raises(ConfigError, match=r"Both data.image_path .* and data.references are set"):
        _ref_dm(path, image_path=str(folder / names[0]))
    with pytest.raises(ImageLoadError, match=r"No image given.*image=.*references="):
        _ref_dm(None)
    with pytest.raises(ConfigError, match=r"mask_path applies to data.image_path only"):
        _ref_dm(path, mask_path=str(folder / names[0]))
    # a single image_path is one reference view at the default camera
    batch = _dm(folder / names[0]).train_dataset.collate([None])
    assert batch["n_references"] == 1 and batch["n_views"] == 1


def test_check_rigid_and_parse_helpers():
    c2w = check_rigid_c2w(_rotation_z(30)[:3])
    assert c2w.shape == (4, 4) and c2w.dtype == torch.float32
    with pytest.raises(ConfigError, match="my camera.*4x4"):
        check_rigid_c2w("eye", "my camera")
    views = parse_references({"images": ["a.png", "b.png"], "distances": 3.0, "azimuths": [0, 90]})
    assert [v.distance for v in views] == [3.0, 3.0] and [v.azimuth_deg for v in views] == [0.0, 90.0]
    assert views[1].image == "b.png" and not views[1].from_c2w


def test_references_alias_and_basename_of_unset_values(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: refs\ntag: ${basename:${data.references}}${basename:${data.mask_path}}\n"
        "data_type: single-image-datamodule\ndata:\n  image_path: ''\n  references: null\n  mask_path: null\n"
    )
    cfg = load_config(str(recipe), ["references=views/refs.yaml", f"exp_root_dir={tmp_path}"])
    assert cfg.data.references == "views/refs.yaml" and cfg.tag == "refs"
    cfg = load_config(str(recipe), [f"exp_root_dir={tmp_path}"])
    assert cfg.data.references is None and cfg.tag == ""
