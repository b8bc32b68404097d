"""Base of image-conditioned latent priors: novel views of an object from posed input images.

Zero-1-to-3 (one image + relative camera) and EscherNet (N posed images, M jointly denoised
target views) share the shape of the problem: the data module hands the posed input images to
:meth:`~threestudio_like.guidance.base.BaseGuidance.prepare_condition`, which encodes them once
at ``image_size``; the guidance scores renders at other cameras against that condition; and
``--sample`` shows the inputs followed by views at offsets ``[delta elevation, delta azimuth]``
from the (first) input view (:meth:`ImagePriorGuidance.sample`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from threestudio_like.guidance.base import NoisePredictor
from threestudio_like.guidance.latent_diffusion import LatentDiffusionGuidance


class ImagePriorGuidance(LatentDiffusionGuidance):
    """A latent prior conditioned on posed images; subclasses say how views are predicted."""

    @dataclass
    class Config(LatentDiffusionGuidance.Config):
        guidance_scale: float = 3.0
        """CFG scale against the empty condition (Zero-1-to-3's and EscherNet's default: 3)."""
        image_size: int = 256
        """Image priors work at 256x256 (latents 32x32)."""

    cfg: Config
    conditioned_on_images = True
    sample_defaults = {"steps": 50, "guidance_scale": 3.0, "eta": 0.0,
                       "views": [[0.0, 90.0], [0.0, 180.0], [0.0, 270.0], [30.0, 0.0]]}
    """``--sample``: DDIM, CFG 3, four views around the (first) input."""

    def view_predictor(self, condition: Any, offsets: Tensor, scale: float) -> NoisePredictor:
        """The guided predictor of the views at ``offsets`` ``[M, 2]`` (degrees of elevation and
        azimuth from the first input view), for sampling them jointly."""
        raise NotImplementedError

    def condition_images(self, condition: Any) -> Tensor:
        """The input images ``[N, S, S, 3]`` of a condition, as the prior saw them."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, condition: Any, settings: Any, generator: Optional[torch.Generator] = None) -> Tensor:
        """The input images followed by the views at ``settings.views``: ``[N + M, S, S, 3]``."""
        offsets = torch.tensor([list(v) for v in settings.views], dtype=torch.float32).reshape(-1, 2)
        predict = self.view_predictor(condition, offsets, settings.guidance_scale)
        images = self.sample_images(lambda x_t, t: predict(x_t, t)[0], len(offsets), settings.steps, generator, settings.eta)
        return torch.cat([self.condition_images(condition).to(self.device), images])
