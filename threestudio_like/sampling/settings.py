"""``--sample`` settings (the ``sample:`` section of an experiment config).

Unset (null) values take the prior's own defaults (its upstream demo's), then generic ones
(:func:`threestudio_like.sampling.run.sample_settings`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from threestudio_like.errors import FieldError, at_least


@dataclass
class SampleConfig:
    """``--sample`` settings: images straight from the prior. Unset (null) values take the
    prior's own defaults (its upstream demo's)."""

    steps: Optional[int] = None
    """DDIM steps (priors: 50)."""
    guidance_scale: Optional[float] = None
    """Classifier-free guidance scale (MVDream 10, Zero-1-to-3 and EscherNet 3)."""
    eta: Optional[float] = None
    """DDIM eta (Zero-1-to-3's demo 1.0, others 0)."""
    views: Optional[List[List[float]]] = None
    """Image priors: [delta elevation, delta azimuth] in degrees from the (first) input view, per view."""
    elevation_deg: Optional[float] = None
    """Text multi-view priors: elevation of the generated views (MVDream 15)."""
    azimuth_start_deg: Optional[float] = None
    """Text multi-view priors: azimuth of the first view (0 = the object's front)."""
    prompt_suffix: Optional[str] = None
    """Text priors: appended to the prompt (MVDream: ", 3d asset")."""
    negative_prompt: Optional[str] = None
    """Text priors: negative prompt while sampling (null: the recipe's own)."""
    height: Optional[int] = None
    """RGBD priors: image height in pixels, a multiple of 8 (null: the prior's image_size; ldm3d-pano 512)."""
    width: Optional[int] = None
    """RGBD priors: image width in pixels, a multiple of 8 (null: the prior's image_size; ldm3d-pano 1024)."""

    scene: Optional[str] = None
    """RGBD priors: also build a DepthFusion scene: pano (equirectangular -> spherical GLB + 360-degree
    video) | perspective (2.5D mesh GLB + orbit video); null: none."""
    scene_near: Optional[float] = None
    """DepthFusion: distance of the nearest depth (disparity 1); null: 1."""
    scene_far: Optional[float] = None
    """DepthFusion: distance of the farthest depth (disparity 0); null: 10."""
    scene_fovy_deg: Optional[float] = None
    """DepthFusion, perspective: vertical field of view of the image in degrees; null: 60."""
    scene_frames: Optional[int] = None
    """DepthFusion: frames of the scene's video; null: 60 (panorama), 40 (perspective orbit)."""
    image_path: Optional[str] = None
    """DepthFusion: an RGB image to build the scene from instead of sampling (``image=``)."""
    depth_path: Optional[str] = None
    """DepthFusion: its 16-bit depth PNG in LDM3D's convention (``depth=``)."""

    def validate(self) -> None:
        if self.steps is not None:
            at_least("steps", self.steps, 1)
        if self.scene_frames is not None:
            at_least("scene_frames", self.scene_frames, 1)
        if self.scene not in (None, "pano", "perspective"):
            raise FieldError("scene", f"must be pano, perspective or null, got {self.scene!r}")
        if bool(self.image_path) != bool(self.depth_path):
            raise FieldError("depth_path" if self.image_path else "image_path",
                             "is needed too: a DepthFusion scene takes image=rgb.png depth=depth16.png together")
        if self.scene_near is not None and self.scene_far is not None and not 0 < self.scene_near < self.scene_far:
            raise FieldError("scene_near", f"must be in (0, scene_far), got {self.scene_near} and {self.scene_far}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise FieldError(name, f"must be a positive multiple of 8, got {value}")
