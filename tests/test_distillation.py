"""Shared distillation math: forward process, exact denoisers, SDS gradient, rescale."""
from __future__ import annotations

import torch

from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.base import BaseGuidance


def test_schedule_matches_stable_diffusion_constants():
    ac = D.scaled_linear_alphas_cumprod()
    assert ac.shape == (1000,)
    # beta_0 = 0.00085, beta_999 = 0.012 (scaled linear)
    assert torch.isclose(ac[0], torch.tensor(1 - 0.00085, dtype=torch.float64))
    assert torch.isclose(ac[-1] / ac[-2], torch.tensor(1 - 0.012, dtype=torch.float64))
    assert 0.004 < ac[-1] < 0.006  # SD's well-known final abar ~ 0.0047


def test_x0_eps_round_trip_and_cfg():
    ac = D.scaled_linear_alphas_cumprod().float()
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    xt = D.add_noise(x0, eps, t, ac)
    assert torch.allclose(D.x0_from_eps(xt, eps, t, ac), x0, atol=1e-4)
    assert torch.allclose(D.eps_from_x0(xt, x0, t, ac), eps, atol=1e-3)
    eu, ec = torch.zeros(2), torch.ones(2)
    assert torch.allclose(D.classifier_free_guidance(eu, ec, 7.5), torch.full((2,), 7.5))


def test_exact_posterior_mean_single_and_mixture():
    data = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    alpha, sigma = torch.tensor([0.8]), torch.tensor([0.6])
    # one candidate: the posterior mean is that candidate whatever x_t is
    x_t = torch.randn(1, 2)
    assert torch.allclose(D.exact_posterior_mean(x_t, alpha, sigma, data[:1]), data[:1])
    # two candidates: closed-form softmax weights
    x_t = torch.tensor([[0.3, 0.1]])
    logits = -((x_t - alpha * data) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logits, 0)
    expected = (w[:, None] * data).sum(0, keepdim=True)
    assert torch.allclose(D.exact_posterior_mean(x_t, alpha, sigma, data), expected, atol=1e-6)
    # a log-prior shifts the weights
    biased = D.exact_posterior_mean(x_t, alpha, sigma, data, torch.tensor([0.0, 5.0]))
    assert biased[0, 0] < expected[0, 0]


def test_sds_loss_gradient_equals_weighted_residual():
    latents = torch.randn(2, 3, 4, 4, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4)
    D.loss_from_gradient(latents, grad).backward()
    assert torch.allclose(latents.grad, grad / 2)


def test_sds_with_exact_denoiser_pulls_towards_target():
    guidance = BaseGuidance({"min_step_percent": 0.3, "max_step_percent": 0.3})
    ac = guidance.alphas_cumprod
    target = torch.zeros(1, 3, 4, 4)
    latents = torch.ones(1, 3, 4, 4, requires_grad=True)

    def predict(x_t, t):
        return D.eps_from_x0(x_t, target.expand_as(x_t), t, ac)

    out = guidance.sds(latents, predict)
    out["loss_sds"].backward()
    # closed form: w(t)(eps_hat - eps) = (1 - abar) * alpha/sigma * (x - target)
    abar = ac[300]
    expected = (1 - abar) * abar.sqrt() / (1 - abar).sqrt() * (latents.detach() - target)
    assert torch.allclose(latents.grad, expected, atol=1e-5)
    assert out["timestep"].item() == 300


def test_timestep_schedule_and_sharing():
    g = BaseGuidance({"min_step_percent": [0, 0.98, 0.02, 100], "max_step_percent": 0.98,
                      "shared_timestep": True})
    assert g.min_step == 980
    g.do_update_step(0, 50)
    assert g.min_step == 500
    g.do_update_step(0, 100)
    assert g.min_step == 20
    t = D.sample_timesteps(8, g.min_step, g.max_step, shared=True)
    assert (t == t[0]).all()


def test_rescale_x0_matches_group_std():
    x_cfg = torch.randn(8, 4, 2, 2) * 3
    x_cond = torch.randn(8, 4, 2, 2)
    out = D.rescale_x0(x_cfg, x_cond, rescale=1.0, group=4)
    for g in range(2):
        sl = slice(4 * g, 4 * g + 4)
        assert torch.isclose(out[sl].std(), x_cond[sl].std(), rtol=1e-4)
    assert torch.allclose(D.rescale_x0(x_cfg, x_cond, 0.0, 4), x_cfg)
