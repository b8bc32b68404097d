"""Zero-1-to-3 guidance: the camera token, CLIP preprocessing, the conditioning and CFG wiring,
checkpoint conversion (ldm with EMA, OpenAI CLIP tower, both diffusers layouts), missing weights,
and the two recipes end to end, all with tiny random weights on CPU."""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad, spherical_to_position
from threestudio_like.cli import main
from threestudio_like.errors import MissingWeightsError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.zero123 import (
    CLIP_MEAN,
    CLIP_STD,
    ZERO123_WEIGHTS,
    clip_preprocess,
    zero123_camera,
    zero123_camera_from_deltas,
)
from threestudio_like.models.loader import convert_checkpoint, load_model
from threestudio_like.sampling.run import sample_settings

from ldm_fixtures import kl_vae_shapes, mvdream_unet_shapes, random_tensors


# ------------------------------------------------------------------------------ camera token
def test_camera_token_for_known_poses():
    # condition: on the horizon at the front (+x), distance 2 -> polar 90 deg from +z
    cond = torch.tensor([2.0, 0.0, 0.0])
    # target: elevation 30 (polar 60), azimuth 90 (+y), distance 3
    target = torch.tensor([[0.0, 3 * math.cos(math.radians(30)), 3 * math.sin(math.radians(30))]])
    token = zero123_camera(target, cond)
    assert torch.allclose(token, torch.tensor([[-math.pi / 6, 1.0, 0.0, 1.0]]), atol=1e-6)
    stable = zero123_camera(target, cond, "stable-zero123")
    assert torch.allclose(stable, torch.tensor([[-math.pi / 6, 1.0, 0.0, math.pi / 2]]), atol=1e-6)
    # straight above the object: polar 0; behind it (azimuth 180): sin 0, cos -1
    above = zero123_camera(torch.tensor([[0.0, 0.0, 2.0], [-2.0, 0.0, 0.0]]), cond)
    assert torch.allclose(above, torch.tensor([[-math.pi / 2, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0]]), atol=1e-6)


def test_camera_token_matches_3drec_and_threestudio_definitions():
    rng = np.random.default_rng(0)
    elev, azim = rng.uniform(-30, 80, 16), rng.uniform(-180, 180, 16)
    dist = rng.uniform(1.5, 4.0, 16)
    e_c, a_c, d_c = 15.0, -40.0, 2.5
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    c2w = c2w_from_spherical(deg2rad(t(elev)), deg2rad(t(azim)), t(dist))
    cond = spherical_to_position(deg2rad(t([e_c])), deg2rad(t([a_c])), t([d_c]))[0]
    ours = zero123_camera(c2w[:, :3, 3], cond).numpy()

    def get_T(target, condition):  # 3drec my3d.get_T, re-derived: polar from +z
        def sph(p):
            return np.arctan2(np.sqrt(p[0] ** 2 + p[1] ** 2), p[2]), np.arctan2(p[1], p[0]), np.linalg.norm(p)
        (th_t, az_t, z_t), (th_c, az_c, z_c) = sph(target), sph(condition)
        d_az = (az_t - az_c) % (2 * np.pi)
        return np.array([th_t - th_c, np.sin(d_az), np.cos(d_az), z_t - z_c])

    ref = np.stack([get_T(p, cond.numpy().astype(np.float64)) for p in c2w[:, :3, 3].numpy().astype(np.float64)])
    assert np.abs(ours - ref).max() < 1e-5
    # threestudio: [rad((90 - e) - (90 - e_c)), sin(rad(a - a_c)), cos(rad(a - a_c)), d - d_c]
    three = np.stack([np.radians((90 - elev) - (90 - e_c)), np.sin(np.radians(azim - a_c)),
                      np.cos(np.radians(azim - a_c)), dist - d_c], -1)
    assert np.abs(ours - three).max() < 1e-5
    # the demo's view changes: + elevation lowers the polar angle
    deltas = zero123_camera_from_deltas(t([20.0]), t([90.0]), t([0.0]))
    assert torch.allclose(deltas, t([[-math.radians(20), 1.0, 0.0, 0.0]]), atol=1e-6)


