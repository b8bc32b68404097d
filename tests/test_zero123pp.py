"""Zero123++: reference attention vs a re-derivation of upstream's two-pass UNet, tiling, the six
cameras, the guidance's gradients and CFG branches, --sample, the recipe, and missing weights."""
from __future__ import annotations

import copy
import glob
import json
import math
import os

import numpy as np
import pytest
import torch

from threestudio_like import find
from threestudio_like.cameras import Cameras
from threestudio_like.cli import main
from threestudio_like.data.random_camera import make_batch
from threestudio_like.errors import ConfigError, MissingWeightsError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.zero123pp import (LAYOUTS, ZERO123PP_WEIGHTS, Zero123PlusModel, encode_empty_prompt,
                                                 load_zero123pp, scale_image, scale_latents, tile_views,
                                                 unscale_latents, untile_views, version_of)
from threestudio_like.guidance.zero123pp_guidance import Zero123PlusCondition
from threestudio_like.models.loader import load_model
from threestudio_like.sampling.zero123pp import euler_ancestral_scheduler, sample_six_views

TILE = 32


@pytest.fixture(scope="module")
def model():
    return load_zero123pp("tiny-random", device="cpu", tile_size=TILE)


@pytest.fixture(scope="module")
def guidance():
    return find("zero123pp-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": TILE})


# ------------------------------------------------------------------------------ (a) parity
class UpstreamRefOnlyProc:
    """Re-derivation of upstream's ``ReferenceOnlyAttnProc`` chained to diffusers' SDPA processor:
    "w" stores the attn1 input tokens by layer name, "r" appends them to the keys/values."""

    def __init__(self, name, enabled):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name, self.enabled, self.chained = name, enabled, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, mode="w", ref_dict=None):
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        if self.enabled:
            if mode == "w":
                ref_dict[self.name] = encoder_hidden_states
            else:
                encoder_hidden_states = torch.cat([encoder_hidden_states, ref_dict.pop(self.name)], dim=1)
        return self.chained(attn, hidden_states, encoder_hidden_states, attention_mask)


def upstream_cfg_v(unet, x_in, t, cond_lat, noise, text, ramp, image_embeds, scale, scheduler):
    """Upstream's pipeline step: rows [uncond, cond]; the reference latents are noised by the
    Euler scheduler's add_noise + scale_model_input; a write pass, then a read pass; CFG on v."""
    ehs = torch.cat([text, text + ramp[None, :, None] * image_embeds[:, None, :]])
    noisy = scheduler.add_noise(cond_lat, noise, t.reshape(-1).expand(2))
    noisy = noisy / ((scheduler.sigmas[scheduler.index_for_timestep(t)] ** 2 + 1) ** 0.5)
    ref_dict = {}
    unet(noisy, t, encoder_hidden_states=ehs, cross_attention_kwargs=dict(mode="w", ref_dict=ref_dict))
    v = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=ehs,
             cross_attention_kwargs=dict(mode="r", ref_dict=ref_dict)).sample
    v_uncond, v_cond = v.chunk(2)
    return v_uncond + scale * (v_cond - v_uncond)


