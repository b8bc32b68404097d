"""MVDream guidance: multi-view attention, camera convention, checkpoint conversion, the
guidance math and the recipe end to end, all with re-randomised tiny weights on CPU."""
from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
import torch

from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.cli import main
from threestudio_like.errors import MissingWeightsError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.mvdream import (
    MVDREAM_WEIGHTS,
    MultiViewAttnProcessor,
    install_multiview_attention,
    mvdream_camera,
)
from threestudio_like.models.architectures import TINY_MVDREAM_UNET
from threestudio_like.models.builders import tiny_unet
from threestudio_like.models.loader import convert_checkpoint, load_model
from threestudio_like.models.tiny import rerandomize_parameters
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings, load_text_encoder
from threestudio_like.sampling.run import sample_settings

from ldm_fixtures import mvdream_ldm_checkpoint


# ------------------------------------------------------------------------------ attention
def _attention(dim=16, heads=2):
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)
    rerandomize_parameters(attn, seed=1)
    return attn.eval()


def explicit_joint_attention(attn, x, n_views):
    """Attention over the concatenated tokens of the views of each object, written out."""
    bf, n, c = x.shape
    heads, d = attn.heads, c // attn.heads
    tokens = x.reshape(bf // n_views, n_views * n, c)
    q, k, v = (tokens @ lin.weight.T for lin in (attn.to_q, attn.to_k, attn.to_v))
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(tokens.shape)
    out = out @ attn.to_out[0].weight.T + attn.to_out[0].bias
    return out.reshape(bf, n, c)


def test_processor_equals_explicit_attention_over_all_views():
    attn = _attention()
    x = torch.randn(2 * 4, 5, 16)  # 2 objects x 4 views, 5 tokens each
    attn.set_processor(MultiViewAttnProcessor(multi_view=True))
    with torch.no_grad():
        ours = attn(x, num_views=4)
    ref = explicit_joint_attention(attn, x, 4)
    assert ours.std() > 0.1
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # objects stay independent: changing object 1 leaves object 0 untouched
    x2 = x.clone()
    x2[4:] += 1.0
    with torch.no_grad():
        assert torch.equal(attn(x2, num_views=4)[:4], ours[:4])


def test_one_view_equals_stock_self_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention()
    x = torch.randn(6, 5, 16)
    with torch.no_grad():
        stock = AttnProcessor2_0()(attn, x)
        one = MultiViewAttnProcessor(multi_view=True)(attn, x, num_views=1)
        per_view = MultiViewAttnProcessor(multi_view=False)(attn, x, num_views=3)
    assert torch.allclose(one, stock, atol=1e-6) and torch.allclose(per_view, stock, atol=1e-6)

    unet = tiny_unet(TINY_MVDREAM_UNET, sample_size=8).eval()
    args = _unet_inputs(4)
    with torch.no_grad():
        plain = unet(*args[:2], encoder_hidden_states=args[2], class_labels=args[3]).sample
        install_multiview_attention(unet)
        mv1 = unet(*args[:2], encoder_hidden_states=args[2], class_labels=args[3],
                   cross_attention_kwargs={"num_views": 1}).sample
    assert plain.std() > 0.1 and torch.allclose(plain, mv1, atol=1e-5)


def _unet_inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.full((batch,), 500)
    ctx = torch.randn(batch, 77, 32, generator=g)
    az = torch.arange(batch, dtype=torch.float32) * 90.0
    cam = mvdream_camera(c2w_from_spherical(deg2rad(torch.full_like(az, 15.0)), deg2rad(az), torch.full_like(az, 2.0)))
    return x, t, ctx, cam


def load_mvdream_networks(name, **options):
    parts = load_model(MVDREAM_WEIGHTS, name, **options)
    return parts["unet"], parts["vae"]


@pytest.fixture(scope="module")
def tiny_networks():
    unet, vae = load_mvdream_networks("tiny-random")
    return unet.eval(), vae.eval()


def test_camera_reaches_every_view_through_joint_attention(tiny_networks):
    unet, _ = tiny_networks
    assert all(p.abs().max() > 0 for p in unet.parameters())  # nothing left zero-initialised
    x, t, ctx, cam = _unet_inputs(4)
    cam2 = cam.clone()
    cam2[0, :3] = -cam2[0, :3]  # a different camera for view 0 only

    def run(camera, n):
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=ctx, class_labels=camera,
                        cross_attention_kwargs={"num_views": n}).sample

    joint, joint2 = run(cam, 4), run(cam2, 4)
    change = (joint - joint2).abs().amax(dim=(1, 2, 3))
    assert (change > 1e-3).all(), change  # all 4 views see view 0's camera
    single, single2 = run(cam, 1), run(cam2, 1)
    change = (single - single2).abs().amax(dim=(1, 2, 3))
    assert change[0] > 1e-3 and (change[1:] == 0).all(), change  # per-view: only view 0
    # permuting the views of an object permutes the outputs
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        permuted = unet(x[perm], t, encoder_hidden_states=ctx[perm], class_labels=cam[perm],
                        cross_attention_kwargs={"num_views": 4}).sample
    assert torch.allclose(permuted, joint[perm], atol=1e-5)


