"""Zero123++ (Shi et al. 2023): six views of an object from one image, on stock diffusers models.

Zero123++ is Stable Diffusion 2 (v-prediction) fine-tuned to generate six fixed views of the
object in one image, a 3 x 2 grid of 320 px tiles (960 x 640 px, latent 120 x 80). Its deltas,
none of which needs a forked network:

* **global conditioning** (FlexDiffuse): the UNet cross-attends to
  ``c = E_text("") + ramp[:, None] * E_clip(img).image_embeds[:, None, :]``, 77 tokens of the
  empty prompt each plus the CLIP image embedding times one of 77 learnt "ramping coefficients";
* **local conditioning** (reference attention, :mod:`.reference_attention`): a write pass of the
  UNet over the noised *unscaled* VAE latent of the image (posterior sample, no 0.18215;
  ``alpha_t c + sigma_t n`` at the same timestep) stores every ``attn1``'s input tokens, and the
  pass over the noisy grid attends to its own tokens concatenated with them;
* **scalings**: pixels enter the VAE as ``scale_image(x) = x * 0.5 / 0.8`` (x in [-1, 1]) and
  grid latents are ``scale_latents(z) = (z - 0.22) * 0.75`` of the usual ``0.18215 * E(...)``;
  the conditioning image is encoded the same way (320 px) but neither shifted nor scaled;
* **schedule**: v-prediction with diffusers' "linear" betas; ``eps = alpha_t v + sigma_t x_t``;
* **classifier-free guidance** ``v_u + s (v_c - v_u)``: the unconditional branch references the
  encoded all-zero (gray) image and cross-attends to the plain ``E_text("")``.

Views (:data:`LAYOUTS`): azimuths 30, 90, ..., 330 degrees relative to the input view (our
azimuth convention, as InstantMesh places them), absolute elevations 20/-10 alternating with a
30 degree field of view (v1.2), or 30/-20 with the input's field of view (v1.1). Tiles are
row-major: view ``i`` is row ``i // 2``, column ``i % 2`` (:func:`tile_views`).

Weights (:data:`ZERO123PP_WEIGHTS`): the diffusers folders ``sudo-ai/zero123plus-v1.2`` / ``-v1.1``
(``unet``, ``vae``, ``vision_encoder``, ``text_encoder`` + ``tokenizer`` read once into the
empty-prompt embedding, ``ramping_coefficients`` from ``model_index.json``), a local copy, or
``tiny-random``. The weights are CC-BY-NC 4.0 (non-commercial). :class:`Zero123PlusModel` is the
model's maths on those parts; :func:`load_zero123pp` gives one without a guidance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.errors import ConfigError, did_you_mean
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.latent_diffusion import check_unet, unet_and_vae
from threestudio_like.guidance.reference_attention import install_reference_attention, reference_unet_call
from threestudio_like.models.architectures import SD21_UNET, tiny_unet_spec
from threestudio_like.models.builders import (SD_SCALING_FACTOR, freeze, library_class, move, pick_device_dtype,
                                              tiny_clip_image_encoder, tiny_text_encoder)
from threestudio_like.models.hub import WeightsSource, has_component, missing_weights_error
from threestudio_like.models.loader import Part, WeightsRecipe, load_model, register_weights
from threestudio_like.models.tiny import rerandomize_parameters
from threestudio_like.prompt.stable_diffusion import load_tokenizer, tiny_tokenizer

DEFAULT_REPO = "sudo-ai/zero123plus-v1.2"
TILE_SIZE = 320
"""Pixels of one view (and of the conditioning image) at full size."""
GRID_ROWS, GRID_COLS = 3, 2
N_VIEWS = GRID_ROWS * GRID_COLS
LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75
IMAGE_SCALE = 0.5 / 0.8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_KEY = "system.guidance.pretrained_model_name_or_path"
TINY_ZERO123PP_UNET = tiny_unet_spec(SD21_UNET)
"""Zero123++'s UNet is SD2's (4 channels, 64-wide heads, linear projections) at toy size."""


# ------------------------------------------------------------------------------------------
# the six views


@dataclass(frozen=True)
class ViewLayout:
    """Where a Zero123++ version puts its six views."""

    version: str
    azimuths_deg: Tuple[float, ...]
    """Relative to the input view's azimuth (our convention: counter-clockwise seen from above)."""
    elevations_deg: Tuple[float, ...]
    """Absolute (degrees above the horizon)."""
    fovy_deg: Optional[float]
    """Vertical field of view of every view; None: the input view's (v1.1 follows its input)."""


AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
LAYOUTS: Dict[str, ViewLayout] = {
    "v1.2": ViewLayout("v1.2", AZIMUTHS, (20.0, -10.0) * 3, 30.0),
    "v1.1": ViewLayout("v1.1", AZIMUTHS, (30.0, -20.0) * 3, None),
}


