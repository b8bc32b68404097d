"""``python launch.py --config <recipe> --sample prompt=...``: images straight from the prior.

The quickest check that real weights loaded right: the recipe's guidance generates images for
the prompt, or novel views of the input image(s), with its own sampler (MVDream: the 4 views with
DDIM, as MVDream's ``t2i.py``; Zero-1-to-3 and EscherNet: views around the references), and they
are saved side by side as one grid, without any 3D optimisation.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from threestudio_like import find
from threestudio_like.config import ConfigError
from threestudio_like.utils import saving


def run_sample(cfg: Any, seed: int = 0) -> str:
    """Sample with the guidance of experiment config ``cfg``; returns the saved grid's path."""
    system = cfg.system
    if not system.get("guidance_type"):
        raise ConfigError("This recipe has no guidance to sample from.")
    guidance_cls = find(system.guidance_type)
    if not hasattr(guidance_cls, "sample"):
        raise ConfigError(f"{system.guidance_type} has no sampler; --sample works with MVDream, Zero-1-to-3 and EscherNet.")
    references = None
    if hasattr(guidance_cls, "prepare_condition") and cfg.get("data_type"):
        # image-conditioned priors: the recipe's data module loads, checks and frames the input
        # image(s) first, so that a bad image fails before any weights are loaded
        data = find(cfg.data_type)(cfg.data)
        references = data.reference_views() if hasattr(data, "reference_views") else None
    guidance = guidance_cls(system.get("guidance", {}))
    condition = None
    if system.get("prompt_processor_type"):
        pp_cfg = dict(system.get("prompt_processor", {}))
        if hasattr(guidance, "sample_prompts"):
            pp_cfg["prompt"], pp_cfg["negative_prompt"] = guidance.sample_prompts(pp_cfg.get("prompt", ""))
        condition = find(system.prompt_processor_type)(pp_cfg)()
    elif references is not None:
        condition = guidance.prepare_condition(references["cond_rgb"], references["c2w"])
    generator = torch.Generator().manual_seed(int(seed))
    images = guidance.sample(condition, generator=generator)
    path = os.path.join(cfg.trial_dir, "save", f"sample-seed{seed}.png")
    saving.save_image_grid(path, list(images))
    return path