def test_clip_preprocess_is_the_original_bicubic_align_corners_path():
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    out = clip_preprocess(x)
    assert out.shape == (2, 3, 224, 224)
    mean, std = torch.tensor(CLIP_MEAN)[:, None], torch.tensor(CLIP_STD)[:, None]
    corners = ((x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] + 1) / 2 - mean) / std
    # align_corners=True keeps the corner pixels exactly (antialiased or half-pixel resizes do not)
    assert torch.allclose(out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]], corners, atol=1e-5)
    flat = clip_preprocess(torch.full((1, 3, 32, 32), 0.2))
    assert torch.allclose(flat[0, :, 100, 100], ((0.6 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)), atol=1e-5)


# ------------------------------------------------------------------------------ guidance wiring
@pytest.fixture(scope="module")
def guidance():
    return find("zero123-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64})


def _condition(g, seed=0):
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(seed))
    c2w = torch.eye(4)[None]
    c2w[0, 0, 3] = 2.0  # at (2, 0, 0); only the position matters
    return g.prepare_condition(image, c2w)


def test_condition_latent_unscaled_and_uncond_branch_is_zeros(guidance, monkeypatch):
    g = guidance
    cond = _condition(g)
    x = cond.image.permute(0, 3, 1, 2) * 2 - 1
    assert torch.allclose(cond.image_latent, g.vae.encode(x).latent_dist.mode(), atol=1e-5)  # not * 0.18215
    assert torch.allclose(cond.clip_embedding[:, 0], g.image_encoder(pixel_values=clip_preprocess(x)).image_embeds, atol=1e-5)

    seen = {}
    real_unet = g.unet

    def recording_unet(x_in, t, encoder_hidden_states, **kwargs):
        seen.update(x_in=x_in.clone(), t=t.clone(), context=encoder_hidden_states.clone())
        return real_unet(x_in, t, encoder_hidden_states=encoder_hidden_states)

    monkeypatch.setattr(g, "unet", recording_unet)
    c2w = c2w_from_spherical(deg2rad(torch.tensor([10.0, 30.0])), deg2rad(torch.tensor([45.0, -90.0])), torch.full((2,), 2.0))
    camera = g.camera_tokens(c2w, cond)
    x_t = torch.randn(2, 4, 8, 8)
    eps, _ = g.guided_noise_fn(cond, camera, 7.5)(x_t, torch.tensor([300, 300]))
    x_in, context = seen["x_in"], seen["context"]
    assert x_in.shape == (4, 8, 8, 8)
    # one batched call, conditional branch first (the convention of every prior)
    assert torch.equal(x_in[:2, :4], x_t) and torch.equal(x_in[2:, :4], x_t)  # noisy latent first
    assert (x_in[2:, 4:] == 0).all() and torch.allclose(x_in[:2, 4:], cond.image_latent.expand(2, -1, -1, -1))
    projected = g.projection.proj(torch.cat([cond.clip_embedding.expand(2, -1, -1), camera[:, None]], -1))
    assert (context[2:] == 0).all() and torch.allclose(context[:2], projected, atol=1e-6)  # zeros after projection
    eps_c, eps_u = real_unet(x_in, seen["t"], encoder_hidden_states=context).sample.chunk(2)
    assert torch.allclose(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-5)


@pytest.mark.parametrize("rule", ["sjc", "sds"])
def test_update_rules_through_the_guidance(rule, monkeypatch):
    g = find("zero123-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64,
                                  "update_rule": rule, "guidance_scale": 100.0, "n_perturb": 3,
                                  "min_step_percent": 0.3, "max_step_percent": 0.3})
    cond = _condition(g)
    monkeypatch.setattr(g, "predict_noise", lambda x, t, ctx, lat: (0.3 * x + 0.1, -0.2 * x))
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    monkeypatch.setattr(g, "encode_images", lambda rgb: latents)
    c2w = c2w_from_spherical(torch.zeros(2), torch.tensor([0.5, 1.5]), torch.full((2,), 2.0))
    torch.manual_seed(4)
    out = g(torch.zeros(2, 8, 8, 3), cond, Cameras.from_c2w(c2w))
    out[f"loss_{rule}"].backward()
    eps_fn = lambda x: -0.2 * x + 100.0 * (0.5 * x + 0.1)  # noqa: E731  eps_u + s (eps_c - eps_u)
    torch.manual_seed(4)
    t = D.sample_timesteps(2, 300, 300, False)
    if rule == "sjc":
        sigma = D.ve_sigmas(D.scaled_linear_alphas_cumprod())[300].float()
        noise = torch.randn(3, *latents.shape)
        z = latents.detach()[None] + sigma * noise
        eps_hat = eps_fn(z / torch.sqrt(1 + sigma**2))
        expected = (eps_hat - noise).mean(0) / 2  # dL/dy = -(D - y) / sigma / B = (eps_hat - n) / B
    else:
        noise = torch.randn_like(latents)
        abar = g.alphas_cumprod[t[0]]
        x_t = abar.sqrt() * latents.detach() + (1 - abar).sqrt() * noise
        expected = (1 - abar) * (eps_fn(x_t) - noise) / 2
    assert torch.allclose(latents.grad, expected, atol=1e-3, rtol=1e-4)


