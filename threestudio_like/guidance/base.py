"""Base class of every guidance: the typed call, the timestep schedule and the update rules.

A guidance is called as ``guidance(rgb, condition, cameras, rgb_as_latents=False)``:

* ``rgb`` ``[B, H, W, C]`` renders (or latent renders);
* ``condition`` what the prior is conditioned on, of the type the prior declares in
  ``condition_type`` (text embeddings from a prompt processor, an image condition made by
  ``prepare_condition(images, c2w)``, or nothing);
* ``cameras`` a :class:`~threestudio_like.cameras.Cameras` (never loose batch keys).

A concrete guidance implements :meth:`BaseGuidance.guide`: it turns the renders into the space
its model works in and hands a noise predictor to :meth:`BaseGuidance.distil`, which applies the
configured update rule (``sds`` | ``x0`` | ``sjc``). Sampling ``t``, adding noise, weighting,
clipping and the loss whose gradient is the update live in
:mod:`threestudio_like.guidance.distillation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Literal, Optional, Tuple

import torch
from torch import Tensor

from threestudio_like.base import BaseObject
from threestudio_like.cameras import Cameras
from threestudio_like.config import schedule_value
from threestudio_like.errors import ConfigError, FieldError, in_range
from threestudio_like.guidance import distillation as D

UpdateRule = Literal["sds", "x0", "sjc"]
Weighting = Literal["sds", "uniform", "fantasia3d"]
NoisePredictor = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]
"""``predict(x_t, t) -> (eps_guided, eps_conditional)``, without grad."""


def classifier_free(predict_branches: NoisePredictor, scale: float) -> NoisePredictor:
    """A guided predictor from ``predict_branches(x_t, t) -> (eps_cond, eps_uncond)``:
    ``(eps_u + s (eps_c - eps_u), eps_c)``, the convention of every prior here."""

    def predict(x_t: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        eps_cond, eps_uncond = predict_branches(x_t, t)
        return D.classifier_free_guidance(eps_uncond, eps_cond, scale), eps_cond

    return predict


class BaseGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        guidance_scale: float = 1.0
        """Classifier-free guidance scale s in eps_u + s (eps_c - eps_u)."""
        min_step_percent: Any = 0.02
        """Lowest timestep as a fraction of the schedule (may be a schedule)."""
        max_step_percent: Any = 0.98
        """Highest timestep as a fraction of the schedule (may be a schedule)."""
        weighting_strategy: Weighting = "sds"
        """w(t) of SDS: sds (1 - abar), uniform, fantasia3d."""
        grad_clip: Any = None
        """Clamp the per-element SDS gradient to +-value (may be a schedule); None: off."""
        shared_timestep: bool = False
        """Draw one timestep for the whole batch (multi-view priors) instead of one per view."""
        num_train_timesteps: int = 1000
        """Length of the prior's diffusion schedule."""
        update_rule: UpdateRule = "sds"
        """sds (score distillation) | x0 (MVDream's x0-reconstruction loss) | sjc (Score Jacobian
        Chaining with perturb-and-average scoring)."""
        recon_std_rescale: float = 0.0
        """x0: CFG rescale of the reconstructed x0 towards the conditional std (per view group); 0 disables."""
        n_perturb: int = 1
        """sjc: noise draws averaged per view."""
        var_red: bool = True
        """sjc: variance-reduced gradient (D - y) / sigma instead of (D - z) / sigma."""

        def validate(self) -> None:
            if self.n_perturb < 1:
                raise FieldError("n_perturb", f"must be >= 1, got {self.n_perturb}")
            if not 0.0 <= self.recon_std_rescale <= 1.0:
                raise FieldError("recon_std_rescale", f"must be in [0, 1], got {self.recon_std_rescale}")
            if self.num_train_timesteps < 2:
                raise FieldError("num_train_timesteps", f"must be >= 2, got {self.num_train_timesteps}")
            ends = {}
            for name in ("min_step_percent", "max_step_percent"):
                try:  # at the first step and long after the end of a schedule
                    ends[name] = [schedule_value(getattr(self, name), 0, step) for step in (0, 10**9)]
                except (ConfigError, TypeError):
                    raise FieldError(name, "must be a number or [start_step, start, end, end_step], "
                                           f"got {getattr(self, name)!r}") from None
                for value in ends[name]:
                    in_range(name, value, 0, 1)
            if any(lo > hi for lo, hi in zip(ends["min_step_percent"], ends["max_step_percent"])):
                raise FieldError("min_step_percent", f"must not exceed max_step_percent, got "
                                                     f"{ends['min_step_percent']} > {ends['max_step_percent']}")

    cfg: Config
    condition_type: ClassVar[Optional[type]] = None
    """The condition the prior needs (None: it takes none and ignores what it is given)."""
    condition_hint: ClassVar[str] = ""
    """How to provide the condition, for the error when it is missing or of another type."""
    conditioned_on_images: ClassVar[bool] = False
    """True for image priors: systems and ``--sample`` call :meth:`prepare_condition`."""
    sample_defaults: ClassVar[Optional[Dict[str, Any]]] = None
    """``--sample`` settings of this prior where the recipe's ``sample:`` leaves them unset;
    None: the prior has no sampler."""

    def configure(self) -> None:
        self.alphas_cumprod = D.scaled_linear_alphas_cumprod(self.cfg.num_train_timesteps).float()
        self.global_step = 0
        self.update_step(0, 0)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        n = self.cfg.num_train_timesteps
        self.min_step = int(n * schedule_value(self.cfg.min_step_percent, epoch, global_step))
        self.max_step = int(n * schedule_value(self.cfg.max_step_percent, epoch, global_step))
        self.max_step = max(self.max_step, self.min_step)
        clip = self.cfg.grad_clip
        self.grad_clip_value = None if clip is None else schedule_value(clip, epoch, global_step)

    # -- the call -----------------------------------------------------------------------------
    def render_input(self, out: Dict[str, Tensor]) -> Tensor:
        """What the prior takes from the renderer's outputs ``out`` (``[B, H, W, C]``): the colour
        ``comp_rgb``; RGBD priors add depth and opacity channels."""
        return out["comp_rgb"]

    def __call__(self, rgb: Tensor, condition: Any, cameras: Cameras, *, rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """Loss terms (``loss_sds`` or ``loss_sjc``) and diagnostics for renders ``rgb``."""
        if not isinstance(cameras, Cameras):
            raise TypeError(f"{type(self).__name__} takes the cameras as threestudio_like.cameras.Cameras "
                            f"(Cameras.from_batch(batch)), got {type(cameras).__name__}.")
        expected = self.condition_type
        if expected is not None and not isinstance(condition, expected):
            raise ConfigError(f"{type(self).__name__} needs a {expected.__name__} condition, got "
                              f"{type(condition).__name__}. {self.condition_hint}")
        return self.guide(rgb, condition, cameras, rgb_as_latents=rgb_as_latents)

    def guide(self, rgb: Tensor, condition: Any, cameras: Cameras, rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """The prior's part of the call (inputs already checked)."""
        raise NotImplementedError

    def prepare_condition(self, images: Tensor, c2w: Tensor) -> Any:
        """The condition of input images ``[N, H, W, 3]`` taken by cameras ``c2w`` (image priors)."""
        raise ConfigError(f"{type(self).__name__} is not conditioned on images.")

    # -- update rules -------------------------------------------------------------------------
    def distil(self, latents: Tensor, predict: NoisePredictor, group: int = 1) -> Dict[str, Tensor]:
        """The configured update rule on ``latents`` ``[B, ...]`` (requires grad).

        ``predict(x_t, t)`` returns ``(guided eps, conditional eps)``; SJC calls it on
        ``n_perturb * B`` rows stacked draw-major. ``group``: views per object (x0 rescale).
        """
        rule = self.cfg.update_rule
        if rule == "sjc":
            return D.sjc_update(
                latents, lambda x_t, t: predict(x_t, t)[0], self.alphas_cumprod, self.min_step, self.max_step,
                n_perturb=self.cfg.n_perturb, var_red=self.cfg.var_red, shared_timestep=self.cfg.shared_timestep,
            )
        if rule == "x0":
            return self.x0_reconstruction(latents, predict, self.cfg.recon_std_rescale, group=group)
        return self.sds(latents, lambda x_t, t: predict(x_t, t)[0])

    def sds(
        self,
        latents: Tensor,
        predict_noise: Callable[[Tensor, Tensor], Tensor],
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, Tensor]:
        """Score distillation on ``latents`` (``[B, C, H, W]``, requires grad).

        ``predict_noise(x_t, t)`` returns the guided noise prediction; it runs without grad.
        """
        batch = latents.shape[0]
        t = D.sample_timesteps(
            batch, self.min_step, self.max_step, self.cfg.shared_timestep,
            device=latents.device, generator=generator,
        )
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        with torch.no_grad():
            x_t = D.add_noise(latents.detach(), noise, t, self.alphas_cumprod)
            eps_pred = predict_noise(x_t, t)
        weight = D.sds_weight(t, self.alphas_cumprod, self.cfg.weighting_strategy, latents)
        grad = D.sds_gradient(eps_pred, noise, weight, self.grad_clip_value)
        return {
            "loss_sds": D.loss_from_gradient(latents, grad),
            "grad_norm": grad.norm(),
            "timestep": t.float().mean(),
        }

    def x0_reconstruction(
        self,
        latents: Tensor,
        predict_noise: NoisePredictor,
        std_rescale: float = 0.0,
        group: int = 1,
    ) -> Dict[str, Tensor]:
        """MVDream's x0-reconstruction loss on ``latents`` ``[B, C, H, W]`` (requires grad).

        ``predict_noise(x_t, t)`` returns ``(guided eps, conditional eps)`` without grad. The
        guided x0 is rescaled towards the conditional one's std per ``group`` consecutive views
        (``std_rescale`` r; 0 disables), and the loss is ``0.5 ||latents - x0||^2 / B``, whose
        gradient equals SDS with w(t) = sigma / alpha.
        """
        batch = latents.shape[0]
        t = D.sample_timesteps(
            batch, self.min_step, self.max_step, self.cfg.shared_timestep, device=latents.device
        )
        noise = torch.randn_like(latents)
        with torch.no_grad():
            x_t = D.add_noise(latents.detach(), noise, t, self.alphas_cumprod)
            eps, eps_cond = predict_noise(x_t, t)
            x0 = D.x0_from_eps(x_t, eps, t, self.alphas_cumprod)
            if std_rescale > 0:
                x0_cond = D.x0_from_eps(x_t, eps_cond, t, self.alphas_cumprod)
                x0 = D.rescale_x0(x0, x0_cond, std_rescale, group=group)
        return {
            "loss_sds": D.reconstruction_loss(latents, x0),
            "grad_norm": ((latents.detach() - x0) / batch).norm(),
            "timestep": t.float().mean(),
        }
