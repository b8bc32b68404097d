"""Random weights for models built at toy size (``tiny-random``) or re-randomised in tests.

Upstream initialisations zero some layers (``proj_out``, output convolutions): a model built that
way hides broken attention. :func:`rerandomize_parameters` gives every parameter random values.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn


def rerandomize_parameters(modules: nn.Module | Iterable[nn.Module], seed: int = 0, gain: float = 1.0) -> None:
    """Overwrite every parameter with random values (no zero-initialised layer survives).

    Weights of linear/conv layers get ``N(0, gain^2 / fan_in)`` (activations keep their scale
    through deep nets), norm-layer scales ``1 + N(0, 0.1^2)``, and every other tensor
    (biases, embeddings) ``N(0, 0.1^2)``. Deterministic for a given ``seed``.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    generator = torch.Generator().manual_seed(seed)
    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)
    with torch.no_grad():
        for root in modules:
            for module in root.modules():
                for pname, param in module.named_parameters(recurse=False):
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                    if isinstance(module, norm_types) and pname == "weight":
                        value = 1.0 + 0.1 * noise
                    elif param.dim() >= 2 and not isinstance(module, nn.Embedding):
                        fan_in = param[0].numel()
                        value = noise * gain / math.sqrt(fan_in)
                    else:
                        value = 0.1 * noise
                    param.copy_(value.to(param.dtype))

