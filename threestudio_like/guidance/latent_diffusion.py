"""Shared base of latent-diffusion guidances (MVDream, Stable Diffusion, Zero123, ...).

:class:`LatentDiffusionGuidance` owns the frozen networks and their precision (fp16 weights on
CUDA, fp32 on CPU), moves them to the renders' device on first use, encodes renders into VAE
latents at ``image_size`` and decodes them back, and runs DDIM sampling (``--sample``). The
module also builds stock diffusers/transformers models from original (ldm) state dicts, through
:mod:`threestudio_like.guidance.ldm_convert`, and at toy size for ``tiny-random``.

diffusers and transformers are imported lazily: importing the package (to read a config) stays
fast.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.guidance import ldm_convert as LC
from threestudio_like.guidance.base import BaseGuidance
from threestudio_like.guidance.weights import WeightsSource, rerandomize_parameters

SD_SCALING_FACTOR = 0.18215
# A KL-f8 autoencoder at toy size (4 levels keep the 8x downsampling).
TINY_VAE_DDCONFIG: Dict[str, Any] = {
    "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "in_channels": 3, "out_ch": 3, "z_channels": 4,
}
# The OpenCLIP ViT-H/14 text tower of SD2.x, as read by SD2 (penultimate layer + ln_final).
SD2_TEXT_HEAD_WIDTH = 64


def pick_device_dtype(half_precision: bool, device: Optional[torch.device] = None) -> Tuple[torch.device, torch.dtype]:
    """``(device, dtype)``: fp16 on CUDA when ``half_precision``, fp32 otherwise and on CPU."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float16 if (half_precision and device.type == "cuda") else torch.float32
    return device, dtype


def quiet_progress_bars() -> None:
    """No per-file progress bars from diffusers/transformers when loading or saving models."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except Exception:  # older versions: the bars are only cosmetic
        pass


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with a fixed torch seed without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients for parameters."""
    module.eval()
    module.requires_grad_(False)
    return module


