"""Shared base of latent-diffusion guidances (MVDream, Stable Diffusion, Zero-1-to-3, EscherNet).

:class:`LatentDiffusionGuidance` gets its frozen networks through the one model loader (the
subclass names its :class:`~threestudio_like.models.loader.WeightsRecipe` in ``weights``), keeps
their precision (fp16 weights on CUDA, fp32 on CPU), moves them to the renders' device on first
use, encodes renders into VAE latents at ``image_size`` and decodes them back, runs every
classifier-free-guidance branch of a UNet call in one batch (:meth:`unet_branches`, conditional
branch first by convention) and samples with DDIM (``--sample``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.errors import ConfigError
from threestudio_like.guidance.base import BaseGuidance
from threestudio_like.models.builders import (HALF_DTYPES, freeze, move, pick_device_dtype, seeded, tiny_unet,
                                              tiny_vae, to_channels_last)
from threestudio_like.models.loader import Part, WeightsRecipe, load_model
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings
from threestudio_like.sampling.ddim import ddim_sample

WEIGHTS_KEY = "system.guidance.pretrained_model_name_or_path"


@dataclass
class UNetBranch:
    """The conditioning of one classifier-free-guidance branch of a UNet call (``B`` rows, or
    fewer that tile the rows draw-major, as SJC stacks its noise draws)."""

    encoder_hidden_states: Tensor
    """``[B, L, D]`` tokens the UNet cross-attends to."""
    class_labels: Optional[Tensor] = None
    """``[B, ...]`` class-embedding input (MVDream's camera)."""
    concat: Optional[Tensor] = None
    """``[B, C, h, w]`` channels appended to the noisy latent (Zero-1-to-3's image latent)."""


def unet_and_vae(tiny_unet_spec: Dict[str, Any]) -> Tuple[Part, Part]:
    """The ``unet`` and ``vae`` parts every latent-diffusion prior has (toy UNet of ``tiny_unet_spec``)."""
    return (Part("unet", "diffusers.UNet2DConditionModel", lambda options: tiny_unet(tiny_unet_spec)),
            Part("vae", "diffusers.AutoencoderKL", lambda options: tiny_vae()))


def check_unet(unet: nn.Module, where: str, what: str, in_channels: int, context: Tuple[str, int],
               note: str = "") -> None:
    """Clear errors when weights are another model's: the UNet's input channels (``note`` says why
    ``in_channels``), and the width of the context it attends to (``context``: its source's name
    and width)."""
    if unet.config.in_channels != in_channels:
        raise ConfigError(f"{where} is not a {what} UNet: it has {unet.config.in_channels} input channels, "
                          f"not {in_channels} {note}".rstrip() + ".")
    name, width = context
    if unet.config.cross_attention_dim != width:
        raise ConfigError(f"{where}: {name} is {width}-d but the UNet attends to "
                          f"{unet.config.cross_attention_dim}-d context.")


def _tile_rows(x: Optional[Tensor], rows: int) -> Optional[Tensor]:
    """``x`` repeated along dim 0 to ``rows`` rows (draw-major tiling)."""
    if x is None or x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"{x.shape[0]} condition rows do not tile {rows} noisy latents.")
    return x.repeat(rows // x.shape[0], *([1] * (x.dim() - 1)))


class LatentDiffusionGuidance(BaseGuidance):
    """A guidance whose prior works on VAE latents; subclasses name their weights recipe."""

    @dataclass
    class Config(BaseGuidance.Config):
        pretrained_model_name_or_path: str = ""
        """tiny-random | local diffusers folder | original checkpoint file | Hugging Face id."""
        half_precision_weights: bool = True
        """Half-precision weights on CUDA (CPU always runs fp32)."""
        half_precision_dtype: Literal["float16", "bfloat16"] = "float16"
        """Which half precision: float16, or bfloat16 (fp32's range: no overflow; Ampere and newer)."""
        channels_last: bool = False
        """Convolutions in channels-last memory layout (often faster on tensor-core GPUs)."""
        image_size: int = 512
        """Renders are resized to this square size before VAE encoding."""

    cfg: Config
    weights: ClassVar[WeightsRecipe]
    """The prior's networks and how to load them from every kind of source."""

    def configure(self) -> None:
        super().configure()
        self.device, self.weights_dtype = self.pick_device_dtype()
        self.load_networks()
        for net in self.networks().values():
            self.place(freeze(net))

    # -- networks -----------------------------------------------------------------------------
    def weights_options(self) -> Dict[str, Any]:
        """Options of the weights recipe taken from this guidance's config (ldm conversion)."""
        return {}

    def load_networks(self) -> None:
        """The recipe's parts as attributes (``self.unet``, ``self.vae`` ...), on CPU."""
        parts = load_model(type(self).weights, self.cfg.pretrained_model_name_or_path, self.weights_dtype,
                           key=WEIGHTS_KEY, **self.weights_options())
        for name, net in parts.items():
            setattr(self, name, net)
        self.check_image_size()

    def networks(self) -> Dict[str, nn.Module]:
        """The frozen networks by name (moved and cast together)."""
        return {name: getattr(self, name) for name in type(self).weights.part_names}

    def check_image_size(self) -> None:
        """``image_size`` must survive the VAE's x8 and the UNet's downsamplings exactly."""
        factor = 8 * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if self.cfg.image_size % factor:
            raise ConfigError(f"system.guidance.image_size={self.cfg.image_size} must be a multiple of {factor}.")

    # -- device -------------------------------------------------------------------------------
    def pick_device_dtype(self, device: Optional[torch.device] = None) -> Tuple[torch.device, torch.dtype]:
        """The device (default: CUDA when available) and the weights' dtype there."""
        return pick_device_dtype(self.cfg.half_precision_weights, device, HALF_DTYPES[self.cfg.half_precision_dtype])

    def place(self, net: nn.Module) -> nn.Module:
        """``net`` on this guidance's device and dtype (and channels-last when configured)."""
        move(net, self.device, self.weights_dtype)
        return to_channels_last(net) if self.cfg.channels_last else net

    def to(self, device: torch.device | str) -> "LatentDiffusionGuidance":
        """Move the networks (weights become half precision on CUDA when ``half_precision_weights``)."""
        self.device, self.weights_dtype = self.pick_device_dtype(torch.device(device))
        for net in self.networks().values():
            self.place(net)
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

    def resize_renders(self, rgb: Tensor) -> Tensor:
        """Renders ``[B, H, W, C]`` -> ``[B, C, S, S]`` at ``image_size`` (bilinear), differentiable."""
        size = self.cfg.image_size
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        return x

    def encode_pixels(self, x: Tensor) -> Tensor:
        """Autoencoder input ``[B, C, S, S]`` in [-1, 1] -> scaled latents ``[B, 4, S/8, S/8]``
        (fp32); the posterior is sampled, as in ldm's ``get_first_stage_encoding``."""
        posterior = self.vae.encode(x.to(self.device, self.weights_dtype)).latent_dist
        return (posterior.sample() * self.vae.config.scaling_factor).float()

    def encode_images(self, rgb: Tensor) -> Tensor:
        """Renders ``[B, H, W, 3]`` in [0, 1] -> scaled latents ``[B, 4, S/8, S/8]`` (fp32).

        Resized (bilinear) to ``image_size``, then encoded (:meth:`encode_pixels`).
        Differentiable with respect to ``rgb``.
        """
        return self.encode_pixels(self.resize_renders(rgb) * 2.0 - 1.0)

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

    def condition_pixels(self, images: Tensor) -> Tensor:
        """Input images ``[N, H, W, 3]`` in [0, 1] -> ``[N, 3, S, S]`` in [-1, 1] at ``image_size``
        (antialiased), on the networks' device: what image priors encode as their condition."""
        size = self.cfg.image_size
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x.clamp(0.0, 1.0) * 2.0 - 1.0).to(self.device)

    def to_latents(self, rgb: Tensor, rgb_as_latents: bool) -> Tensor:
        """The renders in the prior's latent space (encoded, or rendered there directly)."""
        self.ensure_device(rgb.device)
        return self.latents_from_rgb_as_latents(rgb) if rgb_as_latents else self.encode_images(rgb)

    @torch.no_grad()
    def white_latents(self, size: Optional[int] = None) -> Tensor:
        """Scaled latents ``[1, 4, s, s]`` of a white image (the background of latent renders:
        3drec blends the mean white-image latent), resized to ``size`` latent pixels."""
        cached = getattr(self, "_white_latent", None)
        if cached is None or cached.device != torch.device(self.device):
            white = torch.ones(1, 3, self.cfg.image_size, self.cfg.image_size, device=self.device, dtype=self.weights_dtype)
            cached = (self.vae.encode(white).latent_dist.mode() * self.vae.config.scaling_factor).float()
            self._white_latent = cached
        latent = cached
        if size is not None and latent.shape[-1] != size:
            latent = F.interpolate(latent, (size, size), mode="bilinear", align_corners=False)
        return latent

    # -- the UNet -----------------------------------------------------------------------------
    def unet_branches(self, x_t: Tensor, t: Tensor, branches: Sequence[UNetBranch],
                      **cross_attention_kwargs: Any) -> List[Tensor]:
        """Noise predictions ``[N, 4, h, w]`` of every branch, from one batched UNet call.

        The branches' conditions are tiled to the ``N`` rows of ``x_t``; ``cross_attention_kwargs``
        go to the attention processors (they must already cover ``len(branches) * N`` rows).
        """
        rows, dtype = x_t.shape[0], self.weights_dtype
        x_t = x_t.to(self.device, dtype)
        inputs, context, labels = [], [], []
        for branch in branches:
            concat = _tile_rows(branch.concat, rows)
            inputs.append(x_t if concat is None else torch.cat([x_t, concat.to(self.device, dtype)], 1))
            context.append(_tile_rows(branch.encoder_hidden_states, rows).to(self.device, dtype))
            if branch.class_labels is not None:
                labels.append(_tile_rows(branch.class_labels, rows).to(self.device, dtype))
        eps = self.unet(
            torch.cat(inputs), t.to(self.device).repeat(len(branches)),
            encoder_hidden_states=torch.cat(context),
            class_labels=torch.cat(labels) if labels else None,
            cross_attention_kwargs=cross_attention_kwargs or None,
        ).sample.float()
        return list(eps.chunk(len(branches)))

    # -- sampling (python launch.py --sample) -------------------------------------------------
    @torch.no_grad()
    def sample_images(
        self,
        predict_noise: Callable[[Tensor, Tensor], Tensor],
        n_images: int,
        num_inference_steps: int,
        generator: Optional[torch.Generator] = None,
        eta: float = 0.0,
        size: Optional[Tuple[int, int]] = None,
        decode: bool = True,
    ) -> Tensor:
        """``n_images`` decoded DDIM samples ``[n, H, W, C]`` (``size`` ``(H, W)`` pixels, default
        ``image_size`` square), or their latents with ``decode=False``; the eta noise is seeded
        from ``generator`` too, so a seed gives the same images every time."""
        height, width = size or (self.cfg.image_size, self.cfg.image_size)
        seed = generator.initial_seed() if generator is not None else 0
        with seeded(seed):  # DDIM's eta noise comes from the global generator
            latents = ddim_sample(
                predict_noise, (n_images, 4, height // 8, width // 8), self.cfg.num_train_timesteps,
                num_inference_steps, device=self.device, generator=generator, eta=eta,
            )
        return self.decode_latents(latents) if decode else latents

    def sample(self, condition: Any, settings: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images ``[N, S, S, 3]`` straight from the prior for ``--sample`` (see :mod:`threestudio_like.sampling`)."""
        raise ConfigError(f"{type(self).__name__} has no sampler for --sample.")


class TextPriorGuidance(LatentDiffusionGuidance):
    """A latent prior conditioned on a text prompt: its condition is the prompt processor's
    :class:`~threestudio_like.prompt.stable_diffusion.PromptEmbeddings` (conditional and negative)."""

    condition_type = PromptEmbeddings
    condition_hint = ("Set system.prompt_processor_type: stable-diffusion-prompt-processor "
                      "(view-dependent-prompt-processor for view prompts).")

    def text_branches(self, text: Tensor, **conditioning: Any) -> List[UNetBranch]:
        """The conditional and unconditional branches of text embeddings ``[2B, L, D]``
        (conditional first), each with the same extra ``conditioning`` (class labels)."""
        return [UNetBranch(half, **conditioning) for half in text.chunk(2)]