def test_guidance_end_to_end_and_sampler(guidance):
    g = guidance
    cond = _condition(g)
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    c2w = c2w_from_spherical(torch.zeros(2), torch.tensor([0.5, 2.0]), torch.full((2,), 2.0))
    out = g(rgb, cond, Cameras.from_c2w(c2w))
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0
    latent_render = torch.rand(1, 8, 8, 4, requires_grad=True)  # 3drec: latents rendered directly
    g(latent_render, cond, Cameras.from_c2w(c2w[:1]), rgb_as_latents=True)["loss_sds"].backward()
    assert latent_render.grad.abs().sum() > 0
    images = g.sample(cond, sample_settings({"steps": 2}, g.sample_defaults), torch.Generator().manual_seed(0))
    assert images.shape == (5, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    assert torch.allclose(images[0], cond.image[0])  # the input comes first in the grid
    assert g.white_latents(4).shape == (1, 4, 4, 4)


# ------------------------------------------------------------------------------ weights
def openai_clip_visual_shapes(width=128, layers=2, patch=32, image=224, dim=32):
    grid = image // patch
    out = {"visual.class_embedding": (width,), "visual.positional_embedding": (grid * grid + 1, width),
           "visual.conv1.weight": (width, 3, patch, patch), "visual.proj": (width, dim),
           "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
           "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,)}
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        out.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                    p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                    p + "ln_1.weight": (width,), p + "ln_1.bias": (width,), p + "ln_2.weight": (width,),
                    p + "ln_2.bias": (width,), p + "mlp.c_fc.weight": (4 * width, width),
                    p + "mlp.c_fc.bias": (4 * width,), p + "mlp.c_proj.weight": (width, 4 * width),
                    p + "mlp.c_proj.bias": (width,)})
    # what FrozenCLIPImageEmbedder keeps of the text side after `del model.transformer`
    out.update({"positional_embedding": (77, 64), "token_embedding.weight": (100, 64), "ln_final.weight": (64,),
                "ln_final.bias": (64,), "text_projection": (64, dim), "logit_scale": ()})
    return out


def openai_visual_forward(sd, images, heads):
    """OpenAI CLIP's ``VisionTransformer.forward``, written out from clip/model.py with torch's own
    MultiheadAttention (independent of the converter under test)."""
    v = {k[len("visual."):]: w for k, w in sd.items() if k.startswith("visual.")}
    width = v["conv1.weight"].shape[0]
    x = F.conv2d(images, v["conv1.weight"], stride=v["conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, -1), x], 1) + v["positional_embedding"]
    ln = lambda x, n: F.layer_norm(x, (width,), v[n + ".weight"], v[n + ".bias"], 1e-5)  # noqa: E731
    x = ln(x, "ln_pre")
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in v:
        p = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        mha.load_state_dict({"in_proj_weight": v[p + "attn.in_proj_weight"], "in_proj_bias": v[p + "attn.in_proj_bias"],
                             "out_proj.weight": v[p + "attn.out_proj.weight"], "out_proj.bias": v[p + "attn.out_proj.bias"]})
        h = ln(x, p + "ln_1")
        x = x + mha(h, h, h, need_weights=False)[0]
        h = F.linear(ln(x, p + "ln_2"), v[p + "mlp.c_fc.weight"], v[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, v[p + "mlp.c_proj.weight"], v[p + "mlp.c_proj.bias"])
        i += 1
    return ln(x[:, 0], "ln_post") @ v["proj"]


def zero123_ldm_checkpoint(seed=0):
    """A toy ``105000.ckpt``: an 8-channel SD1 UNet (conv proj_in/out, no camera MLP), the KL VAE,
    OpenAI's CLIP image tower, ``cc_projection`` and ldm's EMA shadows (different values)."""
    unet = mvdream_unet_shapes()
    unet = {k: s for k, s in unet.items() if not k.startswith("camera_embed.")}
    unet["input_blocks.0.0.weight"] = (32, 8, 3, 3)
    for k in list(unet):
        if k.endswith(("proj_in.weight", "proj_out.weight")):
            unet[k] = (*unet[k], 1, 1)  # SD1: 1x1 convolutions
    sd = {}
    for prefix, shapes in (("model.diffusion_model.", unet), ("first_stage_model.", kl_vae_shapes()),
                           ("cond_stage_model.model.", openai_clip_visual_shapes())):
        sd.update({prefix + k: v for k, v in random_tensors(shapes, seed).items()})
        seed += 1
    sd.update({f"cc_projection.{k}": v for k, v in random_tensors({"weight": (32, 36), "bias": (32,)}, seed).items()})
    ema = random_tensors({k: tuple(v.shape) for k, v in sd.items() if k.startswith("model.diffusion_model.")}, seed + 1)
    sd.update({"model_ema." + k[len("model."):].replace(".", ""): v for k, v in ema.items()})
    sd.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7),
               "betas": torch.rand(1000), "alphas_cumprod": torch.rand(1000)})
    return sd, ema