def test_v_prediction_matches_upstream_two_pass_reference_unet(model):
    g = torch.Generator().manual_seed(0)
    reference = model.encode_reference(torch.rand(3, 40, 40, generator=g), g)
    upstream = copy.deepcopy(model.unet)
    upstream.set_attn_processor({n: UpstreamRefOnlyProc(n, n.endswith("attn1.processor")) for n in upstream.attn_processors})
    scheduler = euler_ancestral_scheduler()
    scheduler.set_timesteps(28)
    t = scheduler.timesteps[9]
    latents = torch.randn(1, 4, 3 * TILE // 8, 2 * TILE // 8, generator=g) * scheduler.init_noise_sigma
    x_in = latents / ((scheduler.sigmas[9] ** 2 + 1) ** 0.5)
    noise = torch.randn(2, *reference.latents.shape[1:], generator=g)  # rows: cond, uncond (ours)
    embeds = model.vision_encoder(pixel_values=model.clip_pixels(torch.rand(1, 3, 40, 40, generator=g))).image_embeds
    context = torch.cat([model.global_context(embeds), model.prompt_embedding.embedding])
    with torch.no_grad():
        ours_rows = model.predict_v(torch.cat([x_in, x_in]), t.expand(2), context, reference.latents, noise)
        v_cond, v_uncond = ours_rows.chunk(2)
        ours = D.classifier_free_guidance(v_uncond, v_cond, 4.0)
        theirs = upstream_cfg_v(upstream, x_in, t, reference.latents.flip(0), noise.flip(0),
                                model.prompt_embedding.embedding, model.ramping.coefficients, embeds, 4.0, scheduler)
    diff = (ours - theirs).abs().max().item()
    print(f"Zero123++ v-prediction vs upstream two-pass reference: max abs diff {diff:.2e} (std {theirs.std():.3f})")
    assert diff < 1e-4 and theirs.std() > 1e-2
    # the reference matters: without the write pass's tokens the prediction differs
    plain = copy.deepcopy(model.unet)
    plain.set_attn_processor({n: UpstreamRefOnlyProc(n, False) for n in plain.attn_processors})
    with torch.no_grad():
        alone = plain(x_in, t, encoder_hidden_states=context[:1]).sample
    assert (alone - v_cond).abs().max() > 1e-2


def test_global_context_is_text_plus_ramped_image_embedding(model):
    embeds = torch.randn(2, model.prompt_embedding.embedding.shape[-1])
    text, ramp = model.prompt_embedding.embedding[0], model.ramping.coefficients
    expected = torch.stack([text + ramp[:, None] * e[None, :] for e in embeds])
    assert ramp.numel() == 77 and ramp.abs().min() > 0  # re-randomised, not a constant ramp
    assert torch.allclose(model.global_context(embeds), expected, atol=1e-6)


def test_eps_from_v_is_the_ddpm_identity():
    abar = D.linear_alphas_cumprod()
    assert torch.allclose(abar, torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([10, 500, 990])
    a, s = abar[t].sqrt().float()[:, None, None, None], (1 - abar[t]).sqrt().float()[:, None, None, None]
    x_t, v = a * x0 + s * eps, a * eps - s * x0
    assert torch.allclose(D.eps_from_v(x_t, v, t, abar.float()), eps, atol=1e-5)


# ------------------------------------------------------------------------------ (b) tiling, scalings
def test_tile_untile_round_trip_and_row_major_layout():
    views = torch.randn(12, 3, 8, 8)
    grids = tile_views(views)
    assert grids.shape == (2, 3, 24, 16)
    assert torch.equal(untile_views(grids), views)
    labels = torch.arange(6.0)[:, None, None, None].expand(6, 1, 4, 4)
    grid = tile_views(labels)[0, 0]
    for i in range(6):
        r, c = divmod(i, 2)
        assert torch.all(grid[4 * r:4 * r + 4, 4 * c:4 * c + 4] == i)
    with pytest.raises(ConfigError, match="sixes"):
        tile_views(torch.zeros(5, 3, 8, 8))


def test_latent_and_image_scalings():
    z = torch.randn(2, 4, 3, 3)
    assert torch.allclose(scale_latents(z), (z - 0.22) * 0.75)
    assert torch.allclose(unscale_latents(scale_latents(z)), z, atol=1e-6)
    assert torch.allclose(scale_image(torch.ones(1)), torch.tensor([0.625]))


# ------------------------------------------------------------------------------ (c) cameras
@pytest.mark.parametrize("version", ["v1.2", "v1.1"])
def test_six_cameras_follow_the_documented_layout(guidance, version, monkeypatch):
    monkeypatch.setattr(guidance.model, "layout", LAYOUTS[version])
    cond = Zero123PlusCondition(reference=None, azimuth_deg=40.0, elevation_deg=5.0, distance=2.5)
    rig = guidance.rig(cond, input_fovy_deg=20.0)
    elevations = [20.0, -10.0] * 3 if version == "v1.2" else [30.0, -20.0] * 3
    assert rig["azimuth"].tolist() == [40.0 + a for a in (30, 90, 150, 210, 270, 330)]
    assert rig["elevation"].tolist() == elevations
    assert rig["fovy"].tolist() == [30.0 if version == "v1.2" else 20.0] * 6
    batch = make_batch(rig["elevation"], rig["azimuth"], rig["camera_distances"], rig["fovy"], 8, 8)
    for i, (az, el) in enumerate(zip(rig["azimuth"].tolist(), elevations)):
        a, e = math.radians(az), math.radians(el)
        expected = 2.5 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        assert torch.allclose(batch["c2w"][i, :3, 3], expected, atol=1e-5)
        assert torch.allclose(batch["c2w"][i, :3, 2], expected / 2.5, atol=1e-5)  # OpenGL back axis: away from the origin
    # the first view is 30 degrees counter-clockwise (seen from above) from an input on +x
    rig0 = guidance.rig(Zero123PlusCondition(None, 0.0, 0.0, 2.0), 20.0)
    first = make_batch(rig0["elevation"][:1], rig0["azimuth"][:1], rig0["camera_distances"][:1], rig0["fovy"][:1], 4, 4)
    assert first["c2w"][0, 1, 3] > 0 and first["c2w"][0, 0, 3] > 0


def test_version_from_name_and_bad_version():
    assert version_of("sudo-ai/zero123plus-v1.1") == "v1.1"
    assert version_of("sudo-ai/zero123plus-v1.2") == version_of("tiny-random") == "v1.2"
    with pytest.raises(ConfigError, match="version"):
        find("zero123pp-guidance")({"pretrained_model_name_or_path": "tiny-random", "version": "v2"})


# ------------------------------------------------------------------------------ (d) the guidance
def _condition(guidance, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 40, 40, 3, generator=g)
    c2w = make_batch(torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([2.5]), torch.tensor([20.0]), 4, 4)["c2w"]
    return guidance.prepare_condition(image, c2w)


def test_condition_uncond_branch_is_zero_image_and_plain_text(guidance, monkeypatch):
    model = guidance.model
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, 40, 40, generator=g)
    reference = model.encode_reference(image, torch.Generator().manual_seed(7))
    g2 = torch.Generator().manual_seed(7)
    shape = reference.latents.shape[1:]
    first, second = torch.randn(1, *shape, generator=g2), torch.randn(1, *shape, generator=g2)
    with torch.no_grad():
        pix = model.vae_pixels(image[None])
        post = model.vae.encode(pix).latent_dist  # unscaled: no 0.18215, no shift
        zero = model.vae.encode(torch.zeros_like(pix)).latent_dist
    assert torch.allclose(reference.latents[0], (post.mean + post.std * first)[0], atol=1e-5)
    assert torch.allclose(reference.latents[1], (zero.mean + zero.std * second)[0], atol=1e-5)
    assert torch.equal(reference.context[1], model.prompt_embedding.embedding[0])
    seen = {}

    def spy(x_t, t, context, latents, noise):
        seen.update(context=context, latents=latents, t=t)
        return torch.zeros(x_t.shape)

    monkeypatch.setattr(model, "predict_v", spy)
    model.guided_v(torch.zeros(2, 4, 12, 8), torch.tensor([500, 500]), reference, 4.0)
    assert torch.equal(seen["latents"][2:], reference.latents[1:].expand(2, -1, -1, -1))
    assert torch.equal(seen["context"][2:], reference.context[1:].expand(2, -1, -1))
    assert torch.equal(seen["latents"][:2], reference.latents[:1].expand(2, -1, -1, -1))


def test_guidance_gradients_reach_all_six_renders(guidance):
    condition = _condition(guidance)
    rig = guidance.rig(condition, 20.0)
    cams = Cameras.from_batch(make_batch(rig["elevation"], rig["azimuth"], rig["camera_distances"], rig["fovy"], 16, 16))
    rgb = torch.rand(6, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, condition, cams)
    assert set(out) >= {"loss_sds", "grad_norm", "timestep"} and out["grad_norm"] > 0
    out["loss_sds"].backward()
    per_view = rgb.grad.abs().flatten(1).sum(1)
    assert torch.all(per_view > 0), per_view
    with pytest.raises(ConfigError, match="six rig views"):
        guidance(torch.rand(4, 16, 16, 3), condition, Cameras.from_batch(make_batch(
            rig["elevation"][:4], rig["azimuth"][:4], rig["camera_distances"][:4], rig["fovy"][:4], 16, 16)))


def test_sds_matches_the_distillation_rule_on_the_grid(guidance, monkeypatch):
    """The guidance's loss is distillation.py's SDS on z = scale_latents(0.18215 E(scale_image(2x - 1)))."""
    condition = _condition(guidance, seed=1)
    rgb = torch.rand(6, TILE, TILE, 3)
    torch.manual_seed(5)
    out = guidance(rgb, condition, Cameras.from_batch(make_batch(*[torch.zeros(6)] * 2, torch.full((6,), 2.5),
                                                                 torch.full((6,), 30.0), 4, 4)))
    torch.manual_seed(5)
    z = guidance.model.encode_grid(tile_views(rgb.permute(0, 3, 1, 2)))
    t = D.sample_timesteps(1, guidance.min_step, guidance.max_step, True)
    noise = torch.randn_like(z)
    x_t = D.add_noise(z, noise, t, guidance.alphas_cumprod)
    eps, _ = guidance.model.guided_eps(x_t, t, condition.reference, guidance.cfg.guidance_scale)
    grad = D.sds_gradient(eps, noise, D.sds_weight(t, guidance.alphas_cumprod, "sds", z))
    assert torch.allclose(out["loss_sds"], D.loss_from_gradient(z, grad), rtol=1e-4)


# ------------------------------------------------------------------------------ sampling
def test_sample_six_views_shapes_cameras_and_seed(model):
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(2))
    views, az, el = sample_six_views(model, image, steps=2, generator=torch.Generator().manual_seed(0))
    again, _, _ = sample_six_views(model, image, steps=2, generator=torch.Generator().manual_seed(0))
    assert views.shape == (6, 3, TILE, TILE) and 0 <= views.min() and views.max() <= 1
    assert torch.equal(views, again)
    assert az.tolist() == [30, 90, 150, 210, 270, 330] and el.tolist() == [20, -10] * 3
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        sample_six_views(model, image[None], steps=1)


