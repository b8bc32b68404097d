"""Where HawkI's guidance image comes from: a small registry of sources.

A source turns the input photo ``[H, W, 3]`` (in [0, 1]) and the requested aerial pose into the
image that stages (c)-(d) fit: ``source(image, request) -> [S, S, 3]``.

* ``ipm``: HawkI's own baseline, the fixed homography + rotation (:mod:`.ipm`);
* ``zero123``: Zero-1-to-3's novel view at the requested elevation and azimuth (the photo taken
  at ``input_elevation_deg``, azimuth 0), sampled with DDIM as ``--sample`` does;
* ``zero123pp``: the Zero123++ view nearest the requested pose (:func:`nearest_view` over its
  six fixed views, :data:`ZERO123PP_VIEWS` for v1.2), sampled as its ``--sample`` does.

Each source's own settings are the recipe's ``<source>_*`` fields, passed without the prefix in
:attr:`ViewRequest.options` (e.g. ``zero123pp_steps`` -> ``steps``).

A new source is one function registered with :func:`guidance_image_source`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from threestudio_like.cameras import c2w_from_spherical
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.zero123 import Zero123Guidance
from threestudio_like.guidance.zero123pp import LAYOUTS, load_zero123pp
from threestudio_like.hawki.ipm import ipm_image, resize_image
from threestudio_like.sampling.zero123pp import sample_six_views


@dataclass
class ViewRequest:
    """What a source needs besides the photo."""

    elevation_deg: float
    """Requested elevation of the aerial view (90 = straight down)."""
    azimuth_deg: float
    """Requested azimuth, relative to the photo's (0 = the photo's side)."""
    input_elevation_deg: float
    """Elevation at which the photo was taken (0 = ground level)."""
    size: int
    """Side of the returned image in pixels."""
    seed: int
    options: Dict[str, object]
    """The source's own settings (weights, steps, CFG scale)."""


Source = Callable[[Tensor, ViewRequest], Tensor]
GUIDANCE_IMAGE_SOURCES: Dict[str, Source] = {}

ZERO123PP_VIEWS: Tuple[Tuple[float, float], ...] = tuple(
    zip(LAYOUTS["v1.2"].elevations_deg, LAYOUTS["v1.2"].azimuths_deg))
"""Zero123++ v1.2's six views: (absolute elevation, azimuth relative to the input) in degrees."""


def guidance_image_source(name: str) -> Callable[[Source], Source]:
    """Decorator: register a guidance-image source under ``name``."""

    def decorator(fn: Source) -> Source:
        GUIDANCE_IMAGE_SOURCES[name] = fn
        return fn

    return decorator


def make_guidance_image(name: str, image: Tensor, request: ViewRequest) -> Tensor:
    """The guidance image ``[S, S, 3]`` of source ``name``."""
    source = GUIDANCE_IMAGE_SOURCES.get(name)
    if source is None:
        known = ", ".join(sorted(GUIDANCE_IMAGE_SOURCES))
        raise ConfigError(f"system.guidance.guidance_image={name!r} is not available in this installation "
                          f"(available: {known}).")
    out = source(image, request)
    return resize_image(out, request.size).clamp(0.0, 1.0) if out.shape[0] != request.size else out


def angular_distance_deg(a: Tuple[float, float], b: Tuple[float, float]) -> float:
    """Great-circle angle between two (elevation, azimuth) directions, in degrees."""
    (e1, a1), (e2, a2) = [(math.radians(e), math.radians(az)) for e, az in (a, b)]
    cos = math.sin(e1) * math.sin(e2) + math.cos(e1) * math.cos(e2) * math.cos(a1 - a2)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def nearest_view(poses: Sequence[Tuple[float, float]], elevation_deg: float, azimuth_deg: float) -> int:
    """Index of the (elevation, azimuth) pose nearest the requested direction on the sphere."""
    distances: List[float] = [angular_distance_deg(p, (elevation_deg, azimuth_deg)) for p in poses]
    return min(range(len(poses)), key=distances.__getitem__)


@guidance_image_source("ipm")
def ipm_source(image: Tensor, request: ViewRequest) -> Tensor:
    """HawkI's homography pseudo-aerial image (the requested pose is not used: the warp is fixed)."""
    return ipm_image(image, request.size)


@guidance_image_source("zero123")
def zero123_source(image: Tensor, request: ViewRequest) -> Tensor:
    """Zero-1-to-3's view of the photo from the requested pose (exactly that pose: it takes any)."""
    options = dict(request.options)
    guidance = Zero123Guidance({"pretrained_model_name_or_path": options.pop("model_name_or_path"),
                                "image_size": options.pop("image_size", 256)})
    c2w = c2w_from_spherical(torch.tensor([request.input_elevation_deg]), torch.tensor([0.0]), torch.tensor([2.0]))
    condition = guidance.prepare_condition(image[None].float(), c2w)
    settings = SimpleNamespace(views=[[request.elevation_deg - request.input_elevation_deg, request.azimuth_deg]],
                               steps=int(options.get("steps", 50)), guidance_scale=float(options.get("guidance_scale", 3.0)),
                               eta=float(options.get("eta", 1.0)))
    views = guidance.sample(condition, settings, generator=torch.Generator().manual_seed(request.seed))
    return views[-1].float().cpu()


@guidance_image_source("zero123pp")
def zero123pp_source(image: Tensor, request: ViewRequest) -> Tensor:
    """Of Zero123++'s six views of the photo (sampled with its Euler-ancestral sampler and CFG),
    the one nearest the requested pose (the photo at azimuth 0)."""
    options = request.options
    model = load_zero123pp(str(options["model_name_or_path"]), tile_size=int(options.get("tile_size", 320)))
    views, azimuths, elevations = sample_six_views(
        model, image.permute(2, 0, 1).float(), steps=int(options.get("steps", 28)),
        guidance_scale=float(options.get("guidance_scale", 4.0)),
        generator=torch.Generator().manual_seed(request.seed))
    poses = list(zip(elevations.tolist(), azimuths.tolist()))
    return zero123pp_view(views.permute(0, 2, 3, 1), request, poses=poses).float().cpu()


def zero123pp_view(views: Tensor, request: ViewRequest, input_azimuth_deg: float = 0.0,
                   poses: Optional[Sequence[Tuple[float, float]]] = None) -> Tensor:
    """Of Zero123++'s six views ``[6, H, W, 3]``, the one nearest the requested pose."""
    poses = poses or ZERO123PP_VIEWS
    absolute = [(e, input_azimuth_deg + a) for e, a in poses]
    return views[nearest_view(absolute, request.elevation_deg, request.azimuth_deg)]
