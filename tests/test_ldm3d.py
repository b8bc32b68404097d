"""LDM3D: RGBD packing round trips, parity with diffusers' LDM3D pipeline on tiny random weights,
text-to-RGBD --sample end to end, the RGBD guidance's gradients and a tiny training run."""
from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from threestudio_like.cameras import Cameras, c2w_from_spherical
from threestudio_like.cli import main
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.ldm3d import LDM3DGuidance
from threestudio_like.models import rgbd as R
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings

# ------------------------------------------------------------------------------------------ packing


def test_6c_packing_round_trips_every_16_bit_value_exactly():
    depth16 = np.arange(65536, dtype=np.uint16)
    rgblike = R.depth16_to_rgblike(depth16)
    assert rgblike.dtype == np.uint8 and np.array_equal(R.rgblike_to_depth16(rgblike), depth16)
    # through the autoencoder's float layout and the pipeline's post-processing (bytes round(255 x))
    unit = torch.from_numpy(depth16.astype(np.float32) / 65535).view(1, 1, 256, 256, 1)[0]
    pixels = R.vae_pixels(torch.cat([torch.zeros(1, 256, 256, 3), unit], -1), 6)
    _, back = R.postprocess_rgbd(pixels)
    assert np.array_equal(back[0].reshape(-1), depth16)


def test_4c_normalisation_round_trips_within_one_16_bit_step():
    depth16 = np.arange(65536, dtype=np.uint16)
    unit = torch.from_numpy(R.depth16_to_unit(depth16)).view(1, 256, 256, 1)
    pixels = R.vae_pixels(torch.cat([torch.zeros(1, 256, 256, 3), unit], -1), 4)
    assert pixels.shape == (1, 4, 256, 256) and pixels.min() >= -1 and pixels.max() <= 1
    _, back = R.postprocess_rgbd(pixels)
    diff = back[0].reshape(-1).astype(np.int64) - depth16
    assert diff.min() >= -1 and diff.max() <= 0  # truncation: never above, at most one step below
    assert np.array_equal(R.unit_to_depth16(R.depth16_to_unit(depth16) + 1e-6), depth16)


def test_6c_depth_gradient_passes_through_the_high_byte():
    d = torch.full((1, 2, 2, 1), 0.5, requires_grad=True)
    R.vae_pixels(torch.cat([torch.zeros(1, 2, 2, 3), d], -1), 6)[:, 3:].sum().backward()
    assert d.grad is not None and (d.grad > 0).all()


def test_depth_convention_is_inverse_normalised_background_far():
    # a slanted surface: nearer pixels (smaller ray distance) get larger values; background is 0
    depth = torch.tensor([[1.0, 2.0], [4.0, 0.0]]).view(1, 2, 2, 1)
    opacity = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(1, 2, 2, 1)
    d = R.ldm3d_depth(depth, opacity)
    assert torch.allclose(d.view(-1), torch.tensor([1.0, 0.5, 0.25, 0.0]))
    metric = R.ldm3d_depth(depth, opacity, convention="metric").view(-1)
    assert metric[0] < metric[1] < metric[2]  # the wrong convention orders them the other way
    # planar depth: off-axis rays are longer than the depth they measure
    cos = R.axis_cosines(torch.tensor([60.0]), 4, 4)
    assert cos.shape == (1, 4, 4, 1) and cos.max() < 1 and torch.allclose(cos[0, 1, 1], cos[0, 2, 2])


# ------------------------------------------------------------------------------------------ parity


def _guidance(channels: int, size: int = 64) -> LDM3DGuidance:
    return LDM3DGuidance({"pretrained_model_name_or_path": "tiny-random", "image_size": size,
                          "tiny_vae_channels": channels})


