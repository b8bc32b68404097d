"""``python launch.py --config <recipe> --sample prompt=...``: images straight from the prior.

The quickest check that real weights loaded right: the recipe's guidance generates images for
the prompt with its own sampler (MVDream: the 4 views with DDIM, as MVDream's ``t2i.py``), and
they are saved side by side as one grid, without any 3D optimisation.
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
    guidance = find(system.guidance_type)(system.get("guidance", {}))
    if not hasattr(guidance, "sample"):
        raise ConfigError(f"{system.guidance_type} has no sampler; --sample works with text priors such as MVDream.")
    condition = None
    if system.get("prompt_processor_type"):
        pp_cfg = dict(system.get("prompt_processor", {}))
        if hasattr(guidance, "sample_prompts"):
            pp_cfg["prompt"], pp_cfg["negative_prompt"] = guidance.sample_prompts(pp_cfg.get("prompt", ""))
        condition = find(system.prompt_processor_type)(pp_cfg)()
    generator = torch.Generator().manual_seed(int(seed))
    images = guidance.sample(condition, generator=generator)
    path = os.path.join(cfg.trial_dir, "save", f"sample-seed{seed}.png")
    saving.save_image_grid(path, list(images))
    return path
