"""Run ``--sample`` for an experiment config: the quickest check that real weights loaded right.

The recipe's guidance generates images for the prompt (MVDream: the 4 views with DDIM, as its
``t2i.py``), or novel views of the input image(s) (Zero-1-to-3, EscherNet: views around the
references; Zero123++: its 3 x 2 six-view grid, :mod:`.zero123pp`), saved side by side as one grid,
without any 3D optimisation; RGBD priors (LDM3D)
write an RGB image, a 16-bit depth PNG and a coloured depth preview (:mod:`.rgbd`). A prior whose
``--sample`` is a whole pipeline (HawkI's aerial view) provides ``sample_pipeline`` and writes its
own files.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf

from threestudio_like import find
from threestudio_like.errors import ConfigError
from threestudio_like.models.rgbd import postprocess_rgbd
from threestudio_like.run_status import RunStatus
from threestudio_like.sampling.rgbd import RGBDSamples, read_rgbd, save_rgbd_samples, save_scene
from threestudio_like.utils import saving

GENERIC_DEFAULTS: Dict[str, Any] = {
    "steps": 50, "guidance_scale": 3.0, "eta": 0.0,
    "views": [[0.0, 90.0], [0.0, 180.0], [0.0, 270.0], [30.0, 0.0]],
    "elevation_deg": 15.0, "azimuth_start_deg": 0.0, "prompt_suffix": "", "negative_prompt": None,
    "height": None, "width": None, "scene": None, "scene_near": None, "scene_far": None, "scene_fovy_deg": None,
    "scene_frames": None, "image_path": None, "depth_path": None,
}


def sample_settings(sample_cfg: Any, prior_defaults: Dict[str, Any]) -> SimpleNamespace:
    """The recipe's ``sample:`` values where set, else the prior's defaults, else generic ones."""
    given = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(sample_cfg or {})).items() if v is not None}
    return SimpleNamespace(**{**GENERIC_DEFAULTS, **prior_defaults, **given})


def run_sample(cfg: Any, status: Optional[RunStatus] = None) -> str:
    """Sample with the guidance of experiment config ``cfg``; returns the saved grid's path."""
    system = cfg.system
    if not system.get("guidance_type"):
        raise ConfigError("This recipe has no guidance to sample from.")
    guidance_cls = find(system.guidance_type)
    pipeline = getattr(guidance_cls, "sample_pipeline", None)
    if pipeline is not None:  # a prior whose --sample is a whole pipeline writing its own files (HawkI)
        return pipeline(cfg, status)
    defaults = getattr(guidance_cls, "sample_defaults", None)
    if defaults is None:
        raise ConfigError(f"{system.guidance_type} has no sampler; --sample works with MVDream, Zero-1-to-3, "
                          f"Zero123++, EscherNet, LDM3D and HawkI.")
    settings = sample_settings(cfg.get("sample"), defaults)
    if settings.image_path:  # DepthFusion from a given RGBD image: no prior needed
        return _scene_from_files(cfg, settings, status)
    references = None
    if guidance_cls.conditioned_on_images:
        # the recipe's data module loads, checks and frames the input image(s) first, so that a
        # bad image fails before any weights are loaded
        data = find(cfg.data_type)(cfg.data) if cfg.get("data_type") else None
        if data is None or not hasattr(data, "reference_views"):
            raise ConfigError(f"{system.guidance_type} samples views of input images: use data_type: "
                              f"single-image-datamodule with image=... or references=....")
        references = data.reference_views()
    if status is not None:
        status.phase("sample")
    guidance = guidance_cls(system.get("guidance", {}))
    condition = None
    if system.get("prompt_processor_type"):
        pp_cfg = dict(system.get("prompt_processor", {}))
        pp_cfg["prompt"] = pp_cfg.get("prompt", "") + settings.prompt_suffix
        if settings.negative_prompt is not None:
            pp_cfg["negative_prompt"] = settings.negative_prompt
        condition = find(system.prompt_processor_type)(pp_cfg)()
    elif references is not None:
        condition = guidance.prepare_condition(references["cond_rgb"], references["c2w"])
    generator = torch.Generator().manual_seed(int(cfg.seed))
    images = guidance.sample(condition, settings, generator=generator)
    if isinstance(images, RGBDSamples):  # RGB, 16-bit depth and preview, as the RGBD pipeline writes them
        written = save_rgbd_samples(images, os.path.join(cfg.trial_dir, "save"), f"sample-seed{cfg.seed}")
        if settings.scene:
            rgb, depth = postprocess_rgbd(images.decoded[:1])
            written.update({k: [v] for k, v in save_scene(rgb[0], depth[0], settings, os.path.join(
                cfg.trial_dir, "save"), f"sample-seed{cfg.seed}-0").items()})
        if status is not None:
            for kind, paths in written.items():
                for i, path in enumerate(paths):
                    status.add_output("samples", path, f"{kind}-{i}")
        return written["rgb"][0]
    path = os.path.join(cfg.trial_dir, "save", f"sample-seed{cfg.seed}.png")
    saving.save_image_grid(path, list(images))
    if status is not None:
        status.add_output("samples", path)
    return path


def _scene_from_files(cfg: Any, settings: SimpleNamespace, status: Optional[RunStatus]) -> str:
    """``--sample image=rgb.png depth=depth16.png``: the DepthFusion scene of a given RGBD image."""
    rgb, depth = read_rgbd(settings.image_path, settings.depth_path)
    if status is not None:
        status.phase("sample")
    written = save_scene(rgb, depth, settings, os.path.join(cfg.trial_dir, "save"), "scene")
    if status is not None:
        for kind, path in written.items():
            status.add_output("samples", path, kind)
    return written["glb"]
