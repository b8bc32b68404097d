"""EscherNet: CaPE attention on a stock UNet, pose conversion, reference encoder, guidance, recipes."""
from __future__ import annotations

import glob
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.cli import main
from threestudio_like.errors import MissingWeightsError
from threestudio_like.guidance.eschernet import (
    ESCHERNET_WEIGHTS,
    CaPEAttnProcessor,
    CaPEPoses,
    cape_4dof,
    cape_6dof,
    eschernet_4dof_pose,
    eschernet_w2c,
    reference_preprocess,
    reference_tokens,
)
from threestudio_like.models.architectures import TINY_ESCHERNET_UNET
from threestudio_like.models.loader import load_model


def random_rigid(generator: torch.Generator, translation: float = 0.5) -> torch.Tensor:
    """A random proper rigid transform ``[4, 4]``."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    out = torch.eye(4)
    out[:3, :3] = q
    out[:3, 3] = translation * torch.randn(3, generator=generator)
    return out


def cameras(elevations, azimuths, distances) -> torch.Tensor:
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return c2w_from_spherical(deg2rad(t(elevations)), deg2rad(t(azimuths)), t(distances))


# ------------------------------------------------------------------------------ pose conversion
def test_w2c_matches_hand_derived_eschernet_poses():
    # camera on +x at distance 2 looking at the origin: right = +y, up = +z, back = +x
    expected = torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, -2], [0, 0, 0, 1]])
    assert torch.allclose(eschernet_w2c(cameras([0.0], [0.0], [2.0]))[0], expected, atol=1e-6)
    # elevation 30, azimuth 90, distance 1.8: right = -x, up = (0, -sin30, cos30), back = (0, cos30, sin30);
    # the world origin sits 1.8 in front of the camera (OpenGL: -z)
    s, c = 0.5, math.sqrt(3) / 2
    expected = torch.tensor([[-1.0, 0, 0, 0], [0, -s, c, 0], [0, c, s, -1.8], [0, 0, 0, 1]])
    assert torch.allclose(eschernet_w2c(cameras([30.0], [90.0], [1.8]))[0], expected, atol=1e-6)
    # scene_scale scales the translation only
    assert torch.allclose(eschernet_w2c(cameras([30.0], [90.0], [0.9]), scene_scale=2.0)[0], expected, atol=1e-6)


def test_4dof_pose_matches_hand_derived_values():
    pose = eschernet_4dof_pose(cameras([0.0, 30.0, 0.0], [0.0, 90.0, -90.0], [1.5, 2.2, 3.0]))
    expected = torch.tensor(
        [[math.pi / 2, 0.0, 0.0, 0.0], [math.pi / 3, math.pi / 2, math.pi, 0.0], [math.pi / 2, -math.pi / 2, math.pi, 0.0]]
    )
    assert torch.allclose(pose, expected, atol=1e-5)


# ------------------------------------------------------------------------------ CaPE maths
def test_6dof_score_is_the_relative_pose_closed_form_and_frame_invariant():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 5, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    p_q, p_k = random_rigid(g), random_rigid(g)
    score = cape_6dof(q, torch.linalg.inv(p_q).T[None, None]) @ cape_6dof(k, p_k[None, None]).transpose(1, 2)
    relative = (p_k @ torch.linalg.inv(p_q)).T
    closed = q.reshape(5, 4, 4) @ relative  # every chunk times the relative matrix
    closed = torch.einsum("icj,kcj->ik", closed, k.reshape(7, 4, 4))
    assert torch.allclose(score[0], closed, atol=1e-4)
    delta = random_rigid(g)  # a change of world frame right-multiplies every w2c
    moved = cape_6dof(q, torch.linalg.inv(p_q @ delta).T[None, None]) @ cape_6dof(k, (p_k @ delta)[None, None]).transpose(1, 2)
    assert torch.allclose(score, moved, atol=1e-4)


def test_4dof_score_depends_only_on_pose_differences():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 6, 32, generator=g), torch.randn(1, 6, 32, generator=g)
    p_q, p_k, shift = (torch.randn(1, 1, 4, generator=g) for _ in range(3))
    score = cape_4dof(q, p_q) @ cape_4dof(k, p_k).transpose(1, 2)
    shifted = cape_4dof(q, p_q + shift) @ cape_4dof(k, p_k + shift).transpose(1, 2)
    assert torch.allclose(score, shifted, atol=1e-4)
    assert not torch.allclose(score, cape_4dof(q, p_q) @ cape_4dof(k, p_k + shift).transpose(1, 2), atol=1e-2)


def _attention(cross_attention_dim=None):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=cross_attention_dim)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def test_processor_equals_explicit_joint_attention_with_cape():
    """An independent re-derivation: tokens of M views concatenated, each 4-channel chunk of q times
    inv(P_target)^T and of k times the key view's P, per-head softmax(q k^T / sqrt(d)) v."""
    attn, cross = _attention(), _attention(cross_attention_dim=24)
    g = torch.Generator().manual_seed(2)
    views, tokens, refs = 3, 5, 2
    x = torch.randn(views, tokens, 32, generator=g)
    ctx = torch.randn(views, refs * 4, 24, generator=g)
    target = torch.stack([random_rigid(g) for _ in range(views)])
    reference = torch.stack([random_rigid(g) for _ in range(refs)])[None].expand(views, -1, -1, -1)
    poses = CaPEPoses("6dof", target, reference)
    processor = CaPEAttnProcessor(multi_view=True)
    with torch.no_grad():
        got_self = processor(attn, x, num_views=views, poses=poses)
        got_cross = CaPEAttnProcessor(multi_view=False)(cross, x, ctx, num_views=views, poses=poses)

        def explicit(layer, qs, ks, vs):  # per-token vectors (after CaPE); heads split at the end
            q, k, v = torch.stack(qs), torch.stack(ks), torch.stack(vs)
            outs = []
            for h in range(2):
                sl = slice(16 * h, 16 * (h + 1))
                w = torch.softmax(q[:, sl] @ k[:, sl].T / 4.0, dim=-1)
                outs.append(w @ v[:, sl])
            return layer.to_out[0](torch.cat(outs, dim=-1))

        def chunks_times(vec, m):
            return (vec.reshape(-1, 4) @ m).reshape(-1)

        q = attn.to_q(x.reshape(-1, 32))
        k = attn.to_k(x.reshape(-1, 32))
        v = attn.to_v(x.reshape(-1, 32))
        view_of = [i // tokens for i in range(views * tokens)]
        qs = [chunks_times(q[i], torch.linalg.inv(target[view_of[i]]).T) for i in range(views * tokens)]
        ks = [chunks_times(k[i], target[view_of[i]]) for i in range(views * tokens)]
        want_self = explicit(attn, qs, ks, list(v)).reshape(views, tokens, 32)
        assert torch.allclose(got_self, want_self, atol=1e-4)

        for view in range(views):
            qv = cross.to_q(x[view])
            kv, vv = cross.to_k(ctx[view]), cross.to_v(ctx[view])
            qs = [chunks_times(qv[i], torch.linalg.inv(target[view]).T) for i in range(tokens)]
            ks = [chunks_times(kv[j], reference[view, j // 4]) for j in range(refs * 4)]
            assert torch.allclose(got_cross[view], explicit(cross, qs, ks, list(vv)), atol=1e-4)


# ------------------------------------------------------------------------------ on the UNet
def load_eschernet_networks(name):
    return SimpleNamespace(**load_model(ESCHERNET_WEIGHTS, name))


@pytest.fixture(scope="module")
def networks():
    return load_eschernet_networks("tiny-random")


def _unet_eps(unet, x, t, tokens, poses, n_view):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=tokens, cross_attention_kwargs={"num_views": n_view, "poses": poses}).sample


def _inputs(seed=0, views=4, refs=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(views, 4, 8, 8, generator=g)
    tokens = torch.randn(1, refs * 49, TINY_ESCHERNET_UNET["context_dim"], generator=g).expand(views, -1, -1)
    t = torch.full((views,), 500)
    return g, x, t, tokens


def test_identity_poses_equal_stock_attention(networks):
    from diffusers.models.attention_processor import AttnProcessor

    unet = networks.unet
    _, x, t, tokens = _inputs(views=1)
    six = CaPEPoses("6dof", torch.eye(4)[None], torch.eye(4)[None, None].expand(1, 2, 4, 4))
    four = CaPEPoses("4dof", torch.zeros(1, 4), torch.zeros(1, 2, 4))
    cape_6 = _unet_eps(unet, x, t, tokens, six, 1)
    cape_4 = _unet_eps(unet, x, t, tokens, four, 1)
    processors = unet.attn_processors
    try:
        unet.set_attn_processor(AttnProcessor())
        with torch.no_grad():
            stock = unet(x, t, encoder_hidden_states=tokens).sample
    finally:
        unet.set_attn_processor(processors)
    assert stock.std() > 0.05
    assert torch.allclose(cape_6, stock, atol=1e-5) and torch.allclose(cape_4, stock, atol=1e-5)


def test_unet_output_is_invariant_to_a_change_of_world_frame(networks):
    unet = networks.unet
    g, x, t, tokens = _inputs(seed=3)
    target_c2w = cameras([10.0, 20.0, -5.0, 40.0], [0.0, 80.0, 170.0, 250.0], [1.6, 1.8, 2.0, 2.2])
    reference_c2w = cameras([0.0, 30.0], [0.0, 135.0], [1.8, 1.9])

    def eps(kind, t_c2w, r_c2w):
        pose = eschernet_w2c if kind == "6dof" else eschernet_4dof_pose
        poses = CaPEPoses(kind, pose(t_c2w), pose(r_c2w)[None].expand(4, *pose(r_c2w).shape))
        return _unet_eps(unet, x, t, tokens, poses, 4)

    base = eps("6dof", target_c2w, reference_c2w)
    world = random_rigid(g)  # move every camera by one rigid transform of the world
    moved = eps("6dof", world @ target_c2w, world @ reference_c2w)
    assert torch.allclose(base, moved, atol=1e-4 * base.abs().max())
    # a different relative pose does change the output
    other = eps("6dof", target_c2w, world @ reference_c2w)
    assert (base - other).abs().max() > 1e-2 * base.abs().max()
    # 4DoF: turning the whole scene about the vertical axis changes no pose difference
    spin = torch.eye(4)
    a = math.radians(37.0)
    spin[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    base4 = eps("4dof", target_c2w, reference_c2w)
    assert torch.allclose(base4, eps("4dof", spin @ target_c2w, spin @ reference_c2w), atol=1e-4 * base4.abs().max())


def test_target_views_are_denoised_jointly(networks):
    unet = networks.unet
    _, x, t, tokens = _inputs(seed=4)
    target = cameras([10.0] * 4, [0.0, 90.0, 180.0, 270.0], [1.8] * 4)
    reference = eschernet_w2c(cameras([0.0], [0.0], [1.8]))[None].expand(4, 1, 4, 4)
    tokens = tokens[:, :49]
    base = _unet_eps(unet, x, t, tokens, CaPEPoses("6dof", eschernet_w2c(target), reference), 4)
    moved = target.clone()
    moved[3] = cameras([40.0], [300.0], [2.1])[0]
    changed = _unet_eps(unet, x, t, tokens, CaPEPoses("6dof", eschernet_w2c(moved), reference), 4)
    for view in range(4):  # one view's camera changes every view's prediction
        assert (changed[view] - base[view]).abs().max() > 1e-4
    perm = torch.tensor([2, 0, 3, 1])  # permuting views (latents + cameras) permutes the outputs
    permuted = _unet_eps(unet, x[perm], t, tokens, CaPEPoses("6dof", eschernet_w2c(target[perm]), reference), 4)
    assert torch.allclose(permuted, base[perm], atol=1e-5)


def test_reference_tokens_are_the_layer_normed_last_stage(networks):
    encoder = networks.image_encoder
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    pixels = reference_preprocess(images)
    assert pixels.shape == (2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    resized = F.interpolate((images + 1) / 2, (224, 224), mode="bicubic", antialias=True)
    assert torch.allclose(pixels, (resized - mean) / std, atol=1e-5)
    with torch.no_grad():
        tokens = reference_tokens(encoder, pixels)
        grid = encoder(pixel_values=pixels).last_hidden_state  # [2, C, 7, 7]
    assert tokens.shape == (2, 49, TINY_ESCHERNET_UNET["context_dim"])
    want = encoder.layernorm(grid.permute(0, 2, 3, 1).reshape(2, 49, -1))
    assert torch.allclose(tokens, want, atol=1e-5)


# ------------------------------------------------------------------------------ guidance
@pytest.fixture(scope="module")
def guidance():
    return find("eschernet-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64})


def test_guidance_conditions_on_references_and_uses_zero_tokens_unconditionally(guidance):
    g = torch.Generator().manual_seed(5)
    refs = cameras([0.0, 20.0, 10.0], [0.0, 120.0, 240.0], [1.8, 1.8, 1.8])
    cond_a = guidance.prepare_condition(torch.rand(3, 64, 64, 3, generator=g), refs)
    cond_b = guidance.prepare_condition(torch.rand(3, 64, 64, 3, generator=g), refs)
    assert cond_a.tokens.shape == (1, 3 * 49, TINY_ESCHERNET_UNET["context_dim"]) and cond_a.poses.shape == (3, 4, 4)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.full((4,), 400)
    target = guidance.cape_pose(cameras([15.0] * 4, [30.0, 120.0, 210.0, 300.0], [2.0] * 4))
    c_a, u_a = guidance.predict_noise(x, t, cond_a, target, 4)
    c_b, u_b = guidance.predict_noise(x, t, cond_b, target, 4)
    assert torch.allclose(u_a, u_b, atol=1e-6)  # unconditional: zero tokens, images do not matter
    assert (c_a - c_b).abs().max() > 1e-3


def test_guidance_sds_and_recon_losses_reach_the_renders(guidance):
    refs = cameras([0.0], [0.0], [1.8])
    cond = guidance.prepare_condition(torch.rand(1, 64, 64, 3), refs)
    c2w = cameras([15.0] * 8, [float(a) for a in range(0, 360, 45)], [2.0] * 8)
    for recon in (False, True):
        guidance.cfg.update_rule = "x0" if recon else "sds"
        rgb = torch.rand(8, 32, 32, 3, requires_grad=True)
        out = guidance(rgb, cond, Cameras.from_c2w(c2w, n_views=4))
        out["loss_sds"].backward()
        assert torch.isfinite(out["loss_sds"]) and rgb.grad.abs().sum() > 0
    guidance.cfg.update_rule = "sds"
    with pytest.raises(Exception, match="n_view"):
        guidance(torch.rand(6, 32, 32, 3), cond, Cameras.from_c2w(c2w[:6], n_views=3))
    with pytest.raises(Exception, match="posed images"):
        guidance(torch.rand(4, 32, 32, 3), None, Cameras.from_c2w(c2w[:4]))


def test_diffusers_folder_loads_the_same_networks(tmp_path, networks):
    for name in ("unet", "vae", "image_encoder"):
        getattr(networks, name).save_pretrained(str(tmp_path / name))
    loaded = load_eschernet_networks(str(tmp_path))
    _, x, t, tokens = _inputs(seed=6)
    poses = CaPEPoses("6dof", eschernet_w2c(cameras([5.0] * 4, [0.0, 90.0, 180.0, 270.0], [1.8] * 4)),
                      eschernet_w2c(cameras([0.0, 0.0], [0.0, 180.0], [1.8, 1.8]))[None].expand(4, 2, 4, 4))
    assert torch.allclose(_unet_eps(loaded.unet, x, t, tokens, poses, 4), _unet_eps(networks.unet, x, t, tokens, poses, 4))


def test_missing_weights_name_the_repo_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MissingWeightsError, match="hf download kxic/eschernet-6dof") as info:
        load_eschernet_networks("kxic/eschernet-6dof")
    assert "tiny-random" in str(info.value)


# ------------------------------------------------------------------------------ the recipes
def _write_references(tmp_path, n):
    from PIL import Image

    entries = []
    for i in range(n):
        rgba = np.zeros((48, 48, 4), np.uint8)
        yy, xx = np.mgrid[:48, :48]
        disc = (yy - 24) ** 2 + (xx - 20 - 4 * i) ** 2 < 13**2
        rgba[disc] = (200, 60 * i, 40, 255)
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"view{i}.png")
        entries.append({"image": f"view{i}.png", "elevation": 10.0 * i, "azimuth": 120.0 * i, "distance": 1.8})
    if n == 1:
        return [f"image={tmp_path / 'view0.png'}"]
    (tmp_path / "views.json").write_text(json.dumps(entries))
    return [f"references={tmp_path / 'views.json'}"]


TINY = [
    "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
    "data.height=16", "data.width=16", "data.resolution_milestones=[]", "data.condition_size=64",
    "data.random_camera.height=16", "data.random_camera.width=16", "data.random_camera.resolution_milestones=[]",
    "data.random_camera.eval_height=16", "data.random_camera.eval_width=16",
    "data.random_camera.n_val_views=1", "data.random_camera.n_test_views=2",
    "system.geometry.pos_encoding_config.n_levels=4", "system.geometry.pos_encoding_config.log2_hashmap_size=10",
    "system.geometry.isosurface_resolution=32",
    "system.exporter.texture_size=64", "system.renderer.num_samples_per_ray=32",
    "trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
    "system.test_fps=4", "trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("config", ["eschernet-6dof", "eschernet-4dof"])
@pytest.mark.parametrize("n_refs", [1, 3])
def test_recipe_trains_with_tiny_random(tmp_path, config, n_refs):
    args = ["--config", f"{config}.yaml", "--train", *_write_references(tmp_path, n_refs), f"exp_root_dir={tmp_path}", *TINY]
    assert main(args) == 0
    (trial,) = glob.glob(str(tmp_path / config / "*"))
    assert os.path.basename(trial).startswith("view0@" if n_refs == 1 else "views@")
    for rel in ("ckpts/last.ckpt", "save/it2-test.mp4", "save/it2-export/model.obj", "save/it2-0.png",
                "save/it2-export/model_normal.png"):  # analytic normals: a normal map by default
        assert os.path.isfile(os.path.join(trial, rel)), rel
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and not [k for k in ckpt["state_dict"] if "unet" in k or "image_encoder" in k]


def test_sample_writes_references_and_novel_views(tmp_path):
    import imageio.v2 as imageio

    args = ["--config", "eschernet-6dof.yaml", "--sample", *_write_references(tmp_path, 3), f"exp_root_dir={tmp_path}",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
            "data.condition_size=64", "sample.steps=2", "sample.views=[[0,90],[20,180]]"]
    assert main(args) == 0
    (grid,) = glob.glob(str(tmp_path / "eschernet-6dof" / "*" / "save" / "sample-seed0.png"))
    assert imageio.imread(grid).shape == (64, 5 * 64, 3)  # 3 references + 2 generated views