def _pipeline(guidance: LDM3DGuidance):
    from diffusers import StableDiffusionLDM3DPipeline

    from threestudio_like.models.builders import make_ddim_scheduler, tiny_text_encoder
    from threestudio_like.prompt.stable_diffusion import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return StableDiffusionLDM3DPipeline(
        vae=guidance.vae, text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        unet=guidance.unet, scheduler=make_ddim_scheduler(), safety_checker=None, feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


@pytest.mark.parametrize("channels", [4, 6])
def test_sampling_equals_the_diffusers_ldm3d_pipeline(channels):
    """Same tiny random weights (every parameter re-randomised), same noise and prompt
    embeddings: our DDIM + CFG + RGBD decode equals StableDiffusionLDM3DPipeline's output."""
    guidance = _guidance(channels)
    assert guidance.vae_channels == channels and guidance.vae.config.out_channels == channels
    assert all(p.abs().min() >= 0 and p.std() > 0 for p in guidance.unet.parameters() if p.numel() > 1)
    gen = torch.Generator().manual_seed(3)
    cond, uncond = torch.randn(77, 32, generator=gen), torch.randn(77, 32, generator=gen)
    condition = PromptEmbeddings("p", "", cond, uncond)
    settings = SimpleNamespace(steps=3, guidance_scale=5.0, eta=0.0, height=64, width=64)
    ours = guidance.sample(condition, settings, generator=torch.Generator().manual_seed(7)).decoded
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    pipe = _pipeline(guidance)
    kwargs = {"prompt_embeds": cond[None], "negative_prompt_embeds": uncond[None], "num_inference_steps": 3,
              "guidance_scale": 5.0, "latents": noise.clone(), "height": 64, "width": 64}
    out = pipe(output_type="np", **kwargs)
    x = (ours * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(x[..., :3] - out.rgb).max() < 1e-5
    if channels == 4:
        assert np.abs(x[..., 3:] - out.depth).max() < 1e-5
        # the pipeline's PIL writers (numpy_to_pil / numpy_to_depth) on its own float output; their
        # PIL call fails for [H, W, 1] uint16 arrays with this Pillow, so the arrays are compared
        rgb16, depth16 = R.postprocess_rgbd(ours)
        assert np.abs((out.rgb * 255).round().astype(np.int64) - rgb16).max() <= 1
        pipe_depth = (out.depth[..., 0] * 65535.0).astype(np.uint16)
        assert np.abs(pipe_depth.astype(np.int64) - depth16).max() <= 1
        assert (pipe_depth == depth16).mean() > 0.99
    else:
        # diffusers 0.42's np/PIL 6c depth casts G' 256 + B' back to the input dtype (zeros for
        # floats, the low byte for uint8): compare the decoded 6 channels of the pipeline's own
        # latents, and the packing rule on its bytes through its rgblike_to_depthmap (int32 input)
        from diffusers.image_processor import VaeImageProcessorLDM3D

        captured = {}

        def keep(pipeline, step, t, tensors):
            captured["latents"] = tensors["latents"].clone()
            return tensors

        pipe(output_type="np", callback_on_step_end=keep, **{**kwargs, "latents": noise.clone()})
        latents = captured["latents"]
        with torch.no_grad():
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        assert np.abs(decoded.numpy() - ours.numpy()).max() < 1e-5
        _, depth16 = R.postprocess_rgbd(ours)
        bytes_ = torch.from_numpy((x[0, ..., 3:] * 255).round().astype(np.int32))
        assert np.array_equal(VaeImageProcessorLDM3D.rgblike_to_depthmap(bytes_).numpy(), depth16[0])


def test_encoding_uses_the_rgbd_autoencoder_and_reaches_depth():
    guidance = _guidance(4)
    cameras = Cameras.from_c2w(c2w_from_spherical(torch.zeros(2), torch.tensor([0.0, 1.0]), torch.full((2,), 2.0)),
                               fovy=torch.full((2,), 50.0))
    renders = torch.rand(2, 16, 16, 5)
    renders[..., 4] = 1.0
    renders.requires_grad_(True)
    torch.manual_seed(0)
    latents = guidance.rgbd_latents(renders, cameras)
    assert latents.shape == (2, 4, 8, 8)
    latents.sum().backward()
    assert renders.grad[..., :3].abs().sum() > 0 and renders.grad[..., 3].abs().sum() > 0
    with pytest.raises(ConfigError, match="colour, depth and opacity"):
        guidance.rgbd_latents(torch.rand(1, 16, 16, 3), cameras)


def test_plain_sd_autoencoder_is_rejected_with_a_clear_message():
    from threestudio_like.guidance.ldm3d import _check_ldm3d
    from threestudio_like.models.architectures import TINY_LDM3D_UNET
    from threestudio_like.models.builders import tiny_unet, tiny_vae

    with pytest.raises(ConfigError, match="not an LDM3D model.*3 input channels"):
        _check_ldm3d({"vae": tiny_vae(), "unet": tiny_unet(TINY_LDM3D_UNET)}, "some/sd-folder")


def test_missing_weights_offline_names_the_repo_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", "ldm3d.yaml", "--sample", "prompt=a room", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Intel/ldm3d-4c" in err and "hf download" in err and "tiny-random" in err


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("channels", [4, 6])
def test_sample_writes_rgb_16_bit_depth_and_preview(tmp_path, channels):
    from PIL import Image

    args = ["--config", "ldm3d.yaml", "--sample", "prompt=a cosy room", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", "sample.steps=2", "sample.width=128",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
            f"system.guidance.tiny_vae_channels={channels}"]
    assert main(args) == 0
    save, = glob.glob(str(tmp_path / "ldm3d" / "*" / "save"))
    rgb = Image.open(os.path.join(save, "sample-seed0-0-rgb.png"))
    depth = Image.open(os.path.join(save, "sample-seed0-0-depth.png"))
    preview = Image.open(os.path.join(save, "sample-seed0-0-depth-preview.png"))
    assert (rgb.mode, rgb.size) == ("RGB", (128, 64)) and depth.mode in ("I;16", "I") and depth.size == (128, 64)
    assert (preview.mode, preview.size) == ("RGB", (128, 64))
    assert np.asarray(depth).max() > np.asarray(depth).min()  # a 16-bit map, not a constant


def test_sds_gradient_reaches_depth_and_opacity_with_view_prompts(tmp_path):
    from threestudio_like import find

    pp = find("view-dependent-prompt-processor")({"prompt": "a corgi", "pretrained_model_name_or_path": "tiny-random",
                                                  "cache_dir": str(tmp_path)})
    guidance = _guidance(4)
    guidance.cfg.guidance_scale = 7.5
    c2w = c2w_from_spherical(torch.zeros(2), torch.tensor([0.0, 3.0]), torch.full((2,), 2.0))
    renders = torch.rand(2, 16, 16, 5)
    renders[..., 3] = 1.5 + renders[..., 3]  # ray distances
    renders.requires_grad_(True)
    out = guidance(renders, pp(), Cameras.from_c2w(c2w, fovy=torch.full((2,), 50.0)))
    assert set(out) >= {"loss_sds", "grad_norm", "timestep"}
    out["loss_sds"].backward()
    grad = renders.grad
    assert torch.isfinite(grad).all()
    assert grad[..., :3].abs().sum() > 0 and grad[..., 3].abs().sum() > 0 and grad[..., 4].abs().sum() > 0


TINY_LDM3D = [
    "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
    "data.height=16", "data.width=16", "data.batch_size=1", "data.resolution_milestones=[]",
    "data.eval_height=16", "data.eval_width=16", "data.n_val_views=1", "data.n_test_views=4",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.isosurface_resolution=32", "system.geometry.isosurface_threshold=auto",
    "system.renderer.num_samples_per_ray=32", "system.test_fps=4", "trainer.precision=32",
]


def _train(tmp_path, steps: int, every: int) -> str:
    """Train ldm3d.yaml with tiny-random weights at toy size; returns the trial folder."""
    args = ["--config", "ldm3d.yaml", "--train", "prompt=a DSLR photo of a corgi", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", *TINY_LDM3D,
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={every}",
            f"checkpoint.every_n_train_steps={every}"]
    assert main(args) == 0
    trial, = glob.glob(str(tmp_path / "ldm3d" / "*"))
    return trial


def test_recipe_trains_with_tiny_random_and_writes_checkpoint_turntable_mesh(tmp_path):
    trial = _train(tmp_path, 6, 3)
    for rel in ("ckpts/last.ckpt", "save/it6-test.mp4", "save/it6-export/model.obj"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and not [k for k in ckpt["state_dict"] if "unet" in k or "vae" in k]


def test_pano_sample_writes_the_spherical_glb_and_the_360_video(tmp_path):
    args = ["--config", "ldm3d-pano.yaml", "--sample", "prompt=a bedroom", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", "sample.steps=2", "sample.height=64",
            "sample.width=128", "system.guidance.pretrained_model_name_or_path=tiny-random",
            "system.guidance.image_size=64", "sample.scene_frames=3"]
    assert main(args) == 0
    save, = glob.glob(str(tmp_path / "ldm3d-pano" / "*" / "save"))
    names = sorted(os.listdir(save))
    assert "sample-seed0-0-scene.glb" in names and "sample-seed0-0-scene.mp4" in names
    assert "sample-seed0-0-depth.png" in names


def test_scene_from_a_given_rgbd_panorama_and_clear_errors(tmp_path, capsys):
    from PIL import Image

    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pano.png")
    Image.fromarray(np.full((32, 64), 30000, np.uint16)).save(tmp_path / "pano_depth.png")
    Image.fromarray(rgb).save(tmp_path / "preview.png")
    base = ["--config", "ldm3d-pano.yaml", "--sample", "prompt=unused", f"exp_root_dir={tmp_path / 'out'}",
            "sample.scene_frames=3"]
    assert main([*base, f"image={tmp_path / 'pano.png'}", f"depth={tmp_path / 'pano_depth.png'}"]) == 0
    assert glob.glob(str(tmp_path / "out" / "ldm3d-pano" / "*" / "save" / "scene-scene.glb"))
    # the coloured preview is not a depth map; an image without its depth is refused
    assert main([*base, f"image={tmp_path / 'pano.png'}", f"depth={tmp_path / 'preview.png'}"]) == 2
    assert "16-bit depth PNG" in capsys.readouterr().err
    assert main([*base, f"image={tmp_path / 'pano.png'}"]) == 2
    assert "depth=" in capsys.readouterr().err


def test_depth_preview_is_bright_near_and_spans_the_ramp():
    from threestudio_like.sampling.rgbd import depth_preview

    depth = np.array([[0, 30000, 65535]], np.uint16)
    preview = depth_preview(depth).astype(int)
    assert preview.shape == (1, 3, 3) and preview.dtype == int
    assert preview[0, 0].sum() < 20 and preview[0, 2].sum() > 600  # far dark, near bright
    assert preview[0, 0].sum() < preview[0, 1].sum() < preview[0, 2].sum()


@pytest.mark.slow
def test_recipe_trains_a_few_hundred_steps_with_tiny_random(tmp_path):
    trial = _train(tmp_path, 200, 100)
    for rel in ("ckpts/last.ckpt", "save/it200-test.mp4", "save/it200-export/model.obj", "save/it200-0.png"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
