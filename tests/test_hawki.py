"""HawkI aerial-view synthesis: the IPM homography, the mutual-information estimator and its
guidance step (and why upstream's step does nothing), the personalisation stages with their cache,
and ``hawki-aerial.yaml --sample`` end to end with tiny random weights."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.hawki import ipm
from threestudio_like.hawki import mutual_info as MI
from threestudio_like.hawki import personalise as P
from threestudio_like.hawki.sources import (ZERO123PP_VIEWS, ViewRequest, make_guidance_image, nearest_view,
                                            zero123pp_view)

LORA_STEPS, LORA_LR = 100, 1e-2
"""Tiny-model LoRA stage: measured to cut the fixed-noise denoising loss by well over 30%."""


def _photo(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A structured test photo ``[S, S, 3]``: sky gradient, ground, a dark block (a house)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, size)[:, None, None].expand(size, size, 3)
    image = torch.where(y < 0.5, torch.tensor([0.5, 0.7, 1.0]) * (1 - y), torch.tensor([0.3, 0.6, 0.2]) * y + 0.2)
    image = image.clone()
    image[size // 3: 2 * size // 3, size // 4: size // 2] = torch.tensor([0.6, 0.2, 0.1])
    return (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------------------ IPM


def test_homography_maps_the_documented_corners_exactly():
    matrix = ipm.ipm_matrix()
    mapped = ipm.apply_homography(matrix, torch.tensor(ipm.IPM_SOURCE_CORNERS, dtype=torch.float64))
    assert torch.allclose(mapped, torch.tensor(ipm.IPM_TARGET_CORNERS, dtype=torch.float64), atol=1e-9)
    general = ipm.homography_from_points([(0, 0), (10, 0), (10, 10), (0, 10)], [(1, 2), (12, 1), (9, 14), (0, 9)])
    back = ipm.apply_homography(general, torch.tensor([[0.0, 0], [10, 0], [10, 10], [0, 10]]))
    assert torch.allclose(back, torch.tensor([[1.0, 2], [12, 1], [9, 14], [0, 9]], dtype=torch.float64), atol=1e-9)


def test_homography_and_warp_agree_with_opencv():
    cv2 = pytest.importorskip("cv2")
    src, dst = np.float32(ipm.IPM_SOURCE_CORNERS), np.float32(ipm.IPM_TARGET_CORNERS)
    np.testing.assert_allclose(ipm.ipm_matrix().numpy(), cv2.getPerspectiveTransform(src, dst), atol=1e-9)
    general_dst = np.float32([[3, 5], [250, 20], [240, 250], [10, 230]])
    ours = ipm.homography_from_points(ipm.IPM_SOURCE_CORNERS, general_dst.tolist()).numpy()
    np.testing.assert_allclose(ours, cv2.getPerspectiveTransform(src, general_dst), rtol=1e-6, atol=1e-8)
    # HawkI's warp (an integer shear): OpenCV's result to float precision
    image = torch.rand(256, 256, 3, generator=torch.Generator().manual_seed(0))
    theirs = cv2.warpPerspective(image.numpy(), ipm.ipm_matrix().numpy(), ipm.IPM_CANVAS, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(ipm.warp_perspective(image, ipm.ipm_matrix(), ipm.IPM_CANVAS).numpy() - theirs).max() < 1e-4
    # a true perspective warp of a smooth image: OpenCV rounds sample positions to 1/32 pixel
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(1)),
                                             (40, 40), mode="bilinear")[0].permute(1, 2, 0).contiguous()
    matrix = ipm.homography_from_points([(0, 0), (40, 0), (40, 40), (0, 40)], [(2, 5), (38, 0), (40, 35), (0, 40)])
    theirs = cv2.warpPerspective(smooth.numpy(), matrix.numpy(), (48, 44), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
    ours = ipm.warp_perspective(smooth, matrix, (48, 44)).numpy()
    inside = (ours > 0).all(-1) & (theirs > 0).all(-1)
    inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]  # off the border
    inside[[0, -1]], inside[:, [0, -1]] = False, False
    assert inside.mean() > 0.5 and np.abs(ours - theirs)[inside].max() < 5e-3


def test_rotation_has_scipys_geometry():
    ndimage = pytest.importorskip("scipy.ndimage")
    image = torch.rand(30, 20, 3, generator=torch.Generator().manual_seed(1))  # not square: the direction shows
    ours = ipm.rotate_reshape(image, -45.0).numpy()
    theirs = ndimage.rotate(image.numpy(), -45.0, reshape=True, order=1, mode="grid-constant")
    assert ours.shape == theirs.shape == (35, 35, 3)
    assert np.abs(ours - theirs).max() < 1e-4


def test_ipm_image_is_the_rotated_shear_at_512():
    photo = _photo(64)
    out = ipm.ipm_image(photo)
    assert out.shape == (512, 512, 3) and 0 <= float(out.min()) and float(out.max()) <= 1
    # the corners of the rotated canvas are empty (black), the centre holds the image
    assert float(out[:20, :20].max()) < 0.05 and float(out[236:276, 236:276].mean()) > 0.1


# ------------------------------------------------------------------------------------------ MI


def test_nmi_of_an_image_with_itself_is_one_and_of_independent_images_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(4, 1, 16, 16, generator=g), (64, 64), mode="bilinear")
    assert torch.allclose(MI.normalised_mutual_information(x, x), torch.ones(4), atol=1e-3)
    a, b = torch.randn(4, 64 * 64, generator=g), torch.randn(4, 64 * 64, generator=g)
    assert float(MI.normalised_mutual_information(a, b).max()) < 0.05
    related = MI.normalised_mutual_information(x, x + 0.3 * torch.randn(x.shape, generator=g))
    assert 0.2 < float(related.min()) < 0.9  # a noisy copy lies in between
    assert float(MI.normalised_mutual_information(x, x, normalisation="fixed").min()) > 0.999


def _mi_case():
    g = torch.Generator().manual_seed(3)
    target = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8, generator=g), (32, 32), mode="bilinear")
    z_t = 0.5 * target + torch.randn(1, 4, 32, 32, generator=g)
    eps = torch.randn(1, 4, 32, 32, generator=g)
    abar = torch.tensor(0.5)

    def x0_of(z):
        return (z - (1 - abar).sqrt() * eps) / abar.sqrt()

    return target, z_t, x0_of


def test_one_mi_guidance_step_increases_nmi_with_the_target():
    target, z_t, x0_of = _mi_case()
    before = float(MI.channel_nmi(x0_of(z_t), target))
    grad = MI.mi_gradient(z_t, x0_of, target)
    assert grad.abs().sum() > 0
    with torch.no_grad():  # as inside the sampler
        moved = MI.mi_step(z_t, MI.mi_gradient(z_t, x0_of, target), 0.05)
    after = float(MI.channel_nmi(x0_of(moved), target))
    assert after > before + 1e-3, (before, after)


def _upstream_style_step(z_prev, predict_x0, target, lr):
    """HawkI's released MI step, re-written for comparison: under ``no_grad`` the score is
    re-wrapped as a new leaf with ``requires_grad``, so ``z.grad`` stays ``None`` and Adam skips
    the latent."""
    z = z_prev.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    with torch.no_grad():
        score = MI.channel_nmi(predict_x0(z), target).sum()
    loss = -score.detach().clone().requires_grad_(True)  # what Variable(score, requires_grad=True) does
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return z.detach()


def test_the_upstream_style_step_leaves_the_latent_unchanged():
    """HawkI's released step (no_grad + score re-wrapped as a leaf) never moves the latent, so
    the test above would fail on it."""
    target, z_t, x0_of = _mi_case()
    unchanged = _upstream_style_step(z_t, x0_of, target, lr=0.05)
    assert torch.equal(unchanged, z_t)
    assert float(MI.channel_nmi(x0_of(unchanged), target)) == float(MI.channel_nmi(x0_of(z_t), target))


# ------------------------------------------------------------------------------------------ stages


@pytest.fixture(scope="module")
def tiny_sd():
    from threestudio_like.guidance.stable_diffusion import SD_WEIGHTS
    from threestudio_like.models.builders import freeze
    from threestudio_like.models.loader import load_model

    def build():
        parts = load_model(SD_WEIGHTS, "tiny-random", torch.float32)
        return freeze(parts["unet"]), freeze(parts["vae"])

    unet, vae = build()
    x = _photo(64).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    embedding = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    return build, latents, embedding


def _lora_stage(tiny_sd, tmp_path, steps):
    """A tiny UNet trained by the LoRA stage: ``(unet, loss before, loss after, cache)``."""
    build, latents, embedding = tiny_sd
    unet, _ = build()
    P.add_lora(unet, 4)
    alphas = P.noise_schedule()
    before = P.evaluation_loss(unet, latents, embedding, alphas)
    cache = P.StageCache(str(tmp_path / "trial" / "hawki"))
    P.run_lora_stage(unet, latents, embedding, P.StageSpec("lora", steps, LORA_LR), 4, cache, "k", seed=0)
    return unet, before, P.evaluation_loss(unet, latents, embedding, alphas), cache


@pytest.mark.slow
def test_lora_stage_cuts_the_denoising_loss_by_30_percent(tiny_sd, tmp_path):
    """The configured-steps figure (100 Adam steps, lr 1e-2, rank 4): measured 36% lower."""
    _, before, after, _ = _lora_stage(tiny_sd, tmp_path, LORA_STEPS)
    print(f"LoRA stage: fixed-noise loss {before:.4f} -> {after:.4f} ({100 * (1 - after / before):.1f}% lower)")
    assert after <= 0.7 * before


def test_saved_lora_reloads_with_identical_outputs(tiny_sd, tmp_path):
    build, latents, embedding = tiny_sd
    unet, before, after, cache = _lora_stage(tiny_sd, tmp_path, 5)
    assert after != before  # the LoRA changed the UNet
    fresh, _ = build()
    P.add_lora(fresh, 4)  # B = 0: the fresh LoRA is the identity
    assert P.evaluation_loss(fresh, latents, embedding, P.noise_schedule()) == pytest.approx(before, rel=1e-6)
    P.run_lora_stage(fresh, latents, embedding, P.StageSpec("lora", 5, LORA_LR), 4, cache, "k", seed=0)
    t = torch.tensor([10, 500, 990])
    z = torch.randn(3, *latents.shape[1:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = unet(z, t, encoder_hidden_states=embedding.expand(3, -1, -1)).sample
        reloaded = fresh(z, t, encoder_hidden_states=embedding.expand(3, -1, -1)).sample
    assert torch.allclose(ours, reloaded, atol=1e-6, rtol=0)


def test_embedding_stage_lowers_the_loss_and_a_rerun_reuses_the_saved_result(tiny_sd, tmp_path, monkeypatch):
    build, latents, embedding = tiny_sd
    unet, _ = build()
    alphas = P.noise_schedule()
    spec = P.StageSpec("embedding", 20, 1e-1)
    cache = P.StageCache(str(tmp_path / "a" / "hawki"), str(tmp_path / "*" / "hawki"))
    key = P.stage_key(stage=vars(spec), init=embedding, photo=latents)
    fitted = P.run_embedding_stage(unet, latents, embedding, spec, cache, key, seed=0)
    before = P.evaluation_loss(unet, latents, embedding, alphas)
    after = P.evaluation_loss(unet, latents, fitted, alphas)
    print(f"embedding stage: fixed-noise loss {before:.4f} -> {after:.4f}")
    assert after < 0.97 * before  # measured 5.6% lower

    def no_optimisation(*args, **kwargs):
        raise AssertionError("the cached stage ran optimisation steps")

    monkeypatch.setattr(P, "optimise", no_optimisation)
    other_trial = P.StageCache(str(tmp_path / "b" / "hawki"), str(tmp_path / "*" / "hawki"))
    again = P.run_embedding_stage(unet, latents, embedding, spec, other_trial, key, seed=0)
    assert torch.equal(again, fitted)
    assert os.path.isfile(other_trial.path("embedding", key))  # copied into the new trial
    changed = P.stage_key(stage={**vars(spec), "lr": 1e-3}, init=embedding, photo=latents)
    assert changed != key
    with pytest.raises(AssertionError, match="ran optimisation"):
        P.run_embedding_stage(unet, latents, embedding, spec, other_trial, changed, seed=0)


# ------------------------------------------------------------------------------------------ sources


def test_zero123pp_view_choice_is_the_nearest_on_the_sphere():
    assert len(ZERO123PP_VIEWS) == 6 and ZERO123PP_VIEWS[0] == (20.0, 30.0) and ZERO123PP_VIEWS[1] == (-10.0, 90.0)
    assert nearest_view(ZERO123PP_VIEWS, 60.0, 20.0) == 0
    assert nearest_view(ZERO123PP_VIEWS, 60.0, 160.0) == 2  # 150 deg, elevation 20
    views = torch.arange(6.0)[:, None, None, None].expand(6, 4, 4, 3)
    request = ViewRequest(30.0, 260.0, 0.0, 4, 0, {})
    assert float(zero123pp_view(views, request)[0, 0, 0]) == 4.0  # (20, 270)
    with pytest.raises(Exception, match="nope.*not available.*ipm, zero123, zero123pp"):
        make_guidance_image("nope", _photo(32), request)


def test_zero123pp_source_is_its_sampled_view_nearest_the_request():
    from threestudio_like.guidance.zero123pp import load_zero123pp
    from threestudio_like.sampling.zero123pp import sample_six_views

    options = {"model_name_or_path": "tiny-random", "tile_size": 32, "steps": 2, "guidance_scale": 4.0}
    request = ViewRequest(40.0, 140.0, 0.0, 32, 7, options)  # nearest: (20, 150), the third view
    photo = _photo(48)
    image = make_guidance_image("zero123pp", photo, request)
    views, _, _ = sample_six_views(load_zero123pp("tiny-random", tile_size=32), photo.permute(2, 0, 1), steps=2,
                                   guidance_scale=4.0, generator=torch.Generator().manual_seed(7))
    assert image.shape == (32, 32, 3)
    assert torch.equal(image, views[2].permute(1, 2, 0).float())


def test_zero123_source_renders_the_requested_view():
    request = ViewRequest(60.0, 30.0, 0.0, 64, 0, {"model_name_or_path": "tiny-random", "image_size": 64,
                                                    "steps": 2, "guidance_scale": 3.0})
    image = make_guidance_image("zero123", _photo(48), request)
    assert image.shape == (64, 64, 3) and float(image.std()) > 0


# ------------------------------------------------------------------------------------------ CLI


def _args(tmp_path, photo_path, *extra):
    return ["--config", "hawki-aerial.yaml", "--sample", f"image={photo_path}", "prompt=a photo of a house",
            f"exp_root_dir={tmp_path / 'out'}", f"system.prompt_processor.cache_dir={tmp_path}/cache",
            "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
            "system.guidance.embedding_steps=2", "system.guidance.lora_steps=2",
            "system.guidance.guidance_embedding_steps=1", "system.guidance.guidance_lora_steps=1",
            "system.guidance.ddim_steps=2", "system.guidance.mi_scale=0.05", *extra]


def test_sample_runs_end_to_end_and_a_rerun_reuses_the_stages(tmp_path, capsys):
    from PIL import Image

    photo_path = tmp_path / "house.png"
    Image.fromarray((_photo(80).numpy() * 255).astype(np.uint8)).save(photo_path)
    assert main(_args(tmp_path, photo_path)) == 0
    first = capsys.readouterr().out
    assert "hawki: embedding" in first and "hawki: guidance-lora" in first
    trial, = glob.glob(str(tmp_path / "out" / "hawki-aerial" / "house@*"))
    save = os.path.join(trial, "save")
    names = sorted(os.listdir(save))
    assert names == ["hawki-aerial.png", "hawki-guidance-ipm.png", "hawki-ipm.png", "hawki-sheet.png"], names
    assert Image.open(os.path.join(save, "hawki-aerial.png")).size == (64, 64)
    sheet = Image.open(os.path.join(save, "hawki-sheet.png"))
    assert sheet.size == (4 * 64, 64 + 24)
    stages = sorted(os.path.basename(p).split("-")[0] for p in glob.glob(os.path.join(trial, "hawki", "*.safetensors")))
    assert len(stages) == 5  # four stages + the guidance image
    assert main(_args(tmp_path, photo_path, "use_timestamp=false", "tag=again")) == 0
    second = capsys.readouterr().out
    assert "hawki: embedding" not in second and "hawki: lora" not in second
    again = Image.open(str(tmp_path / "out" / "hawki-aerial" / "again" / "save" / "hawki-aerial.png"))
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(os.path.join(save, "hawki-aerial.png"))))


def test_missing_image_is_a_clear_error(tmp_path, capsys):
    assert main(_args(tmp_path, tmp_path / "nope.png")) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and "not found" in err and "image=" in err


def test_bad_guidance_image_source_names_the_choices(tmp_path, capsys):
    photo_path = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray((_photo(32).numpy() * 255).astype(np.uint8)).save(photo_path)
    assert main(_args(tmp_path, photo_path, "system.guidance.guidance_image=homography")) == 2
    err = capsys.readouterr().err
    assert "guidance_image" in err and "ipm" in err and "zero123" in err


def test_interpolated_text_embedding_is_the_papers_mix():
    from types import SimpleNamespace

    from threestudio_like.hawki.pipeline import mixed_text

    aerial, hom = torch.ones(1, 77, 8), torch.zeros(1, 77, 8)
    c = SimpleNamespace(text_embedding="interpolated", alpha=0.1)
    assert torch.allclose(mixed_text(c, aerial, hom), torch.full((1, 77, 8), 0.1))
    c.text_embedding = "aerial"
    assert torch.equal(mixed_text(c, aerial, hom), aerial)


@pytest.mark.parametrize("through_unet", [False, True])
def test_the_samplers_mi_hook_moves_the_latent_except_after_the_last_step(through_unet):
    from types import SimpleNamespace

    from threestudio_like.hawki.pipeline import mi_hook

    target, z_t, _ = _mi_case()
    weight = torch.full((4, 1, 1), 0.3)
    c = SimpleNamespace(mi_scale=0.05, mi_bins=16, mi_sigma=0.15, mi_normalisation="minmax", mi_fixed_range=4.0,
                        mi_through_unet=through_unet)
    alphas = P.noise_schedule().float()
    predict = lambda z, t: weight * z + 0.1  # noqa: E731  (a differentiable stand-in for the UNet)
    hook = mi_hook(predict, alphas, target, c)
    t = torch.tensor([500])
    eps = predict(z_t, t)
    with torch.no_grad():
        moved = hook(z_t, z_t, t, eps, 3, 50)
        last = hook(z_t, z_t, t, eps, 49, 50)
    assert torch.equal(last, z_t)
    step = (moved - z_t).pow(2).mean().sqrt()
    assert abs(float(step) - 0.05) < 1e-4  # RMS displacement = mi_scale
    abar = alphas[500]

    def x0(z):  # as the hook sees it: eps re-predicted from z, or the step's eps held fixed
        return (z - (1 - abar).sqrt() * (predict(z, t) if through_unet else eps)) / abar.sqrt()

    assert float(MI.channel_nmi(x0(moved), target)) > float(MI.channel_nmi(x0(z_t), target))
