"""Backgrounds: the colour seen along rays that leave the scene.

A background maps unit ray directions ``[B, H, W, 3]`` to colours ``[B, H, W, C]``. The keyword
``n_views`` says how many consecutive images of the batch show the same object (multi-view
systems such as MVDream render 4 views per object); random-colour augmentation can then share one
colour across those views.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseModule
from threestudio_like.renderers.material import ColorActivation, get_color_activation


class BaseBackground(BaseModule):
    """Base class of backgrounds, with the shared random solid-colour augmentation."""

    @dataclass
    class Config(BaseModule.Config):
        n_output_dims: int = 3
        """Colour channels (match the material's)."""
        random_aug: bool = False
        """Training: sometimes replace the background by a random solid colour."""
        random_aug_prob: float = 0.5
        """Probability (per call) of the random solid-colour augmentation."""
        share_aug_bg: bool = False
        """Augmentation colour shared by the ``n_views`` views of one object (else one per image)."""

    cfg: Config

    def wants_random_aug(self) -> bool:
        """Draw whether this (training) call uses a random solid colour."""
        return self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob

    def random_colors(self, dirs: Tensor, n_views: int = 1) -> Tensor:
        """Random solid colours ``[B, H, W, C]``: one per image, or one per group of ``n_views``."""
        batch = dirs.shape[0]
        if torch.is_tensor(n_views):  # a collated batch may carry it as a tensor
            n_views = n_views.reshape(-1)[0].item() if n_views.numel() else 1
        n_views = max(int(n_views), 1) if self.cfg.share_aug_bg else 1
        n_groups = math.ceil(batch / n_views)
        colors = torch.rand(n_groups, self.cfg.n_output_dims, device=dirs.device, dtype=dirs.dtype)
        colors = colors.repeat_interleave(n_views, dim=0)[:batch]
        return colors[:, None, None, :].expand(*dirs.shape[:-1], -1)


@register("solid-color-background")
class SolidColorBackground(BaseBackground):
    """One constant colour, optionally learned."""

    @dataclass
    class Config(BaseBackground.Config):
        color: Tuple[float, ...] = (1.0, 1.0, 1.0)
        """The colour (``n_output_dims`` values)."""
        learned: bool = False
        """Optimise the colour (an ``nn.Parameter``) instead of keeping it fixed."""

    cfg: Config

    def configure(self) -> None:
        color = torch.as_tensor(list(self.cfg.color), dtype=torch.float32)
        if color.numel() != self.cfg.n_output_dims:
            raise ValueError(
                f"solid-color-background: color has {color.numel()} values but "
                f"n_output_dims is {self.cfg.n_output_dims}."
            )
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: Tensor, n_views: int = 1, **kwargs: Any) -> Tensor:
        """Colours ``[B, H, W, C]`` for directions ``[B, H, W, 3]``."""
        color = self.env_color.to(dirs).expand(*dirs.shape[:-1], -1)
        if self.wants_random_aug():
            return color * 0 + self.random_colors(dirs, n_views)
        return color


# Real spherical harmonics up to degree 2 (9 coefficients), the basis tiny-cuda-nn's
# "SphericalHarmonics" encoding with degree 3 evaluates.
_SH_C0 = 0.5 * math.sqrt(1.0 / math.pi)
_SH_C1 = 0.5 * math.sqrt(3.0 / math.pi)
_SH_C2 = (
    0.5 * math.sqrt(15.0 / math.pi),
    0.25 * math.sqrt(5.0 / math.pi),
    0.25 * math.sqrt(15.0 / math.pi),
)


class _SphericalHarmonics(nn.Module):
    """Real SH basis of unit directions ``[N, 3]`` -> ``[N, degree**2]`` (degree 1..3).

    Private to this module until ``threestudio_like.geometry.networks`` offers a shared encoding.
    """

    def __init__(self, degree: int = 3) -> None:
        super().__init__()
        if not 1 <= degree <= 3:
            raise ValueError(f"SH degree must be 1, 2 or 3, got {degree}.")
        self.degree = degree
        self.n_output_dims = degree**2

    def forward(self, dirs: Tensor) -> Tensor:
        x, y, z = dirs.unbind(-1)
        out = [torch.full_like(x, _SH_C0)]
        if self.degree > 1:
            out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
        if self.degree > 2:
            out += [
                _SH_C2[0] * x * y,
                -_SH_C2[0] * y * z,
                _SH_C2[1] * (3.0 * z * z - 1.0),
                -_SH_C2[0] * x * z,
                _SH_C2[2] * (x * x - y * y),
            ]
        return torch.stack(out, dim=-1)


def _vanilla_mlp(n_input: int, n_output: int, n_neurons: int, n_hidden_layers: int) -> nn.Sequential:
    """Bias-free ReLU MLP (threestudio's VanillaMLP layout)."""
    layers = []
    width = n_input
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, n_neurons, bias=False), nn.ReLU(inplace=True)]
        width = n_neurons
    layers.append(nn.Linear(width, n_output, bias=False))
    return nn.Sequential(*layers)


@register("neural-environment-map-background")
class NeuralEnvironmentMapBackground(BaseBackground):
    """Colour = activation(MLP(SH(direction))): a small learned environment map."""

    @dataclass
    class Config(BaseBackground.Config):
        color_activation: ColorActivation = "sigmoid"
        """Output activation: sigmoid | none | clamp."""
        sh_degree: int = 3
        """Spherical-harmonics encoding degree of the direction (degree**2 features)."""
        n_neurons: int = 16
        """MLP width."""
        n_hidden_layers: int = 2
        """MLP hidden layers."""
        eval_color: Optional[Tuple[float, ...]] = None
        """If set, the constant colour used in evaluation (validation/test renders)."""

    cfg: Config

    def configure(self) -> None:
        self.encoding = _SphericalHarmonics(self.cfg.sh_degree)
        self.network = _vanilla_mlp(
            self.encoding.n_output_dims,
            self.cfg.n_output_dims,
            self.cfg.n_neurons,
            self.cfg.n_hidden_layers,
        )
        self._activation = get_color_activation(self.cfg.color_activation)
        if self.cfg.eval_color is not None and len(self.cfg.eval_color) != self.cfg.n_output_dims:
            raise ValueError(
                f"neural-environment-map-background: eval_color has {len(self.cfg.eval_color)} "
                f"values but n_output_dims is {self.cfg.n_output_dims}."
            )

    def forward(self, dirs: Tensor, n_views: int = 1, **kwargs: Any) -> Tensor:
        """Colours ``[B, H, W, C]`` for unit directions ``[B, H, W, 3]``."""
        if not self.training and self.cfg.eval_color is not None:
            color = torch.as_tensor(list(self.cfg.eval_color), dtype=dirs.dtype, device=dirs.device)
            return color.expand(*dirs.shape[:-1], -1)
        if self.wants_random_aug():
            return self.random_colors(dirs, n_views)
        feats = self.encoding(dirs.reshape(-1, 3))
        color = self.network(feats).reshape(*dirs.shape[:-1], self.cfg.n_output_dims)
        return self._activation(color)