def layout_for(version: str) -> ViewLayout:
    """The view layout of ``version`` (``v1.2`` | ``v1.1``), with a clear error otherwise."""
    if version not in LAYOUTS:
        raise ConfigError(f"Unknown Zero123++ version {version!r}.{did_you_mean(version, list(LAYOUTS))} "
                          f"Known: {', '.join(LAYOUTS)}.")
    return LAYOUTS[version]


def version_of(name_or_path: str) -> str:
    """The version a weights name implies (``...-v1.1`` -> v1.1; anything else v1.2)."""
    return "v1.1" if "v1.1" in str(name_or_path) else "v1.2"


def tile_views(views: Tensor) -> Tensor:
    """``[6k, C, T, T]`` views -> ``[k, C, 3T, 2T]`` grids, row-major (view ``i`` at row ``i // 2``,
    column ``i % 2``; einops ``(b r c) ch h w -> b ch (r h) (c w)``)."""
    n, c, h, w = views.shape
    if n % N_VIEWS:
        raise ConfigError(f"Zero123++ tiles views in sixes; got {n}.")
    grid = views.reshape(n // N_VIEWS, GRID_ROWS, GRID_COLS, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n // N_VIEWS, c, GRID_ROWS * h, GRID_COLS * w)


def untile_views(grids: Tensor) -> Tensor:
    """The inverse of :func:`tile_views`: ``[k, C, 3T, 2T]`` -> ``[6k, C, T, T]``."""
    k, c, hh, ww = grids.shape
    if hh % GRID_ROWS or ww % GRID_COLS:
        raise ValueError(f"A {hh} x {ww} grid does not split into {GRID_ROWS} x {GRID_COLS} tiles.")
    h, w = hh // GRID_ROWS, ww // GRID_COLS
    views = grids.reshape(k, c, GRID_ROWS, h, GRID_COLS, w).permute(0, 2, 4, 1, 3, 5)
    return views.reshape(k * N_VIEWS, c, h, w)


def scale_latents(z: Tensor) -> Tensor:
    return (z - LATENT_SHIFT) * LATENT_SCALE


def unscale_latents(z: Tensor) -> Tensor:
    return z / LATENT_SCALE + LATENT_SHIFT


def scale_image(x: Tensor) -> Tensor:
    return x * IMAGE_SCALE


def unscale_image(x: Tensor) -> Tensor:
    return x / IMAGE_SCALE


# ------------------------------------------------------------------------------------------
# the parts that are not stock components


class PromptEmbedding(nn.Module):
    """The text encoder's output for the empty prompt ``[1, 77, D]`` (all Zero123++ ever asks of it)."""

    def __init__(self, embedding: Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(embedding.detach().float().clone())


class RampingCoefficients(nn.Module):
    """The 77 learnt coefficients of the image embedding added to each text token."""

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        self.coefficients = nn.Parameter(values.detach().float().reshape(-1).clone())


@torch.no_grad()
def encode_empty_prompt(tokenizer: Any, text_encoder: nn.Module) -> Tensor:
    """``text_encoder(tokens(""))`` padded to the tokenizer's length, as diffusers' pipelines do."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def _tiny_prompt_embedding(options: Dict[str, Any]) -> PromptEmbedding:
    tokenizer = tiny_tokenizer()
    encoder = tiny_text_encoder(len(tokenizer), seed=5)
    rerandomize_parameters(encoder, seed=5)
    return PromptEmbedding(encode_empty_prompt(tokenizer, encoder))


def _tiny_ramping(options: Dict[str, Any]) -> RampingCoefficients:
    module = RampingCoefficients(torch.zeros(77))
    rerandomize_parameters(module, seed=6)
    return module


def _prompt_embedding_from_folder(source: WeightsSource, dtype: torch.dtype) -> PromptEmbedding:
    missing = [s + "/" for s in ("text_encoder", "tokenizer") if not has_component(source.path, s)]
    if missing:
        raise missing_weights_error(source.name, [f"{', '.join(missing)} in {source.path}"],
                                    "Zero123++'s text encoder", key=WEIGHTS_KEY)
    tokenizer, _ = load_tokenizer(source)
    encoder = library_class("transformers.CLIPTextModel").from_pretrained(source.path, subfolder="text_encoder")
    return PromptEmbedding(encode_empty_prompt(tokenizer, encoder))


def _ramping_from_folder(source: WeightsSource, dtype: torch.dtype) -> RampingCoefficients:
    index = Path(source.path) / "model_index.json"
    values = json.loads(index.read_text()).get("ramping_coefficients") if index.is_file() else None
    if not values:
        raise missing_weights_error(source.name, [f"'ramping_coefficients' in {index}"],
                                    "Zero123++'s ramping coefficients", key=WEIGHTS_KEY)
    return RampingCoefficients(torch.tensor(values, dtype=torch.float32))


def check_zero123pp_networks(parts: Dict[str, nn.Module], where: str) -> None:
    """Clear errors when the weights are not Zero123++'s (4 input channels, matching widths)."""
    text = parts["prompt_embedding"].embedding
    check_unet(parts["unet"], where, "Zero123++", 4, ("the text embedding", text.shape[-1]),
               "(an 8-channel UNet is Zero-1-to-3's: use zero123-guidance)")
    image_width = parts["vision_encoder"].config.projection_dim
    if image_width != text.shape[-1]:
        raise ConfigError(f"{where}: the CLIP image embedding is {image_width}-d but the text tokens are {text.shape[-1]}-d.")
    n_ramp = parts["ramping"].coefficients.numel()
    if n_ramp != text.shape[1]:
        raise ConfigError(f"{where}: {n_ramp} ramping coefficients for {text.shape[1]} text tokens.")


ZERO123PP_WEIGHTS = register_weights(WeightsRecipe(
    "zero123pp", "Zero123++",
    parts=(
        *unet_and_vae(TINY_ZERO123PP_UNET),
        Part("vision_encoder", "transformers.CLIPVisionModelWithProjection", lambda o: tiny_clip_image_encoder(seed=4)),
        Part("prompt_embedding", "", _tiny_prompt_embedding, load_folder=_prompt_embedding_from_folder),
        Part("ramping", "", _tiny_ramping, load_folder=_ramping_from_folder),
    ),
    check=check_zero123pp_networks,
    prepare=lambda parts: install_reference_attention(parts["unet"]),
    extra_patterns=("text_encoder/*", "tokenizer/*") + tuple(f"{s}/*.bin" for s in ("unet", "vae", "vision_encoder")),
))


# ------------------------------------------------------------------------------------------
# the model


def timestep_index(t: Tensor) -> Tensor:
    """Integer schedule indices (CPU) of timesteps ``t`` (the Euler sampler's are whole numbers
    stored as floats with "trailing" spacing)."""
    t = t.detach().reshape(-1).cpu()
    return t.round().long() if t.is_floating_point() else t.long()


@dataclass
class Zero123PlusReference:
    """The conditioning image as both CFG branches see it (conditional first)."""

    image: Tensor
    """``[1, T, T, 3]`` in [0, 1]: the input as the model saw it."""
    context: Tensor
    """``[2, 77, D]``: text + ramped image embedding; the empty prompt's embedding alone."""
    latents: Tensor
    """``[2, 4, T/8, T/8]`` unscaled VAE latents of the image and of the all-zero (gray) image."""


class Zero123PlusModel:
    """Zero123++'s maths on its loaded parts (see the module doc); the parts stay where they are
    (a guidance moves them; this object follows their device and dtype)."""

    def __init__(self, parts: Dict[str, nn.Module], version: str = "v1.2", tile_size: int = TILE_SIZE) -> None:
        self.parts = parts
        self.layout = layout_for(version)
        self.tile_size = int(tile_size)
        self.alphas_cumprod = D.linear_alphas_cumprod().float()

    def __getattr__(self, name: str) -> nn.Module:
        parts = self.__dict__.get("parts", {})
        if name in parts:
            return parts[name]
        raise AttributeError(name)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- pixels and latents -------------------------------------------------------------------
    def _resized(self, images: Tensor, size: int) -> Tensor:
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bicubic", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0)

    def vae_pixels(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``scale_image(2x - 1)`` at the tile size (``feature_extractor_vae``:
        bicubic resize, mean 0.5, std 0.8)."""
        return scale_image(self._resized(images, self.tile_size) * 2.0 - 1.0)

    def clip_pixels(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> the CLIP image tower's input (``feature_extractor_clip``)."""
        x = self._resized(images, int(self.vision_encoder.config.image_size))
        return (x - x.new_tensor(CLIP_MEAN)[:, None, None]) / x.new_tensor(CLIP_STD)[:, None, None]

    def _encode(self, pixels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        return posterior.mean.float() + posterior.std.float() * noise.to(posterior.mean.device)

    def encode_grid(self, grids: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Grids ``[B, 3, 3T, 2T]`` in [0, 1] -> ``scale_latents(0.18215 E(scale_image(2x - 1)))``
        (posterior sample, fp32); differentiable with respect to ``grids``."""
        return scale_latents(self._encode(scale_image(grids * 2.0 - 1.0), generator) * SD_SCALING_FACTOR)

    def decode_grid(self, latents: Tensor) -> Tensor:
        """Grid latents -> grids ``[B, 3, 3T, 2T]`` in [0, 1] (fp32)."""
        z = (unscale_latents(latents) / SD_SCALING_FACTOR).to(self.device, self.dtype)
        x = unscale_image(self.vae.decode(z).sample.float())
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- conditioning -------------------------------------------------------------------------
    def global_context(self, image_embeds: Tensor) -> Tensor:
        """``E_text("") + ramp[:, None] * image_embeds[:, None, :]``: ``[B, 77, D]`` from ``[B, D]``."""
        text = self.prompt_embedding.embedding.float()
        ramp = self.ramping.coefficients.float()
        return text + ramp[None, :, None] * image_embeds.float()[:, None, :]

    @torch.no_grad()
    def encode_reference(self, image: Tensor, generator: Optional[torch.Generator] = None) -> Zero123PlusReference:
        """The conditioning of one image ``[3, H, W]`` or ``[1, 3, H, W]`` in [0, 1] (square,
        object on a gray background as Zero123++ expects)."""
        image = image.reshape(1, *image.shape[-3:]).to(self.device)
        pixels = self.vae_pixels(image)
        latents = torch.cat([self._encode(pixels, generator), self._encode(torch.zeros_like(pixels), generator)])
        embeds = self.vision_encoder(pixel_values=self.clip_pixels(image).to(self.dtype)).image_embeds
        context = torch.cat([self.global_context(embeds), self.prompt_embedding.embedding.float()])
        shown = (unscale_image(pixels) + 1.0) / 2.0
        return Zero123PlusReference(image=shown.permute(0, 2, 3, 1).float(), context=context, latents=latents)

    # -- the network --------------------------------------------------------------------------
    def predict_v(self, x_t: Tensor, t: Tensor, context: Tensor, reference_latents: Tensor,
                  reference_noise: Tensor) -> Tensor:
        """v-prediction ``[R, 4, h, w]`` (fp32) for noisy grid latents ``x_t`` at integer-valued
        timesteps ``t`` ``[R]``, row ``i`` conditioned on ``context[i]`` and on reference latents
        ``reference_latents[i]`` noised to ``alpha_t c + sigma_t n`` with ``reference_noise[i]``."""
        index = timestep_index(t)
        alpha, sigma = D.alpha_sigma(self.alphas_cumprod, index, reference_latents)
        dtype, device = self.dtype, self.device
        noised = (alpha * reference_latents + sigma * reference_noise.to(reference_latents)).to(device, dtype)
        return reference_unet_call(self.unet, noised, x_t.to(device, dtype), t.to(device),
                                   context.to(device, dtype)).float()

    def guided_v(self, x_t: Tensor, t: Tensor, reference: Zero123PlusReference, scale: float,
                 generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``(v_u + s (v_c - v_u), v_c)`` for ``x_t`` ``[N, 4, h, w]``: both branches in one batch
        (``2N`` rows), the reference noised with fresh noise per row (``generator`` on the CPU)."""
        n = x_t.shape[0]
        context = reference.context.repeat_interleave(n, dim=0)
        latents = reference.latents.repeat_interleave(n, dim=0)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
        v_cond, v_uncond = self.predict_v(torch.cat([x_t, x_t]), t.reshape(-1).expand(n).repeat(2), context,
                                          latents, noise).chunk(2)
        return D.classifier_free_guidance(v_uncond, v_cond, scale), v_cond

    def guided_eps(self, x_t: Tensor, t: Tensor, reference: Zero123PlusReference, scale: float) -> Tuple[Tensor, Tensor]:
        """:meth:`guided_v` as noise predictions ``eps = alpha_t v + sigma_t x_t`` (guided, conditional)."""
        v_guided, v_cond = self.guided_v(x_t, t, reference, scale)
        x, index = x_t.float(), timestep_index(t).expand(x_t.shape[0])
        return (D.eps_from_v(x, v_guided, index, self.alphas_cumprod), D.eps_from_v(x, v_cond, index, self.alphas_cumprod))


def load_zero123pp(name_or_path: str = DEFAULT_REPO, *, version: Optional[str] = None,
                   device: Optional[torch.device | str] = None, half_precision: bool = True,
                   tile_size: int = TILE_SIZE) -> Zero123PlusModel:
    """A frozen Zero123++ from ``name_or_path`` (Hugging Face id, local diffusers folder or
    ``tiny-random``) on ``device`` (default: CUDA when available; fp16 there with
    ``half_precision``). ``version`` defaults to the one the name implies (:func:`version_of`);
    ``tile_size`` is 320 for the real model (a multiple of 32 for toy ones)."""
    device, dtype = pick_device_dtype(half_precision, None if device is None else torch.device(device))
    parts = load_model(ZERO123PP_WEIGHTS, name_or_path, dtype, key="pretrained_model_name_or_path")
    for net in parts.values():
        move(freeze(net), device, dtype)
    return Zero123PlusModel(parts, version or version_of(name_or_path), tile_size)
