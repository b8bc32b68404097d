"""EscherNet (Kong et al. 2024) as a multi-view distillation prior, on stock diffusers models.

EscherNet is Stable Diffusion 1.5 fine-tuned to denoise M target views of an object jointly,
conditioned on N posed reference images. Its only architectural change is *where* cameras enter:
nowhere but inside attention, through Camera Positional Encoding (CaPE). So the UNet is a stock
``UNet2DConditionModel`` (4 input channels, no camera MLP, no latent concat) whose attention
layers get :class:`CaPEAttnProcessor`:

* self-attention (``attn1``) spans the tokens of all M target views of an object (as MVDream);
* after the q/k projections and before the head split, queries and keys are transformed by their
  view's pose. **6DoF**: every 4-channel chunk of a query (a row vector) is multiplied by
  ``inverse(P_target)^T`` and of a key by its view's ``P`` (the target poses in self-attention,
  the reference poses in cross-attention), ``P`` being the 4x4 world-to-camera matrix; the score
  ``q (P_key P_query^-1)^T k^T`` then depends only on the relative pose. **4DoF**: a rotary
  encoding of ``(polar, azimuth, log-radius scaled to [0, pi], 0)``, one angle per quarter of the
  channels, so scores depend only on pose differences. Values are untouched.

References are encoded by ConvNeXtV2-tiny (``transformers.ConvNextV2Model``): the 7x7 grid of the
last stage, flattened to 49 tokens and passed through the model's own final LayerNorm; the
tokens of the N references are concatenated along the sequence. Classifier-free guidance uses
zero reference tokens with the same poses (scale 3 by default).

Pose convention: EscherNet's poses are OpenGL world-to-camera matrices of Objaverse renders (z up,
cameras 1.5 to 2.2 from the object); ours are OpenGL camera-to-world (:mod:`threestudio_like.cameras`),
so the conversion is one rigid inverse after scaling translations by ``scene_scale``
(:func:`eschernet_w2c`). 6DoF CaPE is invariant to the choice of world frame, not to its scale.

Weights (:data:`ESCHERNET_WEIGHTS`): ``kxic/eschernet-6dof`` / ``kxic/eschernet-4dof`` (diffusers
folders with ``unet/``, ``vae/`` and ``image_encoder/``), a local copy of them, or ``tiny-random``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Literal, Tuple, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad, spherical_coordinates
from threestudio_like.errors import ConfigError, FieldError
from threestudio_like.guidance.base import NoisePredictor, classifier_free
from threestudio_like.guidance.image_prior import ImagePriorGuidance
from threestudio_like.guidance.latent_diffusion import UNetBranch, check_unet, unet_and_vae
from threestudio_like.guidance.multiview_attention import (
    MultiViewAttnProcessor,
    check_view_groups,
    install_attention_processors,
)
from threestudio_like.models.architectures import TINY_ESCHERNET_UNET
from threestudio_like.models.builders import tiny_convnext
from threestudio_like.models.loader import Part, WeightsRecipe, register_weights

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_SIZE = 224
RADIUS_RANGE = (1.5, 2.2)
"""Camera distances of EscherNet's training renders (and the 4DoF radius normalisation)."""
CapeType = Literal["6dof", "4dof"]
CAPE_TYPES = get_args(CapeType)


# ------------------------------------------------------------------------------------------
# poses


def eschernet_w2c(c2w: Tensor, scene_scale: float = 1.0) -> Tensor:
    """EscherNet's pose ``[B, 4, 4]`` (OpenGL world-to-camera) of our cameras ``c2w`` ``[B, 4, 4]``.

    Both conventions are OpenGL camera axes in a z-up world, so this is the rigid inverse of
    ``c2w`` after scaling its translation by ``scene_scale`` (our units -> EscherNet's).
    """
    c2w = c2w.float()
    rotation = c2w[..., :3, :3]
    position = c2w[..., :3, 3] * scene_scale
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = rotation.transpose(-1, -2)
    w2c[..., :3, 3] = -(rotation.transpose(-1, -2) @ position[..., None])[..., 0]
    w2c[..., 3, 3] = 1.0
    return w2c