def _outputs(nets, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        emb = nets.image_encoder(pixel_values=clip_preprocess(image)).image_embeds[:, None]
        ctx = nets.projection(emb.expand(2, -1, -1), torch.randn(2, 4, generator=g))
        lat = nets.vae.encode(image).latent_dist.mode()
        eps = nets.unet(torch.cat([x, lat.expand(2, -1, -1, -1)], 1), torch.tensor([10, 700]), encoder_hidden_states=ctx).sample
    return emb, ctx, lat, eps


def load_zero123_networks(name, **options):
    return SimpleNamespace(**load_model(ZERO123_WEIGHTS, name, **options))


def test_ldm_checkpoint_ema_clip_and_both_diffusers_layouts(tmp_path):
    sd, ema = zero123_ldm_checkpoint()
    ckpt = tmp_path / "105000.ckpt"
    torch.save({"state_dict": sd, "global_step": 105000}, ckpt)
    nets = load_zero123_networks(str(ckpt), num_heads=2)
    assert nets.unet.config.in_channels == 8 and nets.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.heads == 2
    # EMA weights were copied in (ldm's LitEma names: dots removed)
    assert torch.equal(nets.unet.conv_in.weight, ema["model.diffusion_model.input_blocks.0.0.weight"])
    raw = load_zero123_networks(str(ckpt), num_heads=2, use_ema=False)
    assert torch.equal(raw.unet.conv_in.weight, sd["model.diffusion_model.input_blocks.0.0.weight"])
    # the CLIP image tower equals OpenAI's ViT forward on the same weights
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = nets.image_encoder(pixel_values=images).image_embeds
        ref = openai_visual_forward({k[len("cond_stage_model.model."):]: v for k, v in sd.items()
                                     if k.startswith("cond_stage_model.model.")}, images, heads=2)
    assert ref.std() > 0.1 and torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert torch.equal(nets.projection.proj.weight, sd["cc_projection.weight"])
    expected = _outputs(nets)

    # --convert writes the kxic layout (cc_projection/); the bennyguo layout names it clip_camera_projection/
    kxic = tmp_path / "kxic"
    assert main(["--convert", "zero123", str(ckpt), str(tmp_path / "cli")]) == 0  # the command line (8 heads)
    assert (tmp_path / "cli" / "cc_projection" / "diffusion_pytorch_model.safetensors").is_file()
    convert_checkpoint("zero123", str(ckpt), str(kxic), num_heads=2)
    assert json.loads((kxic / "model_index.json").read_text())["cc_projection"][1] == "CCProjection"
    benny = tmp_path / "benny"
    shutil.copytree(kxic, benny)
    shutil.rmtree(benny / "cc_projection")
    (benny / "clip_camera_projection").mkdir()
    (benny / "clip_camera_projection" / "config.json").write_text(
        json.dumps({"_class_name": "CLIPCameraProjection", "embedding_dim": 32, "additional_embeddings": 4}))
    from safetensors.torch import save_file

    save_file({"proj.weight": sd["cc_projection.weight"], "proj.bias": sd["cc_projection.bias"]},
              str(benny / "clip_camera_projection" / "diffusion_pytorch_model.safetensors"))
    # kxic's published folders hold .bin weights
    binary = tmp_path / "kxic-bin"
    for name in ("unet", "vae", "image_encoder"):
        getattr(nets, name).save_pretrained(str(binary / name), safe_serialization=False)
    (binary / "cc_projection").mkdir()
    (binary / "cc_projection" / "config.json").write_text(json.dumps({"_class_name": "CCProjection"}))
    torch.save({"projection.weight": sd["cc_projection.weight"], "projection.bias": sd["cc_projection.bias"]},
               binary / "cc_projection" / "diffusion_pytorch_model.bin")
    for folder in (kxic, benny, binary):
        loaded = _outputs(load_zero123_networks(str(folder)))
        for a, b in zip(expected, loaded):
            assert torch.allclose(a, b, atol=1e-5), folder
    assert expected[3].std() > 0.1

    shutil.rmtree(benny / "clip_camera_projection")
    with pytest.raises(MissingWeightsError, match="cc_projection/ or clip_camera_projection/"):
        load_zero123_networks(str(benny))


def test_missing_weights_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        load_zero123_networks("cvlab/zero123-weights/zero123-xl.ckpt")
    assert "zero123-xl.ckpt" in str(err.value) and "--convert zero123" in str(err.value)
    with pytest.raises(MissingWeightsError, match="hf download kxic/zero123-xl"):
        load_zero123_networks("kxic/zero123-xl")
    image = tmp_path / "obj.png"
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = 200
    Image.fromarray(rgba, "RGBA").save(image)
    assert main(["--config", "zero123-sjc.yaml", "--sample", f"image={image}", f"exp_root_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "105000.ckpt" in err and "tiny-random" in err


# ------------------------------------------------------------------------------ the recipes
def _image(tmp_path):
    from PIL import Image

    rgba = np.zeros((48, 48, 4), np.uint8)
    yy, xx = np.mgrid[:48, :48]
    disc = (yy - 22) ** 2 + (xx - 26) ** 2 < 14**2
    rgba[disc] = (220, 120, 40, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "disc_rgba.png")
    return str(tmp_path / "disc_rgba.png")


TINY = [
    "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
    "data.condition_size=64", "data.resolution_milestones=[]", "data.random_camera.resolution_milestones=[]",
    "data.random_camera.batch_size=1", "data.random_camera.eval_height=8", "data.random_camera.eval_width=8",
    "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=2",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.isosurface_resolution=32", "system.geometry.isosurface_threshold=auto",
    "system.renderer.num_samples_per_ray=32", "trainer.max_steps=2", "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=2", "system.test_fps=4", "trainer.log_every_n_steps=1",
]
RECIPES = {
    "zero123-sjc": ["data.height=8", "data.width=8", "data.random_camera.height=8", "data.random_camera.width=8"],
    "zero123-sjc-rgb": ["data.height=16", "data.width=16", "data.random_camera.height=16", "data.random_camera.width=16",
                        "system.render_latents=false", "system.geometry.n_feature_dims=3", "system.material.n_output_dims=3",
                        "system.material.color_activation=sigmoid", "system.background.n_output_dims=3",
                        "system.background.color=[1,1,1]"],
    "zero123-sds": ["data.height=16", "data.width=16", "data.random_camera.height=16", "data.random_camera.width=16"],
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_trains_with_tiny_random(tmp_path, recipe):
    config = recipe.replace("-rgb", "") + ".yaml"
    args = ["--config", config, "--train", f"image={_image(tmp_path)}", f"exp_root_dir={tmp_path}", *TINY, *RECIPES[recipe]]
    assert main(args) == 0
    (trial,) = glob.glob(str(tmp_path / config[:-5] / "*"))
    assert os.path.basename(trial).startswith("disc_rgba@")
    for rel in ("ckpts/last.ckpt", "save/it2-test.mp4", "save/it2-export/model.obj", "save/it2-0.png"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and not [k for k in ckpt["state_dict"] if "unet" in k or "guidance" in k]
    if recipe == "zero123-sjc":  # latent renders are decoded for the videos: 8 latent px -> 64 px
        import imageio.v2 as imageio

        assert imageio.imread(os.path.join(trial, "save", "it2-test", "0.png")).shape == (64, 64, 3)


def test_sample_writes_the_input_and_novel_views(tmp_path):
    import imageio.v2 as imageio

    args = ["--config", "zero123-sjc.yaml", "--sample", f"image={_image(tmp_path)}", f"exp_root_dir={tmp_path}",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
            "sample.steps=2", "sample.views=[[0,90],[20,180]]"]
    assert main(args) == 0
    (grid,) = glob.glob(str(tmp_path / "zero123-sjc" / "*" / "save" / "sample-seed0.png"))
    assert imageio.imread(grid).shape == (64, 3 * 64, 3)
