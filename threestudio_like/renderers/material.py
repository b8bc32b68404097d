"""Materials: turn per-sample geometry features into colours.

A material is called by the renderer with flat per-sample tensors::

    material(features=[N, F], viewdirs=[N, 3], positions=[N, 3],
             shading_normal=[N, 3] or None, light_positions=[N, 3] or None, **kwargs) -> [N, C]

and exports albedo for mesh vertex colours with ``material.export(features) -> {"albedo": [N, 3]}``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseModule

SHADING_MODES = ("albedo", "diffuse", "textureless")
ColorActivation = Literal["sigmoid", "none", "identity", "clamp"]


def get_color_activation(name: str):
    """Activation by name: ``sigmoid`` | ``none`` | ``clamp`` (to [0, 1])."""
    if name == "sigmoid":
        return torch.sigmoid
    if name in ("none", "identity"):
        return lambda x: x
    if name == "clamp":
        return lambda x: x.clamp(0.0, 1.0)
    raise ValueError(f"Unknown colour activation '{name}' (sigmoid | none | clamp).")


class BaseMaterial(BaseModule):
    """Base class of materials; ``requires_normal`` asks the renderer for shading normals."""

    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    requires_normal: bool = False

    def forward(self, features: Tensor, **kwargs: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def export(self, features: Tensor, **kwargs: Any) -> Dict[str, Tensor]:
        """Per-point albedo ``[N, 3]`` in [0, 1] for mesh export."""
        raise NotImplementedError


@register("no-material")
class NoMaterial(BaseMaterial):
    """Colour = activation(first ``n_output_dims`` features); no lighting."""

    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        """Output channels (3 for RGB, 4 for Stable Diffusion latents)."""
        color_activation: ColorActivation = "sigmoid"
        """Applied to the features: sigmoid | none | clamp."""

    cfg: Config

    def configure(self) -> None:
        self._activation = get_color_activation(self.cfg.color_activation)

    def forward(self, features: Tensor, **kwargs: Any) -> Tensor:
        """Colour ``[N, n_output_dims]`` from features ``[N, F]`` (``F >= n_output_dims``)."""
        n = self.cfg.n_output_dims
        if features.shape[-1] < n:
            raise ValueError(
                f"no-material needs at least {n} feature channels, got {features.shape[-1]}; "
                f"set geometry.n_feature_dims >= material.n_output_dims."
            )
        return self._activation(features[..., :n])

    def export(self, features: Tensor, **kwargs: Any) -> Dict[str, Tensor]:
        color = self(features).clamp(0.0, 1.0)
        if color.shape[-1] < 3:
            raise ValueError("Exporting vertex colours needs at least 3 output channels.")
        return {"albedo": color[..., :3]}


@register("diffuse-with-point-light-material")
class DiffuseWithPointLightMaterial(BaseMaterial):
    """Lambertian albedo lit by one point light plus ambient light (DreamFusion shading).

    ``color = albedo * (ambient + diffuse * max(n . l, 0))`` with ``l`` the unit vector from the
    point to the light. In training a shading mode is drawn per call, as in threestudio:
    ``albedo`` with probability ``1 - diffuse_prob``, otherwise ``textureless`` (albedo = 1) with
    probability ``textureless_prob`` and ``diffuse`` else; before ``ambient_only_steps`` only
    ``albedo`` (ambient-only warm-up). Evaluation uses ``diffuse`` (``albedo`` during the
    warm-up). The ``shading`` and ``ambient_ratio`` keyword arguments override both.
    """

    @dataclass
    class Config(BaseMaterial.Config):
        ambient_light_color: Tuple[float, float, float] = (0.1, 0.1, 0.1)
        """Ambient light colour."""
        diffuse_light_color: Tuple[float, float, float] = (0.9, 0.9, 0.9)
        """Point light colour."""
        ambient_only_steps: int = 1000
        """Steps of albedo-only (ambient-only) warm-up."""
        diffuse_prob: float = 0.75
        """Training: probability of a lit (diffuse or textureless) render; else albedo."""
        textureless_prob: float = 0.5
        """Training: of the lit renders, the probability of textureless (white albedo)."""
        albedo_activation: ColorActivation = "sigmoid"
        """Activation of the first three features into albedo."""
        soft_shading: bool = False
        """Training: draw the diffuse share uniformly per call (ambient = 1 - diffuse)."""

    cfg: Config
    requires_normal: bool = True

    def configure(self) -> None:
        self.register_buffer(
            "ambient_light_color", torch.as_tensor(self.cfg.ambient_light_color, dtype=torch.float32)
        )
        self.register_buffer(
            "diffuse_light_color", torch.as_tensor(self.cfg.diffuse_light_color, dtype=torch.float32)
        )
        self._albedo_activation = get_color_activation(self.cfg.albedo_activation)
        self.global_step = 0
        self.ambient_only = False

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step
        self.ambient_only = global_step < self.cfg.ambient_only_steps

    def pick_shading(self) -> str:
        """The shading mode of one call when none is given (random in training)."""
        if self.training:
            if self.ambient_only or random.random() > self.cfg.diffuse_prob:
                return "albedo"
            if random.random() < self.cfg.textureless_prob:
                return "textureless"
            return "diffuse"
        return "albedo" if self.ambient_only else "diffuse"

    def forward(
        self,
        features: Tensor,
        positions: Tensor,
        shading_normal: Optional[Tensor] = None,
        light_positions: Optional[Tensor] = None,
        ambient_ratio: Optional[float] = None,
        shading: Optional[str] = None,
        **kwargs: Any,
    ) -> Tensor:
        """Shaded colour ``[N, 3]``; see the class docstring for the shading modes."""
        if shading_normal is None or light_positions is None:
            raise ValueError(
                "diffuse-with-point-light-material needs shading normals and light positions: "
                "use a geometry with normals (e.g. normal_type analytic or finite_difference)."
            )
        albedo = self._albedo_activation(features[..., :3])
        if ambient_ratio is not None:
            diffuse = torch.full_like(self.diffuse_light_color, 1.0 - float(ambient_ratio))
            ambient = torch.full_like(self.ambient_light_color, float(ambient_ratio))
        elif self.training and self.cfg.soft_shading:
            diffuse = torch.full_like(self.diffuse_light_color, random.random())
            ambient = 1.0 - diffuse
        else:
            diffuse, ambient = self.diffuse_light_color, self.ambient_light_color
        light_dirs = F.normalize(light_positions - positions, dim=-1)
        n_dot_l = (shading_normal * light_dirs).sum(-1, keepdim=True).clamp(min=0.0)
        textureless = n_dot_l * diffuse.to(features) + ambient.to(features)

        shading = shading or self.pick_shading()
        # The "* 0" terms keep every input in the graph (unused-parameter checks in DDP).
        if shading == "albedo":
            return albedo + textureless * 0
        if shading == "textureless":
            return albedo * 0 + textureless
        if shading == "diffuse":
            return albedo.clamp(0.0, 1.0) * textureless
        raise ValueError(f"Unknown shading '{shading}' ({' | '.join(SHADING_MODES)}).")

    def export(self, features: Tensor, **kwargs: Any) -> Dict[str, Tensor]:
        return {"albedo": self._albedo_activation(features[..., :3]).clamp(0.0, 1.0)}
