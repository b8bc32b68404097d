"""Zero-1-to-3 (Liu et al. 2023) as a guidance, on stock diffusers/transformers models.

Zero-1-to-3 is Stable Diffusion 1.x fine-tuned to render an object from a new viewpoint given
one image of it. Its deltas, none of which needs a forked network:

* the UNet takes 8 input channels: the noisy latent, then the *unscaled* VAE latent (posterior
  mode, not multiplied by 0.18215) of the conditioning image;
* its single cross-attention token is ``proj([clip_image_embedding, camera])``, a
  ``Linear(768 + 4 -> 768)`` of the CLIP ViT-L/14 projected image embedding and the 4-number
  camera token :func:`zero123_camera` (``[d_polar, sin d_azimuth, cos d_azimuth, d_radius]``,
  polar angle measured from +z; Stable Zero123 puts the conditioning view's polar angle in the
  4th slot instead, ``camera_variant: stable-zero123``);
* classifier-free guidance uses zeros *after* the projection and a zero image latent for the
  unconditional branch: ``eps_u + s (eps_c - eps_u)``.

CLIP preprocessing is the original one (bicubic resize to 224 with ``align_corners=True``, no
antialiasing, CLIP mean/std), not ``CLIPImageProcessor``'s PIL path.

Weights (``pretrained_model_name_or_path``): an original ldm checkpoint (``105000.ckpt``,
``zero123-xl.ckpt``, ``stable_zero123.ckpt``; the EMA weights are copied in), a diffusers folder
or repo in either published layout (``cc_projection/`` as kxic/zero123-*, or
``clip_camera_projection/`` as bennyguo/zero123-*-diffusers), or ``tiny-random``.
``python launch.py --convert zero123 SRC DST`` writes a diffusers folder.

The guidance (``zero123-guidance``) scores renders with either update rule: ``sds`` (threestudio's
Zero123 recipe) or ``sjc`` (Score Jacobian Chaining with perturb-and-average scoring, as in
Zero-1-to-3's ``3drec``). ``sample`` generates novel views of the input image with DDIM.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import c2w_from_spherical, deg2rad, spherical_coordinates
from threestudio_like.config import ConfigError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance import ldm_convert as LC
from threestudio_like.guidance.latent_diffusion import (
    LatentDiffusionGuidance,
    load_diffusers_component,
    make_ddim_scheduler,
    move,
    quiet_progress_bars,
    seeded,
    tiny_unet,
    tiny_vae,
    unet_from_ldm,
    vae_from_ldm,
)
from threestudio_like.guidance.weights import (
    ORIGINAL_CHECKPOINTS,
    TINY_RANDOM,
    OriginalCheckpoint,
    WeightsSource,
    load_state_dict_file,
    missing_weights_error,
    register_converter,
    rerandomize_parameters,
    resolve_weights,
)

# Zero-1-to-3's UNet (sd-objaverse-finetune-c_concat-256.yaml), in ldm terms.
ZERO123_UNET: Dict[str, Any] = {
    "in_channels": 8,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_levels": [True, True, True, False],  # attention_resolutions [4, 2, 1]
    "num_head_channels": 64,
    "num_heads": 8,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "transformer_depth": 1,
}
TINY_ZERO123_UNET: Dict[str, Any] = {
    **ZERO123_UNET,
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attention_levels": [True, True, False],
    "num_heads": 2,
    "context_dim": 32,
}
# A CLIP ViT image tower at toy size (224 px input as the real one, 7x7 patches).
TINY_CLIP_VISION: Dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAMERA_DIM = 4
CAMERA_VARIANTS = ("zero123", "stable-zero123")
UPDATE_RULES = ("sds", "sjc")
CLIP_IMAGE_TOWER_PREFIX = "cond_stage_model.model.visual."
LDM_PROJECTION_PREFIX = "cc_projection."
# diffusers layouts: projection folder -> the prefix of its Linear's weights
PROJECTION_LAYOUTS: Tuple[Tuple[str, str], ...] = (("cc_projection", "projection."), ("clip_camera_projection", "proj."))
DIFFUSERS_PARTS = ("unet", "vae", "image_encoder")

ORIGINAL_CHECKPOINTS.setdefault(
    "cvlab/zero123-weights", OriginalCheckpoint("105000.ckpt", "Zero-1-to-3", "zero123")
)
ORIGINAL_CHECKPOINTS.setdefault(
    "stabilityai/stable-zero123", OriginalCheckpoint("stable_zero123.ckpt", "Stable Zero123", "zero123")
)


# ------------------------------------------------------------------------------------------
# cameras


def zero123_camera(target_positions: Tensor, cond_position: Tensor, variant: str = "zero123") -> Tensor:
    """The camera token ``[B, 4]`` of target cameras at ``[B, 3]`` seen from the conditioning
    camera at ``[3]`` (or ``[B, 3]``), both looking at the origin.

    ``[polar_t - polar_c, sin(az_t - az_c), cos(az_t - az_c), r_t - r_c]`` (radians, polar from
    +z; 3drec's ``get_T``). ``stable-zero123`` replaces the last entry by ``polar_c``.
    """
    if variant not in CAMERA_VARIANTS:
        raise ConfigError(f"camera_variant must be one of {', '.join(CAMERA_VARIANTS)}, got {variant!r}.")
    cond_position = cond_position.to(target_positions).expand_as(target_positions)
    polar_t, az_t, r_t = spherical_coordinates(target_positions.float())
    polar_c, az_c, r_c = spherical_coordinates(cond_position.float())
    d_az = az_t - az_c
    last = r_t - r_c if variant == "zero123" else polar_c
    return torch.stack([polar_t - polar_c, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


def zero123_camera_from_deltas(
    d_elevation_deg: Tensor,
    d_azimuth_deg: Tensor,
    d_distance: Tensor,
    cond_elevation_deg: float = 0.0,
    variant: str = "zero123",
) -> Tensor:
    """The camera token ``[B, 4]`` for view changes in degrees (Zero-1-to-3's demo inputs):
    the polar angle changes by ``-d_elevation``."""
    d_polar = -deg2rad(d_elevation_deg.float())
    d_az = deg2rad(d_azimuth_deg.float())
    if variant == "stable-zero123":
        last = torch.full_like(d_polar, math.radians(90.0 - cond_elevation_deg))
    elif variant == "zero123":
        last = d_distance.float()
    else:
        raise ConfigError(f"camera_variant must be one of {', '.join(CAMERA_VARIANTS)}, got {variant!r}.")
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


# ------------------------------------------------------------------------------------------
# networks


class CameraProjection(nn.Module):
    """``Linear(dim + 4 -> dim)`` on ``[clip_image_embedding, camera]``: Zero-1-to-3's
    ``cc_projection`` (threestudio's ``CLIPCameraProjection``)."""

    def __init__(self, embedding_dim: int = 768, camera_dim: int = CAMERA_DIM) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim + camera_dim, embedding_dim)

    @classmethod
    def from_linear_weights(cls, weight: Tensor, bias: Tensor) -> "CameraProjection":
        out_dim, in_dim = weight.shape
        module = cls(out_dim, in_dim - out_dim)
        module.proj.load_state_dict({"weight": weight, "bias": bias})
        return module

    def forward(self, image_embedding: Tensor, camera: Tensor) -> Tensor:
        """``[B, 1, dim]`` from image embeddings ``[B, 1, dim]`` and camera tokens ``[B, 4]``."""
        return self.proj(torch.cat([image_embedding, camera[:, None, :].to(image_embedding)], dim=-1))


@dataclass
class Zero123Networks:
    """The frozen parts of Zero-1-to-3."""

    unet: nn.Module
    vae: nn.Module
    image_encoder: nn.Module
    projection: CameraProjection


def clip_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> CLIP input ``[B, 3, size, size]``, as Zero-1-to-3's
    ``FrozenCLIPImageEmbedder``: bicubic resize (``align_corners=True``, no antialiasing; what
    ``kornia.geometry.resize`` does), back to [0, 1], CLIP mean/std."""
    x = F.interpolate(images.float(), (size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = x.new_tensor(CLIP_MEAN)[None, :, None, None]
    std = x.new_tensor(CLIP_STD)[None, :, None, None]
    return (x - mean) / std


def _tiny_image_encoder(seed: int = 0) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with seeded(seed):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION))
    rerandomize_parameters(model, seed=seed)
    return model


def image_encoder_from_openai_clip(visual_sd: Dict[str, Tensor]) -> nn.Module:
    """A ``CLIPVisionModelWithProjection`` holding an OpenAI CLIP image tower (``visual.``
    prefix stripped)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**LC.infer_openai_clip_visual_config(visual_sd))
    model = CLIPVisionModelWithProjection(config)
    missing, unexpected = model.load_state_dict(LC.convert_openai_clip_visual(visual_sd), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise LC.ConversionError(
            f"CLIP image tower: converted weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})."
        )
    return model


def _projection_from_folder(source: WeightsSource, key: str) -> CameraProjection:
    folder = Path(source.path)
    for sub, prefix in PROJECTION_LAYOUTS:
        part = folder / sub
        if not part.is_dir():
            continue
        files = [part / f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "bin")]
        files = [f for f in files if f.is_file()]
        if not files:
            raise missing_weights_error(
                source.name, [f"diffusion_pytorch_model.safetensors or .bin in {part}"],
                "Zero-1-to-3's camera projection", key=key,
            )
        state = load_state_dict_file(str(files[0]))
        weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
        if weight is None or bias is None:
            raise LC.ConversionError(f"{files[0]} has no '{prefix}weight'/'{prefix}bias' (keys: {sorted(state)[:4]}).")
        return CameraProjection.from_linear_weights(weight, bias)
    raise missing_weights_error(
        source.name,
        [f"a camera-projection folder ({' or '.join(s + '/' for s, _ in PROJECTION_LAYOUTS)}) in {folder}"],
        "Zero-1-to-3's camera projection", key=key,
    )


def _networks_from_ldm(path: str, use_ema: bool, num_heads: int, clip_name_or_path: str) -> Zero123Networks:
    state = load_state_dict_file(path)
    if use_ema:
        state, _ = LC.copy_ldm_ema(state)
    unet_sd = {k[len(LC.UNET_PREFIX):]: v for k, v in state.items() if k.startswith(LC.UNET_PREFIX)}
    vae_sd = {k[len(LC.VAE_PREFIX):]: v for k, v in state.items() if k.startswith(LC.VAE_PREFIX)}
    clip_sd = {k[len(CLIP_IMAGE_TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_IMAGE_TOWER_PREFIX)}
    weight, bias = state.get(LDM_PROJECTION_PREFIX + "weight"), state.get(LDM_PROJECTION_PREFIX + "bias")
    if not unet_sd or not vae_sd or weight is None or bias is None:
        raise LC.ConversionError(
            f"{path} is not a Zero-1-to-3 checkpoint: it needs '{LC.UNET_PREFIX}*', '{LC.VAE_PREFIX}*' "
            f"and '{LDM_PROJECTION_PREFIX}weight' keys."
        )
    unet = unet_from_ldm(unet_sd, num_heads=num_heads)
    vae = vae_from_ldm(vae_sd)
    if clip_sd:
        image_encoder = image_encoder_from_openai_clip(clip_sd)
    else:  # a checkpoint saved without the (frozen) CLIP tower: take it from its own release
        from transformers import CLIPVisionModelWithProjection

        clip_source = resolve_weights(clip_name_or_path, "CLIP ViT-L/14 (image tower)", key="system.guidance.clip_name_or_path")
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip_source.path)
    return Zero123Networks(unet, vae, image_encoder, CameraProjection.from_linear_weights(weight, bias))


def check_zero123_networks(networks: Zero123Networks, where: str) -> None:
    """A clear error when the weights are not Zero-1-to-3's (8 input channels, one projection)."""
    unet = networks.unet
    if unet.config.in_channels != 8:
        raise ConfigError(
            f"{where} is not a Zero-1-to-3 UNet: it has {unet.config.in_channels} input channels, not 8 "
            f"(noisy latent + image latent)."
        )
    width = networks.projection.proj.out_features
    if unet.config.cross_attention_dim != width or networks.image_encoder.config.projection_dim != width:
        raise ConfigError(
            f"{where}: CLIP embedding ({networks.image_encoder.config.projection_dim}), camera projection "
            f"({width}) and UNet context ({unet.config.cross_attention_dim}) widths differ."
        )


def load_zero123_networks(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
    num_heads: int = 8,
    clip_name_or_path: str = "openai/clip-vit-large-patch14",
    key: str = "system.guidance.pretrained_model_name_or_path",
) -> Zero123Networks:
    """Zero-1-to-3's networks from any weights source (see the module doc)."""
    from transformers import CLIPVisionModelWithProjection

    quiet_progress_bars()
    source = resolve_weights(
        name_or_path, "Zero-1-to-3", subfolders=DIFFUSERS_PARTS, key=key,
        extra_patterns=[f"{sub}/*" for sub, _ in PROJECTION_LAYOUTS] + [f"{sub}/*.bin" for sub in DIFFUSERS_PARTS],
    )
    if source.kind == TINY_RANDOM:
        image_encoder = _tiny_image_encoder()
        width = TINY_CLIP_VISION["projection_dim"]
        with seeded(3):
            projection = CameraProjection(width)
        rerandomize_parameters(projection, seed=3)
        networks = Zero123Networks(tiny_unet(TINY_ZERO123_UNET, sample_size=8), tiny_vae(), image_encoder, projection)
    elif source.kind == "diffusers":
        networks = Zero123Networks(
            load_diffusers_component(source, "unet", "UNet2DConditionModel", dtype),
            load_diffusers_component(source, "vae", "AutoencoderKL", dtype),
            CLIPVisionModelWithProjection.from_pretrained(source.path, subfolder="image_encoder", torch_dtype=dtype),
            _projection_from_folder(source, key),
        )
    else:
        networks = _networks_from_ldm(source.path, use_ema, num_heads, clip_name_or_path)
    check_zero123_networks(networks, source.path or source.name)
    for net in (networks.unet, networks.vae, networks.image_encoder, networks.projection):
        move(net, dtype=dtype)
    return networks


@register_converter("zero123")
def convert_zero123(
    src: str, dst: str, tokenizer: Optional[str] = None, use_ema: bool = True, num_heads: int = 8,
    clip_name_or_path: str = "openai/clip-vit-large-patch14",
) -> str:
    """Original Zero-1-to-3 checkpoint (``105000.ckpt``, ``zero123-xl.ckpt``,
    ``stable_zero123.ckpt``; a file or Hugging Face id) -> diffusers folder ``dst``.

    Writes ``unet/``, ``vae/``, ``image_encoder/`` (safetensors), ``cc_projection/`` (the layout
    of kxic/zero123-*), ``scheduler/`` and ``model_index.json``; EMA weights are copied in.
    ``tokenizer`` is accepted for the command line's sake: Zero-1-to-3 has no text encoder.
    """
    from safetensors.torch import save_file

    quiet_progress_bars()
    source = resolve_weights(src, "Zero-1-to-3")
    if source.kind != "checkpoint":
        raise ValueError(f"--convert zero123 takes the original checkpoint file (e.g. 105000.ckpt), got {src!r}.")
    networks = _networks_from_ldm(source.path, use_ema, num_heads, clip_name_or_path)
    check_zero123_networks(networks, source.path)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for name in DIFFUSERS_PARTS:
        getattr(networks, name).save_pretrained(str(out / name), safe_serialization=True)
        print(f"  wrote {out / name}")
    proj = networks.projection.proj
    (out / "cc_projection").mkdir(exist_ok=True)
    (out / "cc_projection" / "config.json").write_text(json.dumps(
        {"_class_name": "CCProjection", "in_channel": proj.in_features, "out_channel": proj.out_features}, indent=2
    ) + "\n")
    save_file({"projection.weight": proj.weight.detach().contiguous(), "projection.bias": proj.bias.detach().contiguous()},
              str(out / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    print(f"  wrote {out / 'cc_projection'}")
    make_ddim_scheduler().save_pretrained(str(out / "scheduler"))
    index = {
        "_class_name": "Zero1to3StableDiffusionPipeline",
        "cc_projection": ["pipeline_zero1to3", "CCProjection"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return str(out)


# ------------------------------------------------------------------------------------------
# the guidance


@dataclass
class Zero123Condition:
    """The conditioning view: what the prior knows about the input image."""

    image: Tensor
    """``[1, S, S, 3]`` in [0, 1], white background."""
    clip_embedding: Tensor
    """``[1, 1, D]`` CLIP projected image embedding."""
    image_latent: Tensor
    """``[1, 4, S/8, S/8]`` unscaled VAE latent (posterior mode)."""
    position: Tensor
    """``[3]`` position of the camera that took the image (looking at the origin)."""


@register("zero123-guidance")
class Zero123Guidance(LatentDiffusionGuidance):
    """Zero-1-to-3 novel-view prior, scoring renders by SDS or SJC."""

    @dataclass
    class Config(LatentDiffusionGuidance.Config):
        pretrained_model_name_or_path: str = "cvlab/zero123-weights/105000.ckpt"
        """Zero-1-to-3 weights: an ldm checkpoint (file or owner/repo/file.ckpt), a diffusers folder or repo, tiny-random."""
        camera_variant: str = "zero123"
        """zero123: 4th camera entry = delta radius; stable-zero123: polar angle of the conditioning view."""
        update_rule: str = "sds"
        """sds (threestudio's Zero123 recipe) | sjc (Score Jacobian Chaining, 3drec)."""
        guidance_scale: float = 3.0
        """CFG scale s in eps_u + s (eps_c - eps_u) (SJC upstream: 100)."""
        image_size: int = 256
        """Zero-1-to-3 works at 256x256 (latents 32x32)."""
        n_perturb: int = 1
        """SJC: noise draws averaged per view (perturb-and-average scoring); 3drec uses 1."""
        var_red: bool = True
        """SJC: variance-reduced gradient (D - y) / sigma instead of (D - z) / sigma."""
        use_ema: bool = True
        """ldm checkpoints: copy the EMA weights into the model (as threestudio does)."""
        num_heads: int = 8
        """Attention heads per level of the original UNet (for conversion on load)."""
        clip_name_or_path: str = "openai/clip-vit-large-patch14"
        """CLIP image tower, used only when an ldm checkpoint does not contain it."""
        cond_image_path: str = ""
        """--sample: the input image (training takes the data module's reference view)."""
        cond_mask_path: Optional[str] = None
        """--sample: optional mask of the input image."""
        cond_recenter: bool = True
        """--sample: centre the object by its alpha bounding box."""
        cond_object_fraction: float = 200.0 / 256.0
        """--sample: object size over the frame when re-centring."""
        cond_elevation_deg: float = 0.0
        """--sample: elevation of the input view (Stable Zero123 conditions on it)."""
        cond_azimuth_deg: float = 0.0
        """--sample: azimuth of the input view."""
        cond_camera_distance: float = 2.0
        """--sample: distance of the input view."""
        sample_views: List[List[float]] = field(default_factory=lambda: [[0.0, 90.0], [0.0, 180.0], [0.0, 270.0], [30.0, 0.0]])
        """--sample: [delta elevation, delta azimuth] (degrees) of each generated view."""
        sample_steps: int = 50
        """--sample: DDIM steps."""
        sample_guidance_scale: float = 3.0
        """--sample: CFG scale (Zero-1-to-3's demo: 3)."""
        sample_eta: float = 1.0
        """--sample: DDIM eta (Zero-1-to-3's demo: 1.0)."""

    cfg: Config

    def configure(self) -> None:
        if self.cfg.update_rule not in UPDATE_RULES:
            raise ConfigError(f"system.guidance.update_rule must be sds or sjc, got {self.cfg.update_rule!r}.")
        if self.cfg.camera_variant not in CAMERA_VARIANTS:
            raise ConfigError(
                f"system.guidance.camera_variant must be one of {', '.join(CAMERA_VARIANTS)}, got {self.cfg.camera_variant!r}."
            )
        if self.cfg.n_perturb < 1:
            raise ConfigError(f"system.guidance.n_perturb must be >= 1, got {self.cfg.n_perturb}.")
        super().configure()
        self._default_condition: Optional[Zero123Condition] = None

    def load_networks(self) -> None:
        nets = load_zero123_networks(
            self.cfg.pretrained_model_name_or_path, self.weights_dtype, self.cfg.use_ema,
            self.cfg.num_heads, self.cfg.clip_name_or_path,
        )
        self.unet, self.vae, self.image_encoder, self.projection = nets.unet, nets.vae, nets.image_encoder, nets.projection
        self.check_image_size()

    def networks(self) -> Dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae, "image_encoder": self.image_encoder, "projection": self.projection}

    # -- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_condition(self, image: Tensor, c2w: Tensor) -> Zero123Condition:
        """The condition of an input image ``[1, H, W, 3]`` in [0, 1] (white background) taken
        by the camera ``c2w`` ``[1, 4, 4]`` (our convention; only its position is used: Zero-1-to-3
        assumes it looks at the origin)."""
        if image.shape[0] != 1 or c2w.reshape(-1, 4, 4).shape[0] != 1:
            raise ConfigError(
                f"Zero-1-to-3 conditions on one image, got {image.shape[0]}: pass image=... (for several "
                f"posed images use an EscherNet recipe, e.g. configs/eschernet-6dof.yaml)."
            )
        position = c2w.reshape(4, 4)[:3, 3]
        size = self.cfg.image_size
        x = image.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x.clamp(0.0, 1.0) * 2.0 - 1.0).to(self.device)
        embedding = self.image_encoder(pixel_values=clip_preprocess(x).to(self.weights_dtype)).image_embeds
        latent = self.vae.encode(x.to(self.weights_dtype)).latent_dist.mode()  # unscaled, as trained
        return Zero123Condition(
            image=((x + 1.0) / 2.0).permute(0, 2, 3, 1).float(),
            clip_embedding=embedding[:, None, :].float(),
            image_latent=latent.float(),
            position=position.reshape(3).float().to(self.device),
        )

    def default_condition(self) -> Zero123Condition:
        """The condition of ``cond_image_path`` at the ``cond_*`` camera (for --sample)."""
        if self._default_condition is None:
            from threestudio_like.data.image import load_reference_image

            cfg = self.cfg
            if not cfg.cond_image_path:
                raise ConfigError("zero123-guidance needs an input image: pass image=path/to/object.png.")
            size = cfg.image_size
            image = load_reference_image(
                cfg.cond_image_path, size, size, cfg.cond_mask_path, cfg.cond_recenter, cfg.cond_object_fraction
            )["rgb"]
            t = torch.tensor
            c2w = c2w_from_spherical(
                deg2rad(t([cfg.cond_elevation_deg])), deg2rad(t([cfg.cond_azimuth_deg])), t([cfg.cond_camera_distance])
            )
            self._default_condition = self.prepare_condition(image, c2w)
        return self._default_condition

    def camera_tokens(self, c2w: Tensor, condition: Zero123Condition) -> Tensor:
        """Camera tokens ``[B, 4]`` of cameras ``c2w`` ``[B, 4, 4]`` relative to the condition's."""
        return zero123_camera(c2w[:, :3, 3].float().to(self.device), condition.position, self.cfg.camera_variant)

    def predict_noise(self, x_t: Tensor, t: Tensor, context: Tensor, image_latent: Tensor) -> Tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` for noisy latents ``[N, 4, h, w]``; ``context`` ``[N, 1, D]``
        (projected), ``image_latent`` ``[N, 4, h, w]``. The unconditional branch gets zeros for
        both (after the projection), as Zero-1-to-3's inference does."""
        dtype = self.weights_dtype
        x_t = x_t.to(self.device, dtype)
        image_latent = image_latent.to(self.device, dtype)
        x_in = torch.cat([torch.cat([x_t, torch.zeros_like(image_latent)], 1), torch.cat([x_t, image_latent], 1)])
        context = context.to(self.device, dtype)
        eps = self.unet(
            x_in, torch.cat([t, t]).to(self.device), encoder_hidden_states=torch.cat([torch.zeros_like(context), context])
        ).sample.float()
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_cond, eps_uncond

    def guided_noise_fn(self, condition: Zero123Condition, camera: Tensor, scale: float):
        """``predict(x_t, t)`` with CFG for the views with camera tokens ``camera`` ``[B, 4]``;
        a batch of ``k * B`` rows (perturbation-major) repeats the views' conditions ``k`` times."""
        with torch.no_grad():
            context = self.projection(
                condition.clip_embedding.to(self.device, self.weights_dtype).expand(len(camera), -1, -1),
                camera.to(self.device, self.weights_dtype),
            )
        batch = len(camera)

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            reps = x_t.shape[0] // batch
            latent = condition.image_latent.expand(x_t.shape[0], -1, -1, -1)
            eps_cond, eps_uncond = self.predict_noise(x_t, t, context.repeat(reps, 1, 1), latent)
            return D.classifier_free_guidance(eps_uncond, eps_cond, scale)

        return predict

    def __call__(
        self,
        rgb: Tensor,
        condition: Optional[Zero123Condition] = None,
        *,
        c2w: Tensor,
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        """``loss_sds`` or ``loss_sjc`` (by ``update_rule``) for renders ``[B, H, W, 3]`` (or
        4-channel latent renders with ``rgb_as_latents``) at cameras ``c2w``."""
        self.ensure_device(rgb.device)
        if condition is None:
            condition = self.default_condition()
        latents = self.latents_from_rgb_as_latents(rgb) if rgb_as_latents else self.encode_images(rgb)
        if latents.shape[-2:] != condition.image_latent.shape[-2:]:
            raise ConfigError(
                f"Render latents {tuple(latents.shape[-2:])} and conditioning latent "
                f"{tuple(condition.image_latent.shape[-2:])} differ in size: prepare the condition with this guidance."
            )
        predict = self.guided_noise_fn(condition, self.camera_tokens(c2w, condition), self.cfg.guidance_scale)
        if self.cfg.update_rule == "sjc":
            return D.sjc_update(
                latents, predict, self.alphas_cumprod, self.min_step, self.max_step,
                n_perturb=self.cfg.n_perturb, var_red=self.cfg.var_red, shared_timestep=self.cfg.shared_timestep,
            )
        return self.sds(latents, predict)

    # -- latent rendering ---------------------------------------------------------------------
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

    # -- sampling (python launch.py --sample) -------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        condition: Optional[Zero123Condition] = None,
        generator: Optional[torch.Generator] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
    ) -> Tensor:
        """The input image followed by its novel views at ``sample_views``: ``[1 + N, S, S, 3]``."""
        cfg = self.cfg
        if condition is None or not isinstance(condition, Zero123Condition):
            condition = self.default_condition()
        views = torch.tensor([list(v) for v in cfg.sample_views], dtype=torch.float32).reshape(-1, 2)
        cond_elevation = 90.0 - math.degrees(float(spherical_coordinates(condition.position.cpu())[0]))
        camera = zero123_camera_from_deltas(views[:, 0], views[:, 1], torch.zeros(len(views)), cond_elevation, cfg.camera_variant)
        predict = self.guided_noise_fn(condition, camera, cfg.sample_guidance_scale if guidance_scale is None else guidance_scale)
        images = self.sample_images(predict, len(views), num_inference_steps or cfg.sample_steps, generator, cfg.sample_eta)
        return torch.cat([condition.image.to(self.device), images])
