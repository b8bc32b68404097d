"""Building stock diffusers/transformers models: from converted original weights, at toy size,
or from a diffusers folder; plus device/precision helpers shared by every prior.

Converted weights are adopted without allocating random ones first (:func:`load_exact` builds on
the meta device and assigns every tensor; a missing or unexpected key is an error, never a
silently random layer). diffusers and transformers are imported inside the functions that need
them, so that importing the package to read a config stays fast.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like.errors import ConversionError
from threestudio_like.models import architectures as A
from threestudio_like.models import clip_convert as CC
from threestudio_like.models import ldm_convert as LC
from threestudio_like.models.tiny import rerandomize_parameters

SD_SCALING_FACTOR = 0.18215
SD2_TEXT_HEAD_WIDTH = 64
"""Head width of the OpenCLIP ViT-H/14 text tower of SD2.x (read by SD2: penultimate + ln_final)."""


# ------------------------------------------------------------------------------------------
# device, precision, freezing


HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
"""The half-precision weight types a guidance may choose (``half_precision_dtype``)."""


def pick_device_dtype(half_precision: bool, device: Optional[torch.device] = None,
                      half_dtype: torch.dtype = torch.float16) -> Tuple[torch.device, torch.dtype]:
    """``(device, dtype)``: ``half_dtype`` (fp16 or bf16) on CUDA when ``half_precision``, fp32
    otherwise and on CPU."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = half_dtype if (half_precision and device.type == "cuda") else torch.float32
    return device, dtype


def to_channels_last(module: nn.Module) -> nn.Module:
    """The module's 4-D weights in channels-last memory layout (NHWC: faster convolutions with
    cuDNN on tensor-core GPUs; values are unchanged)."""
    return module.to(memory_format=torch.channels_last)


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


def library_class(path: str) -> Any:
    """``"diffusers.AutoencoderKL"`` -> the class (its library imported on demand)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_exact(build: Callable[[], nn.Module], state_dict: Dict[str, Tensor], what: str) -> nn.Module:
    """Build a model without allocating its weights, then adopt ``state_dict`` (all keys)."""
    with torch.device("meta"):
        model = build()
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ConversionError(
            f"{what}: converted weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})."
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ConversionError(f"{what}: tensors without values after loading: {left[:5]}.")
    return model


def _load_filling(model: nn.Module, state_dict: Dict[str, Tensor], what: str, optional: Tuple[str, ...] = ()) -> nn.Module:
    """``load_state_dict`` into a constructed model; keys ending in ``optional`` may be absent."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith(optional)] if optional else missing
    if missing or unexpected:
        raise ConversionError(f"{what}: converted weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return model


# ------------------------------------------------------------------------------------------
# models from original (ldm) state dicts


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
    return load_exact(lambda: UNet2DConditionModel(**config), converted, "UNet")


def vae_from_ldm(vae_sd: Dict[str, Tensor], scaling_factor: float = SD_SCALING_FACTOR) -> nn.Module:
    """An ``AutoencoderKL`` holding the weights of an ldm first-stage state dict."""
    from diffusers import AutoencoderKL

    config = LC.diffusers_vae_config(LC.infer_ldm_vae_config(vae_sd), scaling_factor=scaling_factor)
    return load_exact(lambda: AutoencoderKL(**config), LC.convert_ldm_vae(vae_sd), "VAE")


def text_encoder_from_open_clip(text_sd: Dict[str, Tensor], head_width: int = SD2_TEXT_HEAD_WIDTH) -> nn.Module:
    """A ``CLIPTextModel`` equal to SD2's use of an OpenCLIP text tower (penultimate + ln_final)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**CC.infer_open_clip_text_config(text_sd, penultimate=True, head_width=head_width))
    converted = CC.convert_open_clip_text(text_sd, num_layers=config.num_hidden_layers)
    model = CLIPTextModel(config)  # small buffers (position ids) need a real construction
    if any(k.startswith("text_model.") for k in model.state_dict()):  # transformers 4 layout
        converted = {"text_model." + k: v for k, v in converted.items()}
    return _load_filling(model, converted, "Text encoder")


def image_encoder_from_openai_clip(visual_sd: Dict[str, Tensor]) -> nn.Module:
    """A ``CLIPVisionModelWithProjection`` holding an OpenAI CLIP image tower (``visual.``
    prefix stripped)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CC.infer_openai_clip_visual_config(visual_sd)))
    return _load_filling(model, CC.convert_openai_clip_visual(visual_sd), "CLIP image tower", optional=("position_ids",))


# ------------------------------------------------------------------------------------------
# toy models (every layer re-randomised: none is zero)


def tiny_unet(ldm_spec: Dict[str, Any], sample_size: int = 8, seed: int = 0) -> nn.Module:
    """A randomly initialised toy UNet of an ldm spec (see :mod:`.architectures`)."""
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        unet = UNet2DConditionModel(**LC.diffusers_unet_config(ldm_spec, sample_size=sample_size))
    rerandomize_parameters(unet, seed=seed)
    return unet


def tiny_vae(seed: int = 0, channels: int = 3) -> nn.Module:
    """A randomly initialised toy KL-f8 autoencoder with ``channels`` pixel channels (LDM3D: 4, 6)."""
    from diffusers import AutoencoderKL

    ddconfig = A.with_image_channels(A.TINY_VAE_DDCONFIG, channels)
    with seeded(seed):
        vae = AutoencoderKL(**LC.diffusers_vae_config(ddconfig, sample_size=64))
    rerandomize_parameters(vae, seed=seed + 1, gain=0.5)
    return vae


def tiny_text_encoder(vocab_size: int, seed: int = 0) -> nn.Module:
    """A toy ``CLIPTextModel`` (width 32) for a tokenizer of ``vocab_size``, deterministic for ``seed``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=0,
        **A.TINY_TEXT_ENCODER,
    )
    with seeded(seed):
        return CLIPTextModel(config)


def tiny_clip_image_encoder(seed: int = 0) -> nn.Module:
    """A toy ``CLIPVisionModelWithProjection`` (224 px input, 32-d embedding)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with seeded(seed):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**A.TINY_CLIP_VISION))
    rerandomize_parameters(model, seed=seed)
    return model


def tiny_convnext(seed: int = 0) -> nn.Module:
    """A toy ``ConvNextV2Model`` (224 px input, 7x7 tokens of width 32)."""
    from transformers import ConvNextV2Config, ConvNextV2Model

    with seeded(seed):
        model = ConvNextV2Model(ConvNextV2Config(**A.TINY_CONVNEXT))
    rerandomize_parameters(model, seed=seed)
    return model


# ------------------------------------------------------------------------------------------
# schedulers


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


def parts_from_ldm_checkpoint(state: Dict[str, Tensor], num_head_channels: int = 64) -> Dict[str, nn.Module]:
    """``unet``, ``vae`` and, when present, the OpenCLIP ``text_encoder`` of a full SD2-style ldm
    checkpoint (SD2.1, MVDream)."""
    unet_sd, vae_sd, text_sd = LC.split_ldm_checkpoint(state)
    if not unet_sd or not vae_sd:
        raise ConversionError(f"not an ldm checkpoint with '{LC.UNET_PREFIX}*' and '{LC.VAE_PREFIX}*' keys.")
    parts = {"unet": unet_from_ldm(unet_sd, num_head_channels=num_head_channels), "vae": vae_from_ldm(vae_sd)}
    if text_sd:
        parts["text_encoder"] = text_encoder_from_open_clip(text_sd)
    return parts
