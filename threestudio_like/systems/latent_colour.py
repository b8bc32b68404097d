"""Surface colours for NeRFs that render diffusion latents (Zero-1-to-3 SJC, ``render_latents``).

Such a field stores, per point, 4 latent features ``f`` in [0, 1] (the latent is ``2f - 1``), not
a colour: its renders only become images through the VAE decoder, which works on whole latent
images (convolutions, 8x upsampling), so there is no exact per-point colour. The mesh needs one.
We use the decoder itself as the teacher: render a few orbit views in latent space, decode them,
average-pool each decoded image back to the latent grid (an 8x8 block per latent pixel) and fit
an affine map ``rgb = f A + b`` (``A`` 4x3, ``b`` 3) by weighted least squares over the pixels,
weighted by opacity so that the background latent does not pull the fit:

    theta = argmin sum_i w_i |[f_i, 1] theta - rgb_i|^2 + lambda |theta|^2

The VAE's decoder is close to affine in a pixel's mean colour (the reason the well-known linear
"latent preview" of Stable Diffusion works), so the map gives the colours the decoded turntable
shows, for any VAE. The residual of the fit is reported with the export.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LatentToRGB:
    """An affine map from latent features ``[..., C]`` in [0, 1] to RGB ``[..., 3]``."""

    weight: Tensor
    """``[C, 3]``."""
    bias: Tensor
    """``[3]``."""
    residual_rms: float
    """Root-mean-square error of the fit on its own (weighted) pixels, in RGB units."""
    n_pixels: int

    def __call__(self, features: Tensor) -> Tensor:
        w, b = self.weight.to(features), self.bias.to(features)
        return (features @ w + b).clamp(0.0, 1.0)


def fit_latent_to_rgb(features: Tensor, rgb: Tensor, weights: Tensor, ridge: float = 1e-4) -> LatentToRGB:
    """Weighted ridge least squares of ``rgb [N, 3] ~ features [N, C] A + b`` (see the module)."""
    features, rgb, weights = features.double(), rgb.double(), weights.double().clamp_min(0)
    x = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
    xw = x * weights[:, None]
    gram = x.T @ xw + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    theta = torch.linalg.solve(gram, xw.T @ rgb)
    err = ((x @ theta).clamp(0, 1) - rgb).pow(2).sum(-1)
    rms = float((err * weights).sum() / weights.sum().clamp_min(1e-12)) ** 0.5
    return LatentToRGB(theta[:-1].float(), theta[-1].float(), rms, int((weights > 0).sum()))


def pool_to(images: Tensor, height: int, width: int) -> Tensor:
    """Decoded images ``[B, H, W, 3]`` averaged onto a ``height x width`` grid."""
    return F.adaptive_avg_pool2d(images.permute(0, 3, 1, 2), (height, width)).permute(0, 2, 3, 1)


class LatentColourMaterial(torch.nn.Module):
    """A material whose exported albedo is its latent features mapped to RGB (for the exporter)."""

    def __init__(self, material: Any, mapping: LatentToRGB) -> None:
        super().__init__()
        self.material = material
        self.mapping = mapping

    def export(self, features: Tensor, **kwargs: Any) -> Dict[str, Tensor]:
        """``albedo``: the material's latent output (all its channels) mapped to RGB."""
        return {"albedo": self.mapping(self.material(features, **kwargs).float())}
