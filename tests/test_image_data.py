"""Image conditioning data: loading RGBA (or RGB + mask), clear errors, re-centring by the alpha
box, white compositing without edge bleeding, and the single-image data module's batches."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from threestudio_like import find
from threestudio_like.cli import main
from threestudio_like.data.image import (
    ImageLoadError,
    alpha_bbox,
    composite,
    load_reference_image,
    load_rgba,
    resize_rgba,
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
