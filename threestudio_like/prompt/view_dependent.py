"""View-dependent prompts (DreamFusion) and Perp-Neg embeddings, as threestudio's prompt processor.

Directions by camera (later ones override): side (default), front (|azi| < front_threshold),
back (|azi| > 180 - back_threshold), overhead (elevation > overhead_threshold). The prompt of a
direction is ``"{prompt}, {d} view"`` (or ``"{d} view of {prompt}"`` with
``view_dependent_prompt_front``). Perp-Neg interpolates the positive embedding between front and
side (|azi| < 90) or side and back, with negative prompts and weights
``-(a exp(-b r) + c)`` from ``perp_neg_f_*``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings, StableDiffusionPromptProcessor

DIRECTIONS = ("side", "front", "back", "overhead")


def shifted_exponential_decay(a: float, b: float, c: float, r: float) -> float:
    """``a exp(-b r) + c`` (threestudio's ``shifted_expotional_decay``)."""
    return a * math.exp(-b * r) + c


def direction_index(elevation: Tensor, azimuth: Tensor, front: float = 45.0, back: float = 45.0,
                    overhead: float = 60.0) -> Tensor:
    """Index into :data:`DIRECTIONS` per camera (degrees)."""
    azi = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    idx = torch.zeros_like(azi, dtype=torch.long)
    idx[azi.abs() < front] = 1
    idx[azi.abs() > 180.0 - back] = 2
    idx[elevation > overhead] = 3
    return idx


@dataclass
class ViewSettings:
    """Where the direction bins start and how strongly Perp-Neg pushes away from the other views
    (threestudio's defaults); shared by the prompt processor's config and its embeddings."""

    front_threshold: float = 45.0
    """Azimuths within +-front_threshold of 0 are "front"."""
    back_threshold: float = 45.0
    """Azimuths within +-back_threshold of 180 are "back"."""
    overhead_threshold: float = 60.0
    """Elevations above this are "overhead"."""
    perp_neg_f_sb: Tuple[float, float, float] = (1.0, 0.5, -0.606)
    """Perp-Neg weight (a, b, c) of the side prompt against the back one."""
    perp_neg_f_fsb: Tuple[float, float, float] = (1.0, 0.5, 0.967)
    """Perp-Neg weight (a, b, c) of the front prompt against side-to-back views."""
    perp_neg_f_fs: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg weight (a, b, c) of the front prompt against the side one."""
    perp_neg_f_sf: Tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg weight (a, b, c) of the side prompt against the front one."""


@dataclass
class ViewDependentEmbeddings(PromptEmbeddings):
    """Prompt embeddings plus one per direction; chooses per camera."""

    direction_embeddings: Optional[Tensor] = None
    """``[4, L, D]`` in :data:`DIRECTIONS` order."""
    settings: Any = field(default_factory=ViewSettings)
    """The direction thresholds and Perp-Neg weights (:class:`ViewSettings` fields)."""

    def get_text_embeddings_vd(self, elevation: Tensor, azimuth: Tensor, device=None, dtype=None) -> Tensor:
        """``[2B, L, D]``: the direction's embedding per camera, then B unconditional ones."""
        s = self.settings
        idx = direction_index(elevation.cpu(), azimuth.cpu(), s.front_threshold, s.back_threshold, s.overhead_threshold)
        cond = self.direction_embeddings[idx]
        uncond = self.uncond_text_embeddings[None].expand(len(idx), -1, -1)
        return torch.cat([cond, uncond], 0).to(device=device, dtype=dtype)

    def get_text_embeddings_perp_neg(self, elevation: Tensor, azimuth: Tensor, device=None,
                                     dtype=None) -> Tuple[Tensor, Tensor]:
        """``([4B, L, D], [B, 2])``: [positive B, uncond B, negatives 2B (view-major)] and the
        negative weights, as threestudio's ``get_text_embeddings_perp_neg``."""
        side, front, back, over = self.direction_embeddings
        u = self.uncond_text_embeddings
        s = self.settings
        pos: List[Tensor] = []
        negs: List[Tensor] = []
        weights: List[List[float]] = []
        for ele, azi in zip(elevation.tolist(), azimuth.tolist()):
            azi = (azi + 180.0) % 360.0 - 180.0
            if ele > s.overhead_threshold:
                pos.append(over)
                negs += [u, u]
                weights.append([0.0, 0.0])
            elif abs(azi) < 90:
                r = 1 - abs(azi) / 90  # 1 = front, 0 = side
                pos.append(r * front + (1 - r) * side)
                negs += [side, back]
                weights.append([-shifted_exponential_decay(*s.perp_neg_f_fs, r),
                                -shifted_exponential_decay(*s.perp_neg_f_sf, 1 - r)])
            else:
                r = 2 - abs(azi) / 90  # 1 = side, 0 = back
                pos.append(r * side + (1 - r) * back)
                negs += [front, side]
                weights.append([-shifted_exponential_decay(*s.perp_neg_f_sb, r),
                                -shifted_exponential_decay(*s.perp_neg_f_fsb, r)])
        b = len(pos)
        emb = torch.cat([torch.stack(pos), u[None].expand(b, -1, -1), torch.stack(negs)], 0)
        return emb.to(device=device, dtype=dtype), torch.tensor(weights, device=device)


@register("view-dependent-prompt-processor")
class ViewDependentPromptProcessor(StableDiffusionPromptProcessor):
    """Stable Diffusion prompts with DreamFusion's view-dependent suffixes (cached like the base)."""

    @dataclass
    class Config(StableDiffusionPromptProcessor.Config, ViewSettings):
        prompt_side: Optional[str] = None
        """Override of the side-view prompt (default "{prompt}, side view")."""
        prompt_front: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None
        view_dependent_prompt_front: bool = False
        """Put the view first: "front view of {prompt}"."""

    cfg: Config

    def direction_prompts(self) -> Dict[str, str]:
        """The prompt of each direction."""
        out = {}
        for d in DIRECTIONS:
            override = getattr(self.cfg, f"prompt_{d}")
            if override:
                out[d] = override
            elif self.cfg.view_dependent_prompt_front:
                out[d] = f"{d} view of {self.cfg.prompt}"
            else:
                out[d] = f"{self.cfg.prompt}, {d} view"
        return out

    def __call__(self) -> ViewDependentEmbeddings:
        prompts = self.direction_prompts()
        embs = self.embeddings_for([self.cfg.prompt, self.cfg.negative_prompt, *prompts.values()])
        c = self.cfg
        return ViewDependentEmbeddings(c.prompt, c.negative_prompt, embs[0], embs[1], torch.stack(embs[2:]), c)
