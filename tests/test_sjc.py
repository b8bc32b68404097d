"""Score Jacobian Chaining: the update against a toy denoiser with a known score, the variance
of perturb-and-average scoring, the regularisers of Zero-1-to-3's 3drec, the SJC system's wiring,
and the known-answer run: SJC from the reference object's front render reproduces the object."""
from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from threestudio_like import find
from threestudio_like.cameras import Cameras
from conftest import known_answer_ious
from threestudio_like.cli import main
from threestudio_like.config import load_config
from threestudio_like.data.random_camera import make_batch
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.reference_object import ReferenceObjectGuidance
from threestudio_like.systems import losses as L

AC = D.scaled_linear_alphas_cumprod().float()


# ------------------------------------------------------------------------------ the update
class GaussianPrior:
    """Data ~ N(mu, s^2 I). Smoothed at sigma (VE) it is N(mu, (s^2 + sigma^2) I), whose exact
    denoiser is D(z) = mu + k (z - mu), k = s^2 / (s^2 + sigma^2). ``eps`` is the DDPM-form
    network: it sees x_t = z / sqrt(1 + sigma^2) and returns (z - D(z)) / sigma."""

    def __init__(self, mu: torch.Tensor, s: float) -> None:
        self.mu, self.s = mu, s
        self.inputs = []

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x_t.clone())
        sigma = D.ve_sigmas(AC)[t].reshape(-1, *[1] * (x_t.dim() - 1))
        z = x_t * torch.sqrt(1 + sigma**2)
        k = self.s**2 / (self.s**2 + sigma**2)
        mu = self.mu.repeat(z.shape[0] // self.mu.shape[0], *[1] * (z.dim() - 1))  # draw-major rows
        return (z - (mu + k * (z - mu))) / sigma


def _setup(batch=2, t_value=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, 3, 4, 4, generator=g)
    mu = torch.randn(batch, 3, 4, 4, generator=g)
    t = torch.full((batch,), t_value)
    sigma = D.ve_sigmas(AC)[t]
    return y, mu, t, sigma


def test_ve_form_matches_ddpm_form():
    t = torch.tensor([10, 300, 969])
    sigma = D.ve_sigmas(AC)[t].reshape(-1, 1)
    abar = AC[t].reshape(-1, 1)
    assert torch.allclose(sigma, ((1 - abar) / abar).sqrt())
    z, eps = torch.randn(3, 5), torch.randn(3, 5)
    x_t = D.ve_network_input(z, sigma)
    assert torch.allclose(x_t, abar.sqrt() * z, atol=1e-6)  # z / sqrt(1 + sigma^2) = alpha_t z
    # D = z - sigma eps is the DDPM x0 prediction from x_t
    assert torch.allclose(D.ve_denoised(z, sigma, eps), D.x0_from_eps(x_t, eps, t, AC), atol=1e-4)


@pytest.mark.parametrize("var_red", [True, False])
def test_sjc_gradient_for_a_known_score_is_the_closed_form(var_red):
    y, mu, t, sigma = _setup()
    prior = GaussianPrior(mu, s=0.7)
    ascent = D.perturb_and_average(y, t, sigma, prior.eps, n_perturb=3, var_red=var_red,
                                   generator=torch.Generator().manual_seed(5))
    noise = torch.randn((3, *y.shape), generator=torch.Generator().manual_seed(5))  # the same draws
    s = sigma.reshape(-1, 1, 1, 1)
    k = 0.7**2 / (0.7**2 + s**2)
    # (D(y + sigma n) - y) / sigma = -sigma (y - mu) / (s^2 + sigma^2) + k n  (var_red)
    # (D(z) - z) / sigma            = -sigma (y - mu) / (s^2 + sigma^2) - (1 - k) n
    mean_part = -s * (y - mu) / (0.7**2 + s**2)
    per_draw = mean_part + (k if var_red else k - 1) * noise
    assert torch.allclose(ascent, per_draw.mean(0), atol=1e-5)
    # the network saw z / sqrt(1 + sigma^2), stacked draw-major
    (x_in,) = prior.inputs
    z = (y[None] + s[None] * noise).reshape(-1, *y.shape[1:])
    assert torch.allclose(x_in, z / torch.sqrt(1 + s.repeat(3, 1, 1, 1) ** 2), atol=1e-6)
    # the expectation is sigma times the score of the smoothed data at y
    many = D.perturb_and_average(y, t, sigma, prior.eps, n_perturb=4000, var_red=var_red,
                                 generator=torch.Generator().manual_seed(1))
    assert torch.allclose(many, mean_part, atol=0.05)


def test_averaging_perturbations_reduces_variance_as_expected():
    y, mu, t, sigma = _setup(batch=1, t_value=600)
    prior = GaussianPrior(mu, s=0.7)
    k = float(0.7**2 / (0.7**2 + sigma[0] ** 2))
    g = torch.Generator().manual_seed(2)

    def variance(n, var_red):
        draws = torch.stack([D.perturb_and_average(y, t, sigma, prior.eps, n, var_red, g) for _ in range(400)])
        return draws.var(0).mean().item()

    one, four = variance(1, True), variance(4, True)
    assert one == pytest.approx(k**2, rel=0.15)  # per element: (s^2 / (s^2 + sigma^2))^2
    assert four == pytest.approx(k**2 / 4, rel=0.15)  # 1 / n_perturb
    assert variance(1, False) == pytest.approx((1 - k) ** 2, rel=0.15)  # without variance reduction


def test_sjc_loss_gradient_and_timestep_range():
    y = torch.randn(2, 3, 4, 4, requires_grad=True)
    prior = GaussianPrior(torch.zeros(2, 3, 4, 4), s=1.0)
    torch.manual_seed(3)
    out = D.sjc_update(y, prior.eps, AC, 10, 969, n_perturb=2)
    out["loss_sjc"].backward()
    torch.manual_seed(3)
    t = D.sample_timesteps(2, 10, 969, False)
    ascent = D.perturb_and_average(y, t, D.ve_sigmas(AC.double())[t].float(), prior.eps, 2)
    assert torch.allclose(y.grad, -ascent / 2, atol=1e-5)  # y.backward(-grad), per view
    assert 10 <= out["timestep"] <= 969 and out["grad_norm"] > 0


def test_reference_prior_sjc_points_to_the_reference():
    g = ReferenceObjectGuidance({"resolution": 16, "num_samples_per_ray": 64, "update_rule": "sjc", "n_perturb": 2})
    t = torch.tensor
    cam = make_batch(t([10.0]), t([30.0]), t([2.0]), t([45.0]), 16, 16)
    ref = g.render_reference(cam["c2w"], cam["fovy"], 16, 16)
    rgb = ref.clone().requires_grad_(True)
    g(rgb, None, Cameras.from_batch(cam))["loss_sjc"].backward()
    assert rgb.grad.abs().max() < 1e-5  # D = the reference: no update at the answer
    wrong = torch.full_like(ref, 0.5).requires_grad_(True)
    out = g(wrong, None, Cameras.from_batch(cam))
    out["loss_sjc"].backward()
    cos = torch.nn.functional.cosine_similarity(-wrong.grad.flatten(), (ref - wrong.detach()).flatten(), dim=0)
    assert cos > 0.99 and "sigma" in out


# ------------------------------------------------------------------------------ regularisers
def test_depth_smoothness_zero_on_a_plane_positive_on_a_step():
    plane = torch.full((1, 8, 8, 1), 2.0)  # a plane facing the camera: constant depth
    assert L.depth_smoothness(plane) == 0
    step = plane.clone()
    step[:, :, 4:] = 3.0  # a unit step between columns 3 and 4
    # horizontal differences: 8 of 8 x 7 pairs are 1; vertical: none -> (1/7 + 0) / 2
    assert L.depth_smoothness(step).item() == pytest.approx(1 / 14)
    assert L.depth_smoothness(step[0, ..., 0]).item() == pytest.approx(1 / 14)  # [H, W] too
    assert torch.equal(L.composite_depth(torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 1)), torch.full((1, 2, 2, 1), 10.0))


