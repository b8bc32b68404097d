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

Weights (:data:`ZERO123_WEIGHTS`): an original ldm checkpoint (``105000.ckpt``,
``zero123-xl.ckpt``, ``stable_zero123.ckpt``; the EMA weights are copied in), a diffusers folder
or repo in either published layout (``cc_projection/`` as kxic/zero123-*, or
``clip_camera_projection/`` as bennyguo/zero123-*-diffusers), or ``tiny-random``.
``python launch.py --convert zero123 SRC DST`` writes a diffusers folder.

The guidance (``zero123-guidance``) scores renders with the configured update rule: ``sds``
(threestudio's Zero123 recipe) or ``sjc`` (Score Jacobian Chaining with perturb-and-average
scoring, as in Zero-1-to-3's ``3drec``). Its condition comes from the data module through
:meth:`Zero123Guidance.prepare_condition`; ``sample`` generates novel views of it with DDIM.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Tuple, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras, deg2rad, spherical_coordinates
from threestudio_like.errors import ConfigError, ConversionError
from threestudio_like.guidance.base import NoisePredictor, classifier_free
from threestudio_like.guidance.image_prior import ImagePriorGuidance
from threestudio_like.guidance.latent_diffusion import UNetBranch, check_unet, unet_and_vae
from threestudio_like.models import ldm_convert as LC
from threestudio_like.models.architectures import TINY_CONTEXT_DIM, TINY_ZERO123_UNET
from threestudio_like.models.builders import (
    image_encoder_from_openai_clip,
    library_class,
    seeded,
    tiny_clip_image_encoder,
    unet_from_ldm,
    vae_from_ldm,
)
from threestudio_like.models.checkpoints import load_state_dict_file, sub_state_dict
from threestudio_like.models.hub import OriginalCheckpoint, WeightsSource, missing_weights_error, resolve_weights
from threestudio_like.models.loader import Part, WeightsRecipe, register_weights
from threestudio_like.models.tiny import rerandomize_parameters

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CAMERA_DIM = 4
CameraVariant = Literal["zero123", "stable-zero123"]
CAMERA_VARIANTS = get_args(CameraVariant)
CLIP_IMAGE_TOWER_PREFIX = "cond_stage_model.model.visual."
LDM_PROJECTION_PREFIX = "cc_projection."
# diffusers layouts: projection folder -> the prefix of its Linear's weights
PROJECTION_LAYOUTS: Tuple[Tuple[str, str], ...] = (("cc_projection", "projection."), ("clip_camera_projection", "proj."))
WEIGHTS_KEY = "system.guidance.pretrained_model_name_or_path"


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


def clip_preprocess(images: Tensor, size: int = 224) -> Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> CLIP input ``[B, 3, size, size]``, as Zero-1-to-3's
    ``FrozenCLIPImageEmbedder``: bicubic resize (``align_corners=True``, no antialiasing; what
    ``kornia.geometry.resize`` does), back to [0, 1], CLIP mean/std."""
    x = F.interpolate(images.float(), (size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = x.new_tensor(CLIP_MEAN)[None, :, None, None]
    std = x.new_tensor(CLIP_STD)[None, :, None, None]
    return (x - mean) / std


def _tiny_projection(options: Dict[str, Any]) -> CameraProjection:
    with seeded(3):
        projection = CameraProjection(TINY_CONTEXT_DIM)
    rerandomize_parameters(projection, seed=3)
    return projection


def _projection_from_folder(source: WeightsSource, dtype: torch.dtype) -> CameraProjection:
    """The camera projection of a diffusers folder, in either published layout."""
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
                "Zero-1-to-3's camera projection", key=WEIGHTS_KEY,
            )
        state = load_state_dict_file(str(files[0]))
        weight, bias = state.get(prefix + "weight"), state.get(prefix + "bias")
        if weight is None or bias is None:
            raise ConversionError(f"{files[0]} has no '{prefix}weight'/'{prefix}bias' (keys: {sorted(state)[:4]}).")
        return CameraProjection.from_linear_weights(weight, bias)
    raise missing_weights_error(
        source.name,
        [f"a camera-projection folder ({' or '.join(s + '/' for s, _ in PROJECTION_LAYOUTS)}) in {folder}"],
        "Zero-1-to-3's camera projection", key=WEIGHTS_KEY,
    )


def _save_projection(projection: nn.Module, folder: Path) -> List[str]:
    """``--convert``: the projection in kxic/zero123-*'s ``cc_projection/`` layout."""
    from safetensors.torch import save_file

    proj = projection.proj
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": "CCProjection", "in_channel": proj.in_features, "out_channel": proj.out_features}, indent=2
    ) + "\n")
    save_file({"projection.weight": proj.weight.detach().contiguous(), "projection.bias": proj.bias.detach().contiguous()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    return ["pipeline_zero1to3", "CCProjection"]


def zero123_from_ldm(state: Dict[str, Tensor], options: Dict[str, Any]) -> Dict[str, nn.Module]:
    """The networks of an original Zero-1-to-3 checkpoint (EMA weights copied in by default)."""
    if options["use_ema"]:
        state, _ = LC.copy_ldm_ema(state)
    unet_sd, vae_sd = sub_state_dict(state, LC.UNET_PREFIX), sub_state_dict(state, LC.VAE_PREFIX)
    clip_sd = sub_state_dict(state, CLIP_IMAGE_TOWER_PREFIX)
    weight, bias = state.get(LDM_PROJECTION_PREFIX + "weight"), state.get(LDM_PROJECTION_PREFIX + "bias")
    if not unet_sd or not vae_sd or weight is None or bias is None:
        raise ConversionError(
            f"not a Zero-1-to-3 checkpoint: it needs '{LC.UNET_PREFIX}*', '{LC.VAE_PREFIX}*' "
            f"and '{LDM_PROJECTION_PREFIX}weight' keys."
        )
    if clip_sd:
        image_encoder = image_encoder_from_openai_clip(clip_sd)
    else:  # a checkpoint saved without the (frozen) CLIP tower: take it from its own release
        clip_source = resolve_weights(options["clip_name_or_path"], "CLIP ViT-L/14 (image tower)",
                                      key="system.guidance.clip_name_or_path")
        image_encoder = library_class("transformers.CLIPVisionModelWithProjection").from_pretrained(clip_source.path)
    return {
        "unet": unet_from_ldm(unet_sd, num_heads=options["num_heads"]),
        "vae": vae_from_ldm(vae_sd),
        "image_encoder": image_encoder,
        "projection": CameraProjection.from_linear_weights(weight, bias),
    }


def check_zero123_networks(parts: Dict[str, nn.Module], where: str) -> None:
    """A clear error when the weights are not Zero-1-to-3's (8 input channels, one projection)."""
    width = parts["projection"].proj.out_features
    check_unet(parts["unet"], where, "Zero-1-to-3", 8, ("the camera projection", width), "(noisy latent + image latent)")
    encoder_width = parts["image_encoder"].config.projection_dim
    if encoder_width != width:
        raise ConfigError(f"{where}: the CLIP embedding is {encoder_width}-d but the camera projection takes {width}-d.")


ZERO123_WEIGHTS = register_weights(WeightsRecipe(
    "zero123", "Zero-1-to-3",
    parts=(
        *unet_and_vae(TINY_ZERO123_UNET),
        Part("image_encoder", "transformers.CLIPVisionModelWithProjection", lambda o: tiny_clip_image_encoder()),
        Part("projection", "", _tiny_projection, load_folder=_projection_from_folder, save=_save_projection,
             folder="cc_projection"),
    ),
    from_checkpoint=zero123_from_ldm,
    check=check_zero123_networks,
    hub_files={
        "cvlab/zero123-weights": OriginalCheckpoint("105000.ckpt", "Zero-1-to-3", "zero123"),
        "stabilityai/stable-zero123": OriginalCheckpoint("stable_zero123.ckpt", "Stable Zero123", "zero123"),
    },
    extra_patterns=tuple(f"{sub}/*" for sub, _ in PROJECTION_LAYOUTS)
    + tuple(f"{sub}/*.bin" for sub in ("unet", "vae", "image_encoder")),
    default_options={"use_ema": True, "num_heads": 8, "clip_name_or_path": "openai/clip-vit-large-patch14"},
    pipeline_class="Zero1to3StableDiffusionPipeline",
))


# ------------------------------------------------------------------------------------------
# the guidance


@register("zero123-guidance")
class Zero123Guidance(ImagePriorGuidance):
    """Zero-1-to-3 novel-view prior, scoring renders by SDS or SJC.

    Its condition (:class:`Zero123Condition`) is the input image's CLIP embedding and unscaled VAE
    latent plus the input camera's position; a render's camera enters as the relative camera
    token (:func:`zero123_camera`).
    """

    @dataclass
    class Config(ImagePriorGuidance.Config):
        pretrained_model_name_or_path: str = "cvlab/zero123-weights/105000.ckpt"
        """Zero-1-to-3 weights: an ldm checkpoint (file or owner/repo/file.ckpt), a diffusers folder or repo, tiny-random."""
        camera_variant: CameraVariant = "zero123"
        """zero123: 4th camera entry = delta radius; stable-zero123: polar angle of the conditioning view."""
        use_ema: bool = True
        """ldm checkpoints: copy the EMA weights into the model (as threestudio does)."""
        num_heads: int = 8
        """Attention heads per level of the original UNet (for conversion on load)."""
        clip_name_or_path: str = "openai/clip-vit-large-patch14"
        """CLIP image tower, used only when an ldm checkpoint does not contain it."""

    cfg: Config
    weights = ZERO123_WEIGHTS
    condition_type = Zero123Condition
    condition_hint = ("Use data_type: single-image-datamodule with image=object.png and an image-to-3D system "
                      "(it prepares the condition).")
    sample_defaults = {**ImagePriorGuidance.sample_defaults, "eta": 1.0}
    """Zero-1-to-3's demo: CFG 3, DDIM eta 1."""

    def weights_options(self) -> Dict[str, Any]:
        c = self.cfg
        return {"use_ema": c.use_ema, "num_heads": c.num_heads, "clip_name_or_path": c.clip_name_or_path}

    # -- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_condition(self, images: Tensor, c2w: Tensor) -> Zero123Condition:
        """The condition of an input image ``[1, H, W, 3]`` in [0, 1] (white background) taken
        by the camera ``c2w`` ``[1, 4, 4]`` (our convention; only its position is used: Zero-1-to-3
        assumes it looks at the origin)."""
        if images.shape[0] != 1 or c2w.reshape(-1, 4, 4).shape[0] != 1:
            raise ConfigError(
                f"Zero-1-to-3 conditions on one image, got {images.shape[0]}: pass image=... (for several "
                f"posed images use an EscherNet recipe, e.g. configs/eschernet-6dof.yaml)."
            )
        position = c2w.reshape(4, 4)[:3, 3]
        x = self.condition_pixels(images)
        embedding = self.image_encoder(pixel_values=clip_preprocess(x).to(self.weights_dtype)).image_embeds
        latent = self.vae.encode(x.to(self.weights_dtype)).latent_dist.mode()  # unscaled, as trained
        return Zero123Condition(
            image=((x + 1.0) / 2.0).permute(0, 2, 3, 1).float(),
            clip_embedding=embedding[:, None, :].float(),
            image_latent=latent.float(),
            position=position.reshape(3).float().to(self.device),
        )

    def camera_tokens(self, c2w: Tensor, condition: Zero123Condition) -> Tensor:
        """Camera tokens ``[B, 4]`` of cameras ``c2w`` ``[B, 4, 4]`` relative to the condition's."""
        return zero123_camera(c2w[:, :3, 3].float().to(self.device), condition.position, self.cfg.camera_variant)

    def predict_noise(self, x_t: Tensor, t: Tensor, context: Tensor, image_latent: Tensor) -> Tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` for noisy latents ``[N, 4, h, w]``; ``context`` ``[N, 1, D]``
        (projected), ``image_latent`` ``[N, 4, h, w]``. The unconditional branch gets zeros for
        both (after the projection), as Zero-1-to-3's inference does."""
        branches = [UNetBranch(context, concat=image_latent),
                    UNetBranch(torch.zeros_like(context), concat=torch.zeros_like(image_latent))]
        eps_cond, eps_uncond = self.unet_branches(x_t, t, branches)
        return eps_cond, eps_uncond

    def guided_noise_fn(self, condition: Zero123Condition, camera: Tensor, scale: float) -> NoisePredictor:
        """``predict(x_t, t) -> (guided eps, conditional eps)`` for the views with camera tokens
        ``camera`` ``[B, 4]``; a batch of ``k * B`` rows (perturbation-major) repeats the views'
        conditions ``k`` times."""
        with torch.no_grad():
            context = self.projection(
                condition.clip_embedding.to(self.device, self.weights_dtype).expand(len(camera), -1, -1),
                camera.to(self.device, self.weights_dtype),
            )

        def branches(x_t: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
            latent = condition.image_latent.expand(x_t.shape[0], -1, -1, -1)
            return self.predict_noise(x_t, t, context.repeat(x_t.shape[0] // len(camera), 1, 1), latent)

        return classifier_free(branches, scale)

    def guide(self, rgb: Tensor, condition: Zero123Condition, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """``loss_sds`` or ``loss_sjc`` (by ``update_rule``) for renders ``[B, H, W, 3]`` (or
        4-channel latent renders with ``rgb_as_latents``)."""
        latents = self.to_latents(rgb, rgb_as_latents)
        if latents.shape[-2:] != condition.image_latent.shape[-2:]:
            raise ConfigError(
                f"Render latents {tuple(latents.shape[-2:])} and conditioning latent "
                f"{tuple(condition.image_latent.shape[-2:])} differ in size: prepare the condition with this guidance."
            )
        camera = self.camera_tokens(cameras.c2w, condition)
        return self.distil(latents, self.guided_noise_fn(condition, camera, self.cfg.guidance_scale))

    # -- sampling (python launch.py --sample) -------------------------------------------------
    def view_predictor(self, condition: Zero123Condition, offsets: Tensor, scale: float) -> NoisePredictor:
        """Novel views at ``offsets`` ([delta elevation, delta azimuth] degrees) of the input view."""
        cond_elevation = 90.0 - math.degrees(float(spherical_coordinates(condition.position.cpu())[0]))
        camera = zero123_camera_from_deltas(offsets[:, 0], offsets[:, 1], torch.zeros(len(offsets)), cond_elevation,
                                            self.cfg.camera_variant)
        return self.guided_noise_fn(condition, camera, scale)

    def condition_images(self, condition: Zero123Condition) -> Tensor:
        return condition.image