# ------------------------------------------------------------------------------ cameras
def mvdream_get_camera(elevation_deg, azimuth_deg):
    """MVDream's ``get_camera`` for one view (camera_utils.py), re-derived in numpy:
    a y-up OpenGL look-at camera on the unit sphere, then the y-up -> z-up flip."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, pos
    flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return (flip @ c2w).reshape(16)


def test_camera_condition_is_mvdreams_camera_at_azimuth_plus_90():
    rng = np.random.default_rng(0)
    elev = rng.uniform(-20, 80, 16)
    azim = rng.uniform(-180, 180, 16)
    dist = rng.uniform(0.5, 5.0, 16)
    ours = mvdream_camera(c2w_from_spherical(deg2rad(torch.tensor(elev)), deg2rad(torch.tensor(azim)),
                                             torch.tensor(dist)))
    ref = np.stack([mvdream_get_camera(e, a + 90.0) for e, a in zip(elev, azim)])
    assert np.abs(ours.numpy() - ref).max() < 1e-5
    # the front (our azimuth 0) is t2i.py's first view (MVDream azimuth 90)
    front = mvdream_camera(c2w_from_spherical(torch.tensor([15.0 * math.pi / 180]), torch.zeros(1), torch.ones(1)))
    assert np.abs(front.numpy()[0] - mvdream_get_camera(15.0, 90.0)).max() < 1e-6


def test_training_batch_cameras_match(tmp_path):
    from threestudio_like import find

    dm = find("random-camera-datamodule")({
        "n_view": 4, "batch_size": 8, "height": 4, "width": 4, "relative_radius": True,
        "camera_distance_range": [0.8, 1.0], "fovy_range": [15, 60], "elevation_range": [0, 30],
        "camera_perturb": 0.0, "center_perturb": 0.0, "up_perturb": 0.0})
    batch = dm.train_dataset.collate([None])
    ours = mvdream_camera(batch["c2w"]).numpy()
    ref = np.stack([mvdream_get_camera(float(e), float(a) + 90.0)
                    for e, a in zip(batch["elevation"], batch["azimuth"])])
    assert np.abs(ours - ref).max() < 1e-5


# ------------------------------------------------------------------------------ conversion
def test_converter_round_trip(tmp_path):
    ckpt = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(mvdream_ldm_checkpoint(), ckpt)
    out = tmp_path / "converted"
    convert_checkpoint("mvdream", str(ckpt), str(out), tokenizer="tiny-random", num_head_channels=8)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.isdir(out / sub), sub
    assert glob.glob(str(out / "unet" / "*.safetensors"))

    mem_unet, mem_vae = load_mvdream_networks(str(ckpt), num_head_channels=8)
    disk_unet, disk_vae = load_mvdream_networks(str(out))
    x, t, ctx, cam = _unet_inputs(4)
    with torch.no_grad():
        kw = dict(encoder_hidden_states=ctx, class_labels=cam, cross_attention_kwargs={"num_views": 4})
        a, b = mem_unet(x, t, **kw).sample, disk_unet(x, t, **kw).sample
        img = torch.rand(2, 3, 64, 64) * 2 - 1
        va, vb = mem_vae.encode(img).latent_dist.mean, disk_vae.encode(img).latent_dist.mean
        da, db = mem_vae.decode(va).sample, disk_vae.decode(vb).sample
    for mem, disk in ((mem_unet, disk_unet), (mem_vae, disk_vae)):  # bit-identical weights
        sa, sb = mem.state_dict(), disk.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # identical outputs (up to kernel choices that depend on memory alignment: ~1e-6)
    assert a.std() > 0.1 and torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(va, vb, atol=1e-5) and torch.allclose(da, db, atol=1e-5) and da.std() > 0.05

    ids = torch.randint(0, 514, (1, 77))
    mem_text = load_text_encoder(str(ckpt), 514).eval()
    disk_text = load_text_encoder(str(out), 514).eval()
    with torch.no_grad():
        assert torch.equal(mem_text(input_ids=ids)[0], disk_text(input_ids=ids)[0])

    # the same through the command line
    assert main(["--convert", "mvdream", str(ckpt), str(tmp_path / "cli"), "--tokenizer", "tiny-random"]) == 0
    assert os.path.isfile(tmp_path / "cli" / "model_index.json")


# ------------------------------------------------------------------------------ guidance
def _Cond():
    return PromptEmbeddings("", "", torch.zeros(77, 32), torch.zeros(77, 32))


def _guidance(**cfg):
    from threestudio_like import find

    return find("mvdream-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64, **cfg})


def _stub_predict(guidance, seen):
    def predict_noise(x_t, t, text, camera, n_view):
        seen.append((t.clone(), camera.clone(), n_view))
        return 0.3 * x_t + 0.1, -0.2 * x_t  # eps_cond, eps_uncond
    guidance.predict_noise = predict_noise


@pytest.mark.parametrize("rescale", [0.0, 0.5])
def test_reconstruction_loss_gradient(rescale):
    g = _guidance(recon_std_rescale=rescale, guidance_scale=7.0)
    seen = []
    _stub_predict(g, seen)
    latents = torch.randn(8, 4, 8, 8, requires_grad=True)
    g.encode_images = lambda rgb: latents  # score the latents directly
    c2w = c2w_from_spherical(torch.zeros(8), torch.arange(8.0), torch.full((8,), 2.0))
    torch.manual_seed(1)
    out = g(torch.zeros(8, 4, 4, 3), _Cond(), Cameras.from_c2w(c2w, n_views=4))
    out["loss_sds"].backward()
    (t, camera, n_view), = seen
    assert n_view == 4 and (t == t[0]).all()  # one timestep for the batch
    assert torch.allclose(camera, mvdream_camera(c2w))
    torch.manual_seed(1)
    t_ref = D.sample_timesteps(8, g.min_step, g.max_step, True)
    noise = torch.randn_like(latents)
    abar = g.alphas_cumprod[t_ref[0]].float()
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * latents.detach() + sigma * noise
    eps_c, eps_u = 0.3 * x_t + 0.1, -0.2 * x_t
    eps = eps_u + 7.0 * (eps_c - eps_u)
    x0 = (x_t - sigma * eps) / alpha
    if rescale:
        x0_c = (x_t - sigma * eps_c) / alpha
        std = lambda v: v.reshape(2, -1).std(dim=1).repeat_interleave(4).reshape(8, 1, 1, 1)  # noqa: E731
        x0 = rescale * x0 * (std(x0_c) + 1e-8) / (std(x0) + 1e-8) + (1 - rescale) * x0
    else:  # without rescale the update is SDS with w(t) = sigma / alpha
        assert torch.allclose(latents.detach() - x0, sigma / alpha * (eps - noise), atol=1e-3, rtol=1e-4)
    assert torch.allclose(latents.grad, (latents.detach() - x0) / 8, atol=1e-4, rtol=1e-4)


def test_plain_sds_branch_and_view_checks():
    g = _guidance(update_rule="sds", guidance_scale=5.0)
    seen = []
    _stub_predict(g, seen)
    latents = torch.randn(4, 4, 8, 8, requires_grad=True)
    g.encode_images = lambda rgb: latents
    c2w = c2w_from_spherical(torch.zeros(4), torch.arange(4.0), torch.full((4,), 2.0))
    torch.manual_seed(2)
    g(torch.zeros(4, 4, 4, 3), _Cond(), Cameras.from_c2w(c2w, n_views=4))["loss_sds"].backward()
    torch.manual_seed(2)
    t = D.sample_timesteps(4, g.min_step, g.max_step, True)
    noise = torch.randn_like(latents)
    abar = g.alphas_cumprod[t[0]].float()
    x_t = abar.sqrt() * latents.detach() + (1 - abar).sqrt() * noise
    eps = -0.2 * x_t + 5.0 * (0.5 * x_t + 0.1)
    assert torch.allclose(latents.grad, (1 - abar) * (eps - noise) / 4, atol=1e-5)
    from threestudio_like.config import ConfigError

    with pytest.raises(ConfigError, match="n_view=4"):
        g(torch.zeros(4, 4, 4, 3), _Cond(), Cameras.from_c2w(c2w, n_views=1))
    with pytest.raises(ConfigError, match="multiple"):
        g(torch.zeros(6, 4, 4, 3), _Cond(), Cameras.from_c2w(c2w[:1].expand(6, 4, 4), n_views=4))


def test_guidance_end_to_end_gradient_and_sampler():
    g = _guidance()
    g.update_step(0, 9000)  # annealed: t in [20, 500]
    assert (g.min_step, g.max_step) == (20, 500)
    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    c2w = c2w_from_spherical(torch.zeros(4), torch.arange(4.0) * math.pi / 2, torch.full((4,), 2.0))
    out = g(rgb, _Cond(), Cameras.from_c2w(c2w, n_views=4))
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0
    assert 20 <= out["timestep"] <= 500
    images = g.sample(_Cond(), sample_settings({"steps": 3}, g.sample_defaults), torch.Generator().manual_seed(0))
    assert images.shape == (4, 64, 64, 3) and 0 <= images.min() and images.max() <= 1


def test_missing_real_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        _guidance(pretrained_model_name_or_path="MVDream/MVDream")
    assert "sd-v2.1-base-4view.pt" in str(err.value) and "--convert mvdream" in str(err.value)


# ------------------------------------------------------------------------------ the recipe
TINY_MVDREAM = [
    "system.guidance.pretrained_model_name_or_path=tiny-random",
    "system.guidance.image_size=64",
    "data.height=16", "data.width=16", "data.batch_size=4", "data.resolution_milestones=[]",
    "data.eval_height=16", "data.eval_width=16", "data.n_val_views=4", "data.n_test_views=4",
    "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.isosurface_resolution=32",
    "system.exporter.texture_size=64", "system.geometry.isosurface_threshold=auto",
    "system.renderer.num_samples_per_ray=32",
    "trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=3",
    "system.test_fps=4",
]


@pytest.mark.parametrize("recipe", ["mvdream-sd21.yaml", "mvdream-sd21-shading.yaml"])
def test_recipe_trains_with_tiny_random(tmp_path, recipe):
    args = ["--config", recipe, "--train", "prompt=a DSLR photo of a corgi", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", *TINY_MVDREAM]
    if "shading" in recipe:
        args += ["system.material.ambient_only_steps=3"]
    assert main(args) == 0
    trial, = glob.glob(str(tmp_path / recipe[:-5] / "*"))
    for rel in ("ckpts/last.ckpt", "save/it6-test.mp4", "save/it6-export/model.obj", "save/it3-0.png"):
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and not [k for k in ckpt["state_dict"] if "unet" in k or "guidance" in k]


def test_sample_writes_a_1x4_grid(tmp_path):
    import imageio.v2 as imageio

    args = ["--config", "mvdream-sd21.yaml", "--sample", "prompt=a corgi", f"exp_root_dir={tmp_path}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache", "sample.steps=2",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64"]
    assert main(args) == 0
    grid, = glob.glob(str(tmp_path / "mvdream-sd21" / "*" / "save" / "sample-seed0.png"))
    assert imageio.imread(grid).shape == (64, 256, 3)


def test_cli_reports_missing_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--config", "mvdream-sd21.yaml", "--sample", "prompt=a corgi", f"exp_root_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MVDream/MVDream" in err and "hf download" in err