def eschernet_4dof_pose(c2w: Tensor, scene_scale: float = 1.0, radius_range: Tuple[float, float] = RADIUS_RANGE) -> Tensor:
    """The 4DoF CaPE pose ``[B, 4]``: ``(polar, azimuth, r~, 0)`` of the camera position (radians;
    polar from +z), with ``r~ = pi (ln r - ln r0) / (ln r1 - ln r0)`` for r clipped to the range."""
    polar, azimuth, radius = spherical_coordinates(c2w[..., :3, 3].float() * scene_scale)
    lo, hi = radius_range
    r = radius.clamp(lo, hi)
    r_scaled = math.pi * (torch.log(r) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return torch.stack([polar, azimuth, r_scaled, torch.zeros_like(polar)], dim=-1)


def _grouped(x: Tensor, groups: int) -> Tensor:
    """``[b, L, D]`` -> ``[b, G, L / G, D]`` (tokens of G views, contiguous)."""
    b, length, dim = x.shape
    if length % groups:
        raise ValueError(f"{length} tokens cannot be split into {groups} views.")
    return x.reshape(b, groups, length // groups, dim)


def cape_6dof(x: Tensor, pose: Tensor) -> Tensor:
    """Every 4-channel chunk of the tokens ``x`` ``[b, L, D]`` (row vectors) times its view's
    matrix: ``pose`` ``[b, G, 4, 4]`` for G views whose tokens are contiguous in ``x``."""
    b, length, dim = x.shape
    if dim % 4:
        raise ValueError(f"6DoF CaPE needs a width divisible by 4, got {dim}.")
    groups = pose.shape[1]
    chunks = _grouped(x, groups).reshape(b, groups, length // groups, dim // 4, 4)
    return (chunks @ pose[:, :, None].to(x.dtype)).reshape(b, length, dim)


def rotate_pairs(x: Tensor) -> Tensor:
    """Channel pairs ``(x0, x1) -> (-x1, x0)`` (a quarter turn of every pair)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def cape_4dof(x: Tensor, pose: Tensor) -> Tensor:
    """Rotary encoding of the tokens ``x`` ``[b, L, D]`` by ``pose`` ``[b, G, P]`` (G views,
    contiguous): channel block ``i`` of ``D / P`` channels turns its pairs by ``pose[..., i]``."""
    b, length, dim = x.shape
    n = pose.shape[-1]
    if dim % (2 * n):
        raise ValueError(f"4DoF CaPE needs a width divisible by {2 * n}, got {dim}.")
    angles = pose.to(x.dtype).repeat_interleave(dim // n, dim=-1)[:, :, None]  # [b, G, 1, D]
    grouped = _grouped(x, pose.shape[1])
    out = grouped * torch.cos(angles) + rotate_pairs(grouped) * torch.sin(angles)
    return out.reshape(b, length, dim)


@dataclass
class CaPEPoses:
    """The camera encodings one UNet call needs, per batch row (one row = one target view).

    6DoF: ``target`` holds world-to-camera matrices ``[R, 4, 4]``, ``reference`` ``[R, N, 4, 4]``;
    queries use ``inverse(target)^T``. 4DoF: 4-vectors ``[R, 4]`` and ``[R, N, 4]``.
    """

    kind: str
    target: Tensor
    reference: Tensor
    target_query: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in CAPE_TYPES:
            raise ConfigError(f"CaPE type must be one of {', '.join(CAPE_TYPES)}, got {self.kind!r}.")
        if self.kind == "6dof":
            self.target_query = torch.linalg.inv(self.target.float()).transpose(-1, -2)
        else:
            self.target_query = self.target

    def embed(self, x: Tensor, pose: Tensor) -> Tensor:
        """Tokens ``x`` ``[b, L, D]`` of ``pose.shape[1]`` views encoded by their poses."""
        return cape_6dof(x, pose) if self.kind == "6dof" else cape_4dof(x, pose)


class CaPEAttnProcessor(MultiViewAttnProcessor):
    """Multi-view attention with CaPE on queries and keys (``poses``: :class:`CaPEPoses`)."""

    def embed_poses(
        self, query: Tensor, key: Tensor, poses: CaPEPoses, self_attention: bool, views_per_row: int
    ) -> Tuple[Tensor, Tensor]:
        batch = query.shape[0]
        rows = poses.target.shape[0]
        if batch * views_per_row != rows:
            raise ValueError(f"CaPE poses for {rows} views, attention over {batch} x {views_per_row}.")
        shape = (batch, views_per_row) + tuple(poses.target.shape[1:])
        query = poses.embed(query, poses.target_query.reshape(shape))
        key_pose = poses.target.reshape(shape) if self_attention else poses.reference
        return query, poses.embed(key, key_pose)


def install_cape_attention(unet: nn.Module) -> nn.Module:
    """CaPE processors on every attention layer (joint over the target views on ``attn1``)."""
    return install_attention_processors(unet, CaPEAttnProcessor)


@dataclass
class EscherNetCondition:
    """The posed references: what the prior knows about the object."""

    images: Tensor
    """``[N, S, S, 3]`` in [0, 1], white background."""
    tokens: Tensor
    """``[1, N * 49, C]`` reference tokens, concatenated along the sequence."""
    poses: Tensor
    """``[N, 4, 4]`` (6DoF) or ``[N, 4]`` (4DoF) CaPE poses of the references."""
    c2w: Tensor
    """``[N, 4, 4]`` the references' cameras in our convention."""


# ------------------------------------------------------------------------------------------
# reference encoder


def reference_preprocess(images: Tensor, size: int = ENCODER_SIZE) -> Tensor:
    """Reference images ``[N, 3, H, W]`` in [-1, 1] -> ConvNeXt input, as EscherNet: back to
    [0, 1], bicubic resize to 224 (antialiased, as torchvision's tensor ``Resize``), ImageNet
    mean/std."""
    x = (images.float() + 1.0) / 2.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = x.new_tensor(IMAGENET_STD)[None, :, None, None]
    return (x - mean) / std


def reference_tokens(encoder: nn.Module, pixel_values: Tensor) -> Tensor:
    """``[N, h*w, C]`` tokens of ConvNeXtV2's last stage through its final LayerNorm (EscherNet's
    ``CN_encoder``: the LayerNorm the stock model applies to the pooled vector, per token)."""
    hidden = encoder.encoder(encoder.embeddings(pixel_values))
    hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
    return encoder.layernorm(hidden.flatten(2).transpose(1, 2))


# ------------------------------------------------------------------------------------------
# weights


def check_eschernet_networks(parts: Dict[str, nn.Module], where: str) -> None:
    """Clear errors when the weights are not EscherNet's (4 input channels, ConvNeXt-width context)."""
    tokens = ("the image encoder's tokens", parts["image_encoder"].config.hidden_sizes[-1])
    check_unet(parts["unet"], where, "EscherNet", 4, tokens, "(an 8-channel UNet is Zero-1-to-3's: use zero123-guidance)")


ESCHERNET_WEIGHTS = register_weights(WeightsRecipe(
    "eschernet", "EscherNet",
    (*unet_and_vae(TINY_ESCHERNET_UNET), Part("image_encoder", "transformers.ConvNextV2Model", lambda o: tiny_convnext())),
    check=check_eschernet_networks,
    prepare=lambda parts: install_cape_attention(parts["unet"]),
    extra_patterns=tuple(f"{sub}/*.bin" for sub in ("unet", "vae", "image_encoder")),
))


# ------------------------------------------------------------------------------------------
# the guidance


@register("eschernet-guidance")
class EscherNetGuidance(ImagePriorGuidance):
    """EscherNet multi-view prior: M target views denoised jointly given N posed references.

    Its condition (:class:`EscherNetCondition`) is the references' ConvNeXt tokens and CaPE poses;
    the renders' cameras enter as CaPE poses of the target views, inside attention only.
    """

    @dataclass
    class Config(ImagePriorGuidance.Config):
        pretrained_model_name_or_path: str = "kxic/eschernet-6dof"
        """EscherNet weights: kxic/eschernet-6dof, kxic/eschernet-4dof, a local diffusers folder, tiny-random."""
        cape_type: CapeType = "6dof"
        """6dof (4x4 pose matrices; kxic/eschernet-6dof) | 4dof (rotary polar/azimuth/radius; -4dof)."""
        n_view: int = 4
        """Target views denoised jointly per object (consecutive in the batch, one timestep)."""
        shared_timestep: bool = True
        """One timestep for the whole batch: the target views attend to each other."""
        scene_scale: float = 1.0
        """Our distances times this = EscherNet's (its training cameras are 1.5 to 2.2 from the object)."""

        def validate(self) -> None:
            if self.scene_scale <= 0:
                raise FieldError("scene_scale", f"must be > 0, got {self.scene_scale}")

    cfg: Config
    weights = ESCHERNET_WEIGHTS
    condition_type = EscherNetCondition
    condition_hint = ("Use data_type: single-image-datamodule with image=front.png or references=views.yaml "
                      "and an image-to-3D system (it prepares the condition from the posed images).")

    def configure(self) -> None:
        super().configure()
        self._warned_radius = False

    # -- poses --------------------------------------------------------------------------------
    def cape_pose(self, c2w: Tensor) -> Tensor:
        """CaPE poses of our cameras ``[B, 4, 4]``: ``[B, 4, 4]`` (6DoF) or ``[B, 4]`` (4DoF)."""
        self._check_radius(c2w)
        if self.cfg.cape_type == "6dof":
            return eschernet_w2c(c2w, self.cfg.scene_scale).to(self.device)
        return eschernet_4dof_pose(c2w, self.cfg.scene_scale).to(self.device)

    def _check_radius(self, c2w: Tensor) -> None:
        radius = c2w[..., :3, 3].float().norm(dim=-1) * self.cfg.scene_scale
        lo, hi = RADIUS_RANGE
        if not self._warned_radius and (radius.min() < lo * 0.9 or radius.max() > hi * 1.1):
            self._warned_radius = True
            logger.warning(
                "EscherNet was trained with cameras %.1f to %.1f from the object; these are %.2f to %.2f "
                "(after scene_scale=%g). Set system.guidance.scene_scale so they fall in that range.",
                lo, hi, float(radius.min()), float(radius.max()), self.cfg.scene_scale,
            )

    # -- conditioning -------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_condition(self, images: Tensor, c2w: Tensor) -> EscherNetCondition:
        """The condition of references ``[N, H, W, 3]`` in [0, 1] (white background) taken by
        cameras ``c2w`` ``[N, 4, 4]`` (our convention)."""
        if images.shape[0] != c2w.shape[0]:
            raise ConfigError(f"{images.shape[0]} reference images but {c2w.shape[0]} reference cameras.")
        x = self.condition_pixels(images)
        tokens = reference_tokens(self.image_encoder, reference_preprocess(x).to(self.weights_dtype))
        return EscherNetCondition(
            images=((x + 1.0) / 2.0).permute(0, 2, 3, 1).float(),
            tokens=tokens.reshape(1, -1, tokens.shape[-1]).float(),
            poses=self.cape_pose(c2w.to(self.device)),
            c2w=c2w.float().to(self.device),
        )

    def predict_noise(
        self, x_t: Tensor, t: Tensor, condition: EscherNetCondition, target_poses: Tensor, n_view: int
    ) -> Tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` for noisy latents ``[B, 4, h, w]`` of ``B / n_view`` objects
        whose target views have CaPE poses ``target_poses`` (``[B, 4, 4]`` or ``[B, 4]``). The
        unconditional branch gets zero reference tokens with the same poses."""
        rows = x_t.shape[0]
        tokens = condition.tokens.to(self.device, self.weights_dtype).expand(rows, -1, -1)
        target = target_poses.to(self.device).repeat(2 * rows // len(target_poses), *([1] * (target_poses.dim() - 1)))
        reference = condition.poses.to(self.device)[None].expand(2 * rows, *condition.poses.shape)
        poses = CaPEPoses(self.cfg.cape_type, target, reference)
        eps_cond, eps_uncond = self.unet_branches(
            x_t, t, [UNetBranch(tokens), UNetBranch(torch.zeros_like(tokens))], num_views=n_view, poses=poses,
        )
        return eps_cond, eps_uncond

    def guided(self, condition: EscherNetCondition, target: Tensor, n_view: int, scale: float) -> NoisePredictor:
        """``predict(x_t, t) -> (guided eps, conditional eps)`` for target views with poses ``target``."""
        return classifier_free(lambda x_t, t: self.predict_noise(x_t, t, condition, target, n_view), scale)

    def guide(self, rgb: Tensor, condition: EscherNetCondition, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """``loss_sds`` for renders ``[B, H, W, 3]`` of ``B / n_view`` objects."""
        n_view = check_view_groups(rgb.shape[0], cameras.n_views, self.cfg.n_view, "the EscherNet guidance")
        latents = self.to_latents(rgb, rgb_as_latents)
        target = self.cape_pose(cameras.c2w.to(self.device))
        return self.distil(latents, self.guided(condition, target, n_view, self.cfg.guidance_scale), group=n_view)

    # -- sampling (python launch.py --sample) -------------------------------------------------
    def sample_cameras(self, condition: EscherNetCondition, offsets: Tensor) -> Tensor:
        """``c2w`` ``[M, 4, 4]`` at ``offsets`` ([delta elevation, delta azimuth]) from the first reference."""
        polar, azimuth, radius = spherical_coordinates(condition.c2w[0, :3, 3].float().cpu())
        elevation = (90.0 - math.degrees(float(polar))) + offsets[:, 0]
        azimuth_deg = math.degrees(float(azimuth)) + offsets[:, 1]
        return c2w_from_spherical(
            deg2rad(elevation.clamp(-89.0, 89.0)), deg2rad(azimuth_deg), torch.full_like(elevation, float(radius))
        )

    def view_predictor(self, condition: EscherNetCondition, offsets: Tensor, scale: float) -> NoisePredictor:
        """The views at ``offsets`` from the first reference, denoised jointly."""
        c2w = self.sample_cameras(condition, offsets).to(self.device)
        return self.guided(condition, self.cape_pose(c2w), len(c2w), scale)

    def condition_images(self, condition: EscherNetCondition) -> Tensor:
        return condition.images