def _sjc_system(**cfg):
    """An SJC system whose scene is the analytic reference object (view-independent colours)."""
    base = {
        "render_latents": False,
        "geometry_type": "reference-object-geometry",
        "material_type": "no-material",
        "material": {"color_activation": "none"},
        "renderer": {"num_samples_per_ray": 64, "randomized": False},
        "exporter_type": "",
        "loss": {"lambda_sjc": 1.0},
    }
    base.update(cfg)
    return find("zero123-sjc-system")(base)


def test_near_view_loss_is_zero_at_zero_offset_for_a_view_independent_scene():
    t = torch.tensor
    views = make_batch(t([10.0, -5.0]), t([20.0, 200.0]), t([2.0, 2.2]), t([45.0, 45.0]), 16, 16)

    def near_loss(offset):
        system = _sjc_system(near_view_offset=offset).train()
        with torch.no_grad():
            out = system.render_view(views)
            near = system.render_view(system.near_views(views))
        return L.near_view_loss(out["comp_rgb"], out["full_depth"], near["comp_rgb"], near["full_depth"]).item()

    assert near_loss(0.0) == 0.0
    assert near_loss(0.05) > 1e-3


def test_near_view_cameras_move_the_eye_and_keep_looking_at_the_origin():
    t = torch.tensor
    views = make_batch(t([30.0]), t([45.0]), t([2.0]), t([40.0]), 4, 4)
    near = _sjc_system(near_view_offset=0.05).near_views(views)
    moved = near["camera_positions"] - views["camera_positions"]
    assert torch.allclose(moved.norm(dim=-1), t([0.05]), atol=1e-6)
    look = -near["c2w"][:, :3, 2]  # OpenGL: the camera looks along -z
    assert torch.allclose(look, -torch.nn.functional.normalize(near["camera_positions"], dim=-1), atol=1e-6)