def move(module: nn.Module, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """``module.to(device, dtype)``, casting only when some parameter has another dtype."""
    if device is not None:
        module.to(device)
    if dtype is not None and any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def _load_exact(build: Callable[[], nn.Module], state_dict: Dict[str, Tensor], what: str) -> nn.Module:
    """Build a model without allocating its weights, then adopt ``state_dict`` (all keys)."""
    with torch.device("meta"):
        model = build()
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise LC.ConversionError(
            f"{what}: converted weights do not fit the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})."
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise LC.ConversionError(f"{what}: tensors without values after loading: {left[:5]}.")
    return model


# ------------------------------------------------------------------------------------------
# models from ldm state dicts, and at toy size


def unet_from_ldm(
    unet_sd: Dict[str, Tensor], num_head_channels: int = 64, sample_size: int = 32, num_heads: Optional[int] = None
) -> nn.Module:
    """A ``UNet2DConditionModel`` holding the weights of an ldm UNet state dict.

    ``num_heads`` fixes the head count at every level (SD1.x) instead of the head width.
    """
    from diffusers import UNet2DConditionModel

    ldm = LC.infer_ldm_unet_config(unet_sd, num_head_channels, num_heads=num_heads)
    config = LC.diffusers_unet_config(ldm, sample_size=sample_size)
    converted = LC.convert_ldm_unet(unet_sd, ldm["num_res_blocks"])
    return _load_exact(lambda: UNet2DConditionModel(**config), converted, "UNet")


def vae_from_ldm(vae_sd: Dict[str, Tensor], scaling_factor: float = SD_SCALING_FACTOR) -> nn.Module:
    """An ``AutoencoderKL`` holding the weights of an ldm first-stage state dict."""
    from diffusers import AutoencoderKL

    config = LC.diffusers_vae_config(LC.infer_ldm_vae_config(vae_sd), scaling_factor=scaling_factor)
    return _load_exact(lambda: AutoencoderKL(**config), LC.convert_ldm_vae(vae_sd), "VAE")


def text_encoder_from_open_clip(text_sd: Dict[str, Tensor], head_width: int = SD2_TEXT_HEAD_WIDTH) -> nn.Module:
    """A ``CLIPTextModel`` equal to SD2's use of an OpenCLIP text tower (penultimate + ln_final)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**LC.infer_open_clip_text_config(text_sd, penultimate=True, head_width=head_width))
    converted = LC.convert_open_clip_text(text_sd, num_layers=config.num_hidden_layers)
    model = CLIPTextModel(config)  # small buffers (position ids) need a real construction
    if any(k.startswith("text_model.") for k in model.state_dict()):  # transformers 4 layout
        converted = {"text_model." + k: v for k, v in converted.items()}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise LC.ConversionError(
            f"Text encoder: converted weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})."
        )
    return model


def tiny_unet(ldm_config: Dict[str, Any], sample_size: int, seed: int = 0) -> nn.Module:
    """A randomly initialised toy UNet (every layer re-randomised: none is zero)."""
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        unet = UNet2DConditionModel(**LC.diffusers_unet_config(ldm_config, sample_size=sample_size))
    rerandomize_parameters(unet, seed=seed)
    return unet


def tiny_vae(seed: int = 0) -> nn.Module:
    """A randomly initialised toy KL-f8 autoencoder."""
    from diffusers import AutoencoderKL

    with seeded(seed):
        vae = AutoencoderKL(**LC.diffusers_vae_config(TINY_VAE_DDCONFIG, sample_size=64))
    rerandomize_parameters(vae, seed=seed + 1, gain=0.5)
    return vae


def load_diffusers_component(source: WeightsSource, subfolder: str, cls_name: str, dtype: torch.dtype) -> nn.Module:
    """``<cls>.from_pretrained(folder, subfolder=...)`` for a diffusers folder."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    return cls.from_pretrained(source.path, subfolder=subfolder, torch_dtype=dtype)


def make_ddim_scheduler(num_train_timesteps: int = 1000) -> Any:
    """The DDIM sampler of SD/MVDream: scaled-linear betas 0.00085..0.012, eps prediction, and
    the ldm timestep grid (``steps_offset=1``, first alpha from ``abar_0``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


# ------------------------------------------------------------------------------------------
# the base guidance


class LatentDiffusionGuidance(BaseGuidance):
    """A guidance whose prior works on VAE latents; subclasses build the networks."""

    @dataclass
    class Config(BaseGuidance.Config):
        pretrained_model_name_or_path: str = ""
        """tiny-random | local diffusers folder | original checkpoint file | Hugging Face id."""
        half_precision_weights: bool = True
        """fp16 weights on CUDA (CPU always runs fp32)."""
        image_size: int = 512
        """Renders are resized to this square size before VAE encoding."""

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.device, self.weights_dtype = pick_device_dtype(self.cfg.half_precision_weights)
        self.load_networks()
        for net in self.networks().values():
            move(freeze(net), self.device, self.weights_dtype)

    # -- subclasses ---------------------------------------------------------------------------
    def load_networks(self) -> None:
        """Build the frozen networks (``self.vae`` at least) on CPU in ``self.weights_dtype``."""
        raise NotImplementedError

    def networks(self) -> Dict[str, nn.Module]:
        """The frozen networks by name (moved and cast together)."""
        return {"vae": self.vae}

    def check_image_size(self) -> None:
        """``image_size`` must survive the VAE's x8 and the UNet's downsamplings exactly."""
        factor = 8 * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if self.cfg.image_size % factor:
            from threestudio_like.config import ConfigError

            raise ConfigError(f"system.guidance.image_size={self.cfg.image_size} must be a multiple of {factor}.")

    # -- device -------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> "LatentDiffusionGuidance":
        """Move the networks (weights become fp16 on CUDA when ``half_precision_weights``)."""
        self.device, self.weights_dtype = pick_device_dtype(self.cfg.half_precision_weights, torch.device(device))
        for net in self.networks().values():
            move(net, self.device, self.weights_dtype)
        return self

    def ensure_device(self, device: torch.device) -> None:
        """Follow the renders: move the networks if they live elsewhere."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device != self.device:
            self.to(device)

    # -- latents ------------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        return self.cfg.image_size // 8

    def encode_images(self, rgb: Tensor) -> Tensor:
        """Renders ``[B, H, W, 3]`` in [0, 1] -> scaled latents ``[B, 4, S/8, S/8]`` (fp32).

        Resized (bilinear) to ``image_size``; the posterior is sampled, as in ldm's
        ``get_first_stage_encoding``. Differentiable with respect to ``rgb``.
        """
        size = self.cfg.image_size
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = (x * 2.0 - 1.0).to(self.device, self.weights_dtype)
        posterior = self.vae.encode(x).latent_dist
        return (posterior.sample() * self.vae.config.scaling_factor).float()

    def decode_latents(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Scaled latents -> images ``[B, H, W, 3]`` in [0, 1] (fp32).

        ``clamp=False`` keeps values outside [0, 1] (and their gradients) for losses on decodes.
        """
        z = (latents / self.vae.config.scaling_factor).to(self.device, self.weights_dtype)
        x = ((self.vae.decode(z).sample.float() + 1.0) / 2.0).permute(0, 2, 3, 1)
        return x.clamp(0.0, 1.0) if clamp else x

    def latents_from_rgb_as_latents(self, rgb: Tensor) -> Tensor:
        """``rgb_as_latents=True``: a 4-channel render in [0, 1] resized to the latent grid."""
        x = rgb.permute(0, 3, 1, 2)
        size = self.latent_size
        return F.interpolate(x, (size, size), mode="bilinear", align_corners=False) * 2.0 - 1.0

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def ddim_sample(
        self,
        predict_noise: Callable[[Tensor, Tensor], Tensor],
        shape: Sequence[int],
        num_inference_steps: int = 50,
        generator: Optional[torch.Generator] = None,
        eta: float = 0.0,
    ) -> Tensor:
        """DDIM from pure noise; ``predict_noise(x_t, t[B])`` returns the (guided) noise."""
        scheduler = make_ddim_scheduler(self.cfg.num_train_timesteps)
        scheduler.set_timesteps(num_inference_steps)
        latents = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(self.device)
        for t in scheduler.timesteps:
            t_batch = torch.full((shape[0],), int(t), device=self.device, dtype=torch.long)
            eps = predict_noise(latents, t_batch).float()
            latents = scheduler.step(eps, t, latents, eta=eta).prev_sample
        return latents

    @torch.no_grad()
    def sample_images(
        self,
        predict_noise: Callable[[Tensor, Tensor], Tensor],
        n_images: int,
        num_inference_steps: int,
        generator: Optional[torch.Generator] = None,
        eta: float = 0.0,
    ) -> Tensor:
        """``n_images`` decoded DDIM samples ``[n, S, S, 3]``; the eta noise is seeded from
        ``generator`` too, so a seed gives the same images every time."""
        seed = generator.initial_seed() if generator is not None else 0
        with seeded(seed):  # DDIM's eta noise comes from the global generator
            latents = self.ddim_sample(
                predict_noise, (n_images, 4, self.latent_size, self.latent_size),
                num_inference_steps, generator=generator, eta=eta,
            )
        return self.decode_latents(latents)