def _image(tmp_path):
    from PIL import Image

    rgba = np.zeros((48, 48, 4), np.uint8)
    yy, xx = np.mgrid[:48, :48]
    rgba[(yy - 22) ** 2 + (xx - 26) ** 2 < 14**2] = (220, 120, 40, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "disc_rgba.png")
    return str(tmp_path / "disc_rgba.png")


TINY = ["system.guidance.pretrained_model_name_or_path=tiny-random", f"system.guidance.image_size={TILE}",
        f"data.condition_size={TILE}"]


def test_sample_writes_the_3x2_grid(tmp_path):
    import imageio.v2 as imageio

    args = ["--config", "zero123pp.yaml", "--sample", f"image={_image(tmp_path)}", f"exp_root_dir={tmp_path}",
            *TINY, "sample.steps=2"]
    assert main(args) == 0
    (grid,) = glob.glob(str(tmp_path / "zero123pp" / "*" / "save" / "sample-seed0.png"))
    assert imageio.imread(grid).shape == (3 * TILE, 2 * TILE, 3)  # 960 x 640 at full size


def test_recipe_trains_with_tiny_random(tmp_path):
    args = ["--config", "zero123pp.yaml", "--train", f"image={_image(tmp_path)}", f"exp_root_dir={tmp_path}", *TINY,
            "data.resolution_milestones=[]", "data.random_camera.resolution_milestones=[]", "data.height=16",
            "data.width=16", "data.random_camera.height=16", "data.random_camera.width=16",
            "data.random_camera.eval_height=8", "data.random_camera.eval_width=8", "data.random_camera.n_val_views=1",
            "data.random_camera.n_test_views=2", "system.geometry.pos_encoding_config.n_levels=4",
            "system.geometry.pos_encoding_config.log2_hashmap_size=10", "system.geometry.isosurface_resolution=32",
            "system.renderer.num_samples_per_ray=32", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "checkpoint.every_n_train_steps=2", "system.test_fps=4"]
    assert main(args) == 0
    (trial,) = glob.glob(str(tmp_path / "zero123pp" / "*"))
    for rel in ("ckpts/last.ckpt", "save/it2-test.mp4", "save/it2-export/model.obj", "save/it2-0.png"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and not [k for k in ckpt["state_dict"] if "unet" in k or "guidance" in k]


# ------------------------------------------------------------------------------ weights
def test_diffusers_folder_round_trip(tmp_path):
    from threestudio_like.models.builders import tiny_text_encoder
    from threestudio_like.prompt.stable_diffusion import tiny_tokenizer

    parts = load_model(ZERO123PP_WEIGHTS, "tiny-random")
    for name in ("unet", "vae", "vision_encoder"):
        parts[name].save_pretrained(str(tmp_path / name))
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(len(tokenizer), seed=11)
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    encoder.save_pretrained(str(tmp_path / "text_encoder"))
    ramp = torch.linspace(0.1, 1.0, 77).tolist()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Zero123PlusPipeline", "ramping_coefficients": ramp}))
    model = load_zero123pp(str(tmp_path), device="cpu", tile_size=TILE)
    assert isinstance(model, Zero123PlusModel) and model.layout.version == "v1.2"
    assert torch.allclose(model.ramping.coefficients, torch.tensor(ramp))
    assert torch.allclose(model.prompt_embedding.embedding, encode_empty_prompt(tokenizer, encoder), atol=1e-6)
    assert torch.equal(model.unet.conv_in.weight, parts["unet"].conv_in.weight)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="ramping_coefficients"):
        load_zero123pp(str(tmp_path), device="cpu")


def test_missing_weights_name_the_repo_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        load_zero123pp("sudo-ai/zero123plus-v1.2", device="cpu")
    message = str(err.value)
    assert "sudo-ai/zero123plus-v1.2" in message and "hf download sudo-ai/zero123plus-v1.2" in message
    assert "tiny-random" in message
    assert main(["--config", "zero123pp.yaml", "--sample", f"image={_image(tmp_path)}", f"exp_root_dir={tmp_path}"]) == 2
    stderr = capsys.readouterr().err
    assert "sudo-ai/zero123plus-v1.2" in stderr and "system.guidance.pretrained_model_name_or_path" in stderr