def _front_render(path, size=64, elevation=20.0, distance=2.0, fovy=49.1):
    """The reference object's RGBA render (straight alpha) at azimuth 0."""
    g = ReferenceObjectGuidance({})
    t = torch.tensor
    cam = make_batch(t([elevation]), t([0.0]), t([distance]), t([fovy]), size, size)
    g._prepare_grid(torch.device("cpu"))
    with torch.no_grad():
        out = g.renderer(cam["rays_o"], cam["rays_d"])
    alpha = out["opacity"][0]
    rgb = (out["comp_rgb_fg"][0] / alpha.clamp_min(1e-6)).clamp(0, 1)
    import imageio.v2 as imageio

    imageio.imwrite(str(path), (torch.cat([rgb, alpha], -1).numpy() * 255 + 0.5).astype(np.uint8))
    return str(path)


def test_sjc_system_wires_every_loss_and_starts_sampled_depth_smoothness_halfway(tmp_path, monkeypatch):
    image = _front_render(tmp_path / "front.png", size=32)
    cfg = load_config("demo-sjc.yaml", [
        f"image={image}", "data.height=8", "data.width=8", "data.random_camera.height=8",
        "data.random_camera.width=8", "system.guidance.resolution=8", "system.renderer.num_samples_per_ray=32",
        "system.guidance.num_samples_per_ray=32", "system.loss.lambda_emptiness=1.0",
    ])
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system).train()
    seen = {}
    monkeypatch.setattr(system, "log", lambda name, value, **kw: seen.__setitem__(name, value))
    for step, expect_sampled in ((2, False), (6, True)):
        trainer = SimpleNamespace(max_steps=10, training=True, global_step=step, current_epoch=0)
        monkeypatch.setattr(system, "_trainer", trainer)
        seen.clear()
        loss = system.training_step(dm.train_dataset.collate([None]), 0)
        loss.backward()
        logged = {k[len("train/"):] for k in seen if k.startswith("train/loss_")}
        expected = {"loss_sjc", "loss_rgb", "loss_ref_depth_smooth", "loss_near_view", "loss_emptiness"}
        assert logged == expected | ({"loss_depth_smooth"} if expect_sampled else set()), logged
        assert torch.isfinite(loss) and "train/sigma" in seen


# ------------------------------------------------------------------------------ known answer
def test_sjc_from_the_front_render_reproduces_the_reference_object(tmp_path):
    """About a minute on 2 cores: 300 SJC steps at 32 x 32 with all of 3drec's losses on."""
    image = _front_render(tmp_path / "front.png", size=128)
    args = ["--config", "demo-sjc.yaml", "--train", f"image={image}", f"exp_root_dir={tmp_path}",
            "trainer.max_steps=300", "data.random_camera.n_test_views=4", "data.random_camera.eval_height=32",
            "data.random_camera.eval_width=32", "system.geometry.isosurface_resolution=64",
            "system.exporter.texture_size=64",
            "checkpoint.every_n_train_steps=1000", "trainer.val_check_interval=1000"]
    assert main(args) == 0
    (trial,) = glob.glob(os.path.join(str(tmp_path), "demo-sjc", "*"))
    mesh, trained_iou, blob_iou = known_answer_ious(trial)
    print(f"SJC volume IoU at 64^3: trained {trained_iou:.3f}, untrained blob {blob_iou:.3f}")
    assert trained_iou >= 0.4
    assert trained_iou > blob_iou + 0.15
