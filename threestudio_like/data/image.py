"""Image conditioning: posed RGBA reference image(s), plus random views around the object.

The preprocessing functions are shared by every image-conditioned recipe (Zero-1-to-3,
multi-image priors such as EscherNet):

* :func:`load_rgba` reads an RGBA image (or an RGB image with a separate mask) as straight
  (non-premultiplied) RGBA in [0, 1], with clear errors for missing files, images without alpha
  and empty masks;
* :func:`resize_rgba` resizes it, optionally re-centring the object: the alpha bounding box is
  scaled so that its longer side spans ``object_fraction`` of the frame and placed in the centre
  (Zero-1-to-3's ``load_and_preprocess``: the object fits 200 px of a 256 px frame). Colours are
  resampled premultiplied, so whatever hides under alpha = 0 never bleeds into the edges;
* :func:`composite` puts it on a solid (white) background, as the models were trained.

The ``single-image-datamodule`` takes either one image, ``data.image_path`` (``image=``), seen
from the default camera (``default_elevation_deg``, ``default_azimuth_deg``,
``default_camera_distance``, ``default_fovy_deg``), or N posed images, ``data.references``
(``references=``): a JSON/YAML file or an inline list, parsed by :func:`parse_references`::

    - {image: front.png, elevation: 0, azimuth: 0, distance: 2.0}
    - {image: side.png, mask: side_mask.png, azimuth: 90, fovy: 40}   # omitted: default_*
    - {image: top.png, c2w: [[...], [...], [...], [0, 0, 0, 1]]}     # our convention

or the parallel lists ``{images: [...], elevations: [...], azimuths: [...], distances: [...],
masks?: [...], fovys?: [...]}`` (or ``c2ws: [...]``). Relative paths are relative to the
references file's folder. ``c2w`` is a camera-to-world rigid transform in the convention of
:mod:`threestudio_like.cameras` (OpenGL axes, world z up); the rays of such a view come from
the matrix itself. With ``recenter`` each image is re-centred independently (right for a single
view, not for posed multi-view photos that share a framing: set ``recenter: false`` there).

Training batches hold all N reference views, batched on dim 0: ``rays_o``/``rays_d``
``[N, H, W, 3]``, ``c2w``/``mvp_mtx`` ``[N, 4, 4]``, ``camera_positions``/``light_positions``
``[N, 3]``, ``elevation``/``azimuth``/``camera_distances``/``fovy`` ``[N]`` (degrees),
``height``, ``width``, ``rgb`` ``[N, H, W, 3]`` (white background), ``mask`` ``[N, H, W, 1]``,
the conditioning images ``cond_rgb`` ``[N, S, S, 3]`` and ``cond_mask`` ``[N, S, S, 1]`` at
``S = condition_size``, ``n_references = N``, ``n_views = 1``, and a batch of random cameras
under ``random_camera``. The render resolution follows ``height``/``width`` lists switched at
``resolution_milestones``. :meth:`SingleImageDataModule.reference_views` gives the posed
conditioning images alone. Validation and test use the random-camera configuration's orbit.
"""
from __future__ import annotations

import bisect
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from threestudio_like import register
from threestudio_like.base import Updateable
from threestudio_like.cameras import (
    c2w_from_spherical,
    deg2rad,
    mvp_matrix,
    projection_matrix,
    rays_for_cameras,
    spherical_coordinates,
)
from threestudio_like.config import parse_structured
from threestudio_like.errors import ConfigError, ImageLoadError, did_you_mean
from threestudio_like.data.random_camera import (
    OrbitDataset,
    RandomCameraConfig,
    RandomCameraIterableDataset,
    _as_list,
)

ZERO123_OBJECT_FRACTION = 200.0 / 256.0
"""Zero-1-to-3's framing: the object's longer side spans 200 of 256 pixels."""


def load_rgba(image_path: str, mask_path: Optional[str] = None) -> Tensor:
    """Straight RGBA ``[H, W, 4]`` float in [0, 1] from an RGBA image or an RGB image + mask.

    The mask (any image of the same size; its alpha channel if it has one, else its grey
    level) replaces the image's alpha. Raises :class:`ImageLoadError` for a missing or
    unreadable file, an image without alpha and no mask, a fully opaque alpha and an empty mask.
    """
    from PIL import Image

    def open_image(path: str, what: str) -> "Image.Image":
        if not path:
            raise ImageLoadError(
                f"No {what} given: set data.image_path (or pass image=path/to/object.png), or give "
                f"several posed images with data.references (references=path/to/views.yaml)."
            )
        if not os.path.isfile(path):
            raise ImageLoadError(f"{what.capitalize()} not found: {os.path.abspath(path)}.")
        try:
            img = Image.open(path)
            img.load()
        except Exception as exc:  # truncated or not an image
            raise ImageLoadError(f"Could not read the {what} {path}: {exc}.") from None
        return img

    img = open_image(image_path, "image")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if mask_path:
        mask_img = open_image(mask_path, "mask")
        if mask_img.size != img.size:
            raise ImageLoadError(
                f"The mask {mask_path} is {mask_img.size[0]}x{mask_img.size[1]} but the image "
                f"{image_path} is {img.size[0]}x{img.size[1]}: they must have the same size."
            )
        if mask_img.mode in ("RGBA", "LA", "PA"):
            mask = np.asarray(mask_img.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        else:
            mask = np.asarray(mask_img.convert("L"), dtype=np.float32) / 255.0
        rgba[..., 3] = mask
        source = f"mask {mask_path}"
    elif not has_alpha:
        raise ImageLoadError(
            f"The image {image_path} has no alpha channel, so the object cannot be told from the "
            f"background. Pass an RGBA image with the background transparent (e.g. segmented with "
            f"rembg or carvekit), or a mask: data.mask_path=path/to/mask.png."
        )
    else:
        source = f"alpha channel of {image_path}"
    alpha = rgba[..., 3]
    if not (alpha > 0.5).any():
        raise ImageLoadError(f"The {source} is empty: no pixel has alpha > 0.5, so there is no object.")
    if mask_path is None and (alpha > 0.5).all():
        raise ImageLoadError(
            f"The {source} is fully opaque: the object is not segmented. Remove the background "
            f"(transparent pixels) or pass data.mask_path=path/to/mask.png."
        )
    return torch.from_numpy(rgba)


def alpha_bbox(alpha: Tensor, threshold: float = 0.5) -> Tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (exclusive) of the pixels with ``alpha > threshold``."""
    rows = torch.nonzero((alpha > threshold).any(dim=1)).flatten()
    cols = torch.nonzero((alpha > threshold).any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ImageLoadError("The mask is empty: no pixel has alpha > 0.5.")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _resample(premultiplied: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bilinear resize of ``[h, w, 4]`` premultiplied RGBA."""
    x = premultiplied.permute(2, 0, 1)[None]
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0.0, 1.0)


def resize_rgba(
    rgba: Tensor, height: int, width: int, recenter: bool = True, object_fraction: float = ZERO123_OBJECT_FRACTION
) -> Tensor:
    """Straight RGBA ``[height, width, 4]`` from straight RGBA ``[h, w, 4]``.

    With ``recenter`` the object's alpha bounding box keeps its aspect ratio, its longer side
    becomes ``object_fraction * min(height, width)`` pixels and its centre the image centre;
    otherwise the whole image is resized.
    """
    premultiplied = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1)
    if recenter:
        if not 0.0 < object_fraction <= 1.0:
            raise ConfigError(f"data.object_fraction must be in (0, 1], got {object_fraction}.")
        top, left, bottom, right = alpha_bbox(rgba[..., 3])
        crop = premultiplied[top:bottom, left:right]
        scale = object_fraction * min(height, width) / max(bottom - top, right - left)
        box_h = max(1, min(height, round((bottom - top) * scale)))
        box_w = max(1, min(width, round((right - left) * scale)))
        out = torch.zeros(height, width, 4, dtype=rgba.dtype)
        y0, x0 = (height - box_h) // 2, (width - box_w) // 2
        out[y0 : y0 + box_h, x0 : x0 + box_w] = _resample(crop, box_h, box_w)
    else:
        out = _resample(premultiplied, height, width)
    alpha = out[..., 3:]
    straight = torch.where(alpha > 1e-6, out[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(out[..., :3]))
    return torch.cat([straight.clamp(0.0, 1.0), alpha], dim=-1)


def composite(rgba: Tensor, background: Sequence[float] = (1.0, 1.0, 1.0)) -> Tensor:
    """RGB ``[..., 3]`` of straight RGBA ``[..., 4]`` over a solid background (white default)."""
    bg = rgba.new_tensor(list(background))
    return rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])


def load_reference_image(
    image_path: str,
    height: int,
    width: int,
    mask_path: Optional[str] = None,
    recenter: bool = True,
    object_fraction: float = ZERO123_OBJECT_FRACTION,
) -> Dict[str, Tensor]:
    """``rgb`` (white background) ``[1, H, W, 3]``, ``alpha`` and ``mask`` (alpha > 0.5)
    ``[1, H, W, 1]`` of an input image, loaded and framed as above."""
    rgba = resize_rgba(load_rgba(image_path, mask_path), height, width, recenter, object_fraction)
    return {
        "rgb": composite(rgba)[None],
        "alpha": rgba[None, ..., 3:],
        "mask": (rgba[None, ..., 3:] > 0.5).float(),
    }


# ------------------------------------------------------------------------------------------
# posed reference images

REFERENCE_KEYS = ("image", "mask", "elevation", "azimuth", "distance", "fovy", "c2w")
"""Keys of one ``data.references`` entry."""

PARALLEL_KEYS = {
    "images": "image", "masks": "mask", "elevations": "elevation", "azimuths": "azimuth",
    "distances": "distance", "fovys": "fovy", "c2ws": "c2w",
}
"""Keys of the parallel-lists form of ``data.references`` -> the entry key they fill."""

_SPHERICAL_KEYS = ("elevation", "azimuth", "distance")
_ENTRY_EXAMPLE = "- {image: front.png, elevation: 0, azimuth: 0, distance: 2.0}"
_C2W_HELP = (
    "c2w must be a camera-to-world rigid transform in the project's convention (OpenGL camera "
    "axes: columns right, up, back = minus the look direction, and the position; world z up; "
    "see threestudio_like.cameras). An OpenCV/COLMAP camera (x right, y down, z forward) needs "
    "its 2nd and 3rd columns negated; a world-to-camera matrix needs inverting."
)


@dataclass
class ReferenceView:
    """One posed reference image, as parsed from ``data.image_path`` or ``data.references``."""

    image: str
    """Image path (resolved: relative to the references file's folder)."""
    mask: Optional[str]
    """Optional mask path replacing the image's alpha."""
    c2w: Tensor
    """Camera-to-world ``[4, 4]`` (float32) in the convention of :mod:`threestudio_like.cameras`."""
    elevation_deg: float
    azimuth_deg: float
    distance: float
    """Spherical coordinates of the camera position (derived from ``c2w`` for c2w entries)."""
    fovy_deg: float
    from_c2w: bool
    """Whether the pose was given as a c2w matrix (else as elevation/azimuth/distance)."""
    where: str
    """Where it was given, for messages: ``entry 1 of references file views.yaml``."""


def spherical_from_position(position: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Elevation, azimuth (degrees) and distance ``[B]`` of camera positions ``[B, 3]``.

    The inverse of :func:`threestudio_like.cameras.spherical_to_position` (azimuth in (-180, 180]).
    """
    polar, azimuth, distance = spherical_coordinates(position)
    return 90.0 - torch.rad2deg(polar), torch.rad2deg(azimuth), distance


def check_rigid_c2w(c2w: Any, where: str = "c2w", tol: float = 1e-3) -> Tensor:
    """A ``4x4`` (or ``3x4``) camera-to-world matrix as a float32 ``[4, 4]`` tensor, checked.

    Raises :class:`ConfigError` naming ``where`` for a wrong shape, non-finite values, a bottom
    row other than ``[0, 0, 0, 1]``, a rotation part that is not orthonormal within ``tol`` or
    whose determinant is not +1 (a reflection).
    """
    try:
        m = np.asarray(c2w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: c2w must be a 4x4 (or 3x4) nested list of numbers, got {c2w!r}."
        ) from None
    if m.shape == (3, 4):
        m = np.concatenate([m, np.array([[0.0, 0.0, 0.0, 1.0]])], axis=0)
    if m.shape != (4, 4):
        raise ConfigError(
            f"{where}: c2w must be a 4x4 (or 3x4) nested list of numbers (rows), got shape "
            f"{'x'.join(map(str, m.shape)) or 'scalar'}."
        )
    if not np.isfinite(m).all():
        raise ConfigError(f"{where}: c2w has non-finite values (NaN or inf): {m.tolist()}.")
    if np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 1e-6:
        raise ConfigError(
            f"{where}: the bottom row of c2w is {m[3].tolist()}, it must be [0, 0, 0, 1] "
            f"(is it a projection matrix?). {_C2W_HELP}"
        )
    rot = m[:3, :3]
    error = np.abs(rot.T @ rot - np.eye(3)).max()
    if error > tol:
        raise ConfigError(
            f"{where}: the rotation part (upper-left 3x3) of c2w is not orthonormal "
            f"(max |R^T R - I| = {error:.3g} > {tol:g}): the matrix is scaled or sheared, not a "
            f"rigid transform. {_C2W_HELP}"
        )
    det = float(np.linalg.det(rot))
    if abs(det - 1.0) > tol:
        raise ConfigError(
            f"{where}: the rotation part of c2w has determinant {det:.4g}, it must be +1: the "
            f"matrix mirrors an axis (left-handed camera frame). {_C2W_HELP}"
        )
    return torch.tensor(m, dtype=torch.float32)


def _closest_hint(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: '{key}' must be finite, got {value!r}.")
    return float(value)


def _read_references_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ConfigError(
            f"References file not found: {os.path.abspath(path)}. Set data.references "
            f"(references=...) to a JSON or YAML file listing the images and their cameras, e.g. "
            f"{_ENTRY_EXAMPLE} (one line per image), or give them as an inline list in the config."
        )
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
        if path.lower().endswith(".json"):
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # unreadable, not JSON / YAML
        raise ConfigError(
            f"Could not read the references file {path}: {exc}. It must be JSON (.json) or YAML: a "
            f"list of entries like {_ENTRY_EXAMPLE}, or a mapping of parallel lists "
            f"{{images: [...], elevations: [...], azimuths: [...], distances: [...]}}."
        ) from None


def _entries_from_parallel_lists(data: Dict[Any, Any], source: str) -> List[Dict[str, Any]]:
    for key in data:
        if key not in PARALLEL_KEYS:
            raise ConfigError(
                f"{source}: unknown key '{key}' in the parallel-lists form.{_closest_hint(str(key), PARALLEL_KEYS)} "
                f"Valid keys: {', '.join(PARALLEL_KEYS)}."
            )
    if not isinstance(data.get("images"), (list, tuple)):
        raise ConfigError(
            f"{source}: the mapping form needs 'images: [...]' (with elevations/azimuths/distances "
            f"or c2ws lists, one value per image); or use a list of entries like {_ENTRY_EXAMPLE}."
        )
    if "c2ws" in data and any(k in data for k in ("elevations", "azimuths", "distances")):
        raise ConfigError(
            f"{source}: give either 'c2ws' or 'elevations'/'azimuths'/'distances', not both."
        )
    lists: Dict[str, list] = {}
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            lists[key] = list(value)
        elif key in ("elevations", "azimuths", "distances", "fovys") and isinstance(value, (int, float)):
            continue  # a single number applies to every image
        else:
            raise ConfigError(f"{source}: '{key}' must be a list (one value per image), got {value!r}.")
    counts = {k: len(lists[k]) for k in PARALLEL_KEYS if k in lists}  # images first
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in counts.items())
        raise ConfigError(
            f"{source}: the parallel lists have different lengths ({detail}); give one value per "
            f"image ({counts['images']} images)."
        )
    entries = []
    for i in range(counts["images"]):
        entry: Dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            entry[PARALLEL_KEYS[key]] = lists[key][i] if key in lists else value
        entries.append(entry)
    return entries


def parse_references(
    references: Any,
    default_elevation_deg: float = 0.0,
    default_azimuth_deg: float = 0.0,
    default_camera_distance: float = 2.0,
    default_fovy_deg: float = 49.1,
) -> List[ReferenceView]:
    """Parse ``data.references``: a JSON/YAML file path, or an inline list (or mapping).

    Accepted forms (in the file, or inline):

    * a list of entries ``{image, mask?, elevation?, azimuth?, distance?, fovy?}`` (degrees;
      omitted values take the ``default_*`` ones) or ``{image, mask?, c2w, fovy?}`` with ``c2w`` a
      4x4 (or 3x4) camera-to-world matrix in the convention of :mod:`threestudio_like.cameras`;
    * a mapping of parallel lists ``{images, elevations?, azimuths?, distances?, masks?, fovys?}``
      or ``{images, c2ws, masks?, fovys?}`` (one value per image; a single number applies to all).

    Relative image and mask paths are resolved against the references file's folder (inline:
    the working directory). Images are not loaded here. Raises :class:`ConfigError` with the
    entry index, the file and the fix for every malformed input.
    """
    if isinstance(references, (DictConfig, ListConfig)):
        references = OmegaConf.to_container(references, resolve=True)
    if isinstance(references, os.PathLike):
        references = os.fspath(references)
    base_dir = ""
    if isinstance(references, str):
        path = os.path.expanduser(references)
        source = f"references file {references}"
        data = _read_references_file(path)
        base_dir = os.path.dirname(path)
    else:
        source = "data.references (inline)"
        data = references
    if isinstance(data, dict):
        if "image" in data:
            raise ConfigError(
                f"{source}: a single entry must still be in a list: [{{image: ..., ...}}] "
                f"(YAML: start the entry with '- ')."
            )
        data = _entries_from_parallel_lists(data, source)
    if not isinstance(data, (list, tuple)):
        raise ConfigError(
            f"{source}: expected a list of entries like {_ENTRY_EXAMPLE} or a mapping of parallel "
            f"lists {{images: [...], elevations: [...], ...}}, got {type(data).__name__}."
        )
    if len(data) == 0:
        raise ConfigError(
            f"{source}: the list of reference images is empty; give at least one entry like "
            f"{_ENTRY_EXAMPLE}."
        )

    def resolve(p: str) -> str:
        p = os.path.expanduser(p)
        return p if os.path.isabs(p) or not base_dir else os.path.join(base_dir, p)

    views = []
    for i, entry in enumerate(data):
        where = f"entry {i} of {source}"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: each entry must be a mapping like {_ENTRY_EXAMPLE[2:]}, got {entry!r}."
            )
        for key in entry:
            if key not in REFERENCE_KEYS:
                raise ConfigError(
                    f"{where}: unknown key '{key}'.{_closest_hint(str(key), REFERENCE_KEYS)} "
                    f"Valid keys: {', '.join(REFERENCE_KEYS)}."
                )
        image = entry.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(
                f"{where}: missing 'image' (the path of the RGBA image, relative to the "
                f"references file's folder), got {image!r}."
            )
        mask = entry.get("mask")
        if mask is not None and (not isinstance(mask, str) or not mask.strip()):
            raise ConfigError(f"{where}: 'mask' must be a path (or omitted), got {mask!r}.")

        fovy = _number(entry.get("fovy", default_fovy_deg), "fovy", where)
        if not 0.0 < fovy < 180.0:
            raise ConfigError(f"{where}: 'fovy' must be in (0, 180) degrees, got {fovy}.")
        if entry.get("c2w") is not None:
            both = [k for k in _SPHERICAL_KEYS if k in entry]
            if both:
                raise ConfigError(
                    f"{where}: give the camera either as 'c2w' or as elevation/azimuth/distance, not "
                    f"both (found c2w and {', '.join(both)}); remove one."
                )
            c2w = check_rigid_c2w(entry["c2w"], where)
            elevation, azimuth, distance = (float(v[0]) for v in spherical_from_position(c2w[None, :3, 3]))
            if not distance > 1e-6:
                raise ConfigError(
                    f"{where}: the c2w camera is at the origin (distance 0), inside the object; "
                    f"its last column must hold the camera position."
                )
            from_c2w = True
        else:
            if "c2w" in entry:
                raise ConfigError(f"{where}: 'c2w' is null; give a 4x4 matrix or remove the key.")
            elevation = _number(entry.get("elevation", default_elevation_deg), "elevation", where)
            azimuth = _number(entry.get("azimuth", default_azimuth_deg), "azimuth", where)
            distance = _number(entry.get("distance", default_camera_distance), "distance", where)
            if distance <= 0:
                raise ConfigError(
                    f"{where}: 'distance' must be > 0 (the camera's distance from the object at "
                    f"the origin), got {distance}."
                )
            t = torch.tensor
            c2w = c2w_from_spherical(
                deg2rad(t([elevation])), deg2rad(t([azimuth])), t([distance])
            )[0]
            from_c2w = False
        views.append(
            ReferenceView(
                image=resolve(image), mask=resolve(mask) if mask else None, c2w=c2w,
                elevation_deg=elevation, azimuth_deg=azimuth, distance=distance, fovy_deg=fovy,
                from_c2w=from_c2w, where=where,
            )
        )
    return views


def reference_views_from_config(cfg: Any) -> List[ReferenceView]:
    """The reference views of a ``single-image-datamodule`` config: ``data.image_path`` at the
    default camera, or the ``data.references`` list (exactly one of the two must be set)."""
    references = cfg.references
    has_refs = references is not None and not (isinstance(references, str) and not references.strip())
    if has_refs and cfg.image_path:
        raise ConfigError(
            f"Both data.image_path ({cfg.image_path}) and data.references are set: set one. "
            f"image_path is one image at the default camera; references lists several posed images "
            f"(put the single image in the references list if you need both)."
        )
    if not has_refs:
        if not cfg.image_path:
            raise ImageLoadError(
                "No image given: set data.image_path (or pass image=path/to/object.png), or give "
                "several posed images with data.references (references=path/to/views.yaml)."
            )
        t = torch.tensor
        c2w = c2w_from_spherical(
            deg2rad(t([float(cfg.default_elevation_deg)])), deg2rad(t([float(cfg.default_azimuth_deg)])),
            t([float(cfg.default_camera_distance)]),
        )[0]
        return [
            ReferenceView(
                image=cfg.image_path, mask=cfg.mask_path, c2w=c2w,
                elevation_deg=float(cfg.default_elevation_deg), azimuth_deg=float(cfg.default_azimuth_deg),
                distance=float(cfg.default_camera_distance), fovy_deg=float(cfg.default_fovy_deg),
                from_c2w=False, where="data.image_path",
            )
        ]
    if cfg.mask_path:
        raise ConfigError(
            "data.mask_path applies to data.image_path only; with data.references give each "
            "entry its own 'mask:' key."
        )
    return parse_references(
        references, float(cfg.default_elevation_deg), float(cfg.default_azimuth_deg),
        float(cfg.default_camera_distance), float(cfg.default_fovy_deg),
    )


def load_reference_rgba(view: ReferenceView) -> Tensor:
    """:func:`load_rgba` of a reference view; errors of a ``data.references`` entry name it."""
    if view.where == "data.image_path":
        return load_rgba(view.image, view.mask)
    try:
        return load_rgba(view.image, view.mask)
    except ImageLoadError as exc:
        message = str(exc).replace("data.mask_path=path/to/mask.png", "a 'mask:' key in this entry")
        raise ImageLoadError(f"{view.where} (image {view.image}): {message}") from None


def reference_camera_batch(
    c2w: Tensor,
    fovy_deg: Tensor,
    height: int,
    width: int,
    elevation: Optional[Tensor] = None,
    azimuth: Optional[Tensor] = None,
    distance: Optional[Tensor] = None,
) -> Dict[str, Any]:
    """A camera batch (the keys of :func:`~threestudio_like.data.random_camera.make_batch`) for
    the given ``c2w`` ``[N, 4, 4]`` themselves: rays start at their translations.

    Elevation/azimuth/distance default to the spherical coordinates of the camera positions.
    """
    positions = c2w[:, :3, 3]
    if elevation is None or azimuth is None or distance is None:
        elevation, azimuth, distance = spherical_from_position(positions)
    fovy_rad = deg2rad(fovy_deg)
    rays_o, rays_d = rays_for_cameras(c2w, fovy_rad, height, width)
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "c2w": c2w,
        "mvp_mtx": mvp_matrix(c2w, projection_matrix(fovy_rad, width / height)),
        "camera_positions": positions,
        "light_positions": positions,
        "elevation": elevation,
        "azimuth": azimuth,
        "camera_distances": distance,
        "fovy": fovy_deg,
        "height": height,
        "width": width,
    }


# ------------------------------------------------------------------------------------------
# data module


@dataclass
class SingleImageConfig:
    image_path: str = ""
    """The input image: RGBA with a transparent background (or RGB with mask_path)."""
    mask_path: Optional[str] = None
    """Optional object mask (same size as the image) replacing its alpha channel."""
    references: Any = None
    """Several posed images instead of image_path: a JSON/YAML file or an inline list of
    ``{image, mask?, elevation?, azimuth?, distance?, fovy?}`` or ``{image, mask?, c2w, fovy?}``
    entries (or a mapping of parallel lists ``{images, elevations, azimuths, distances}``)."""
    height: Any = 96
    """Reference-view render height; a list switches at resolution_milestones."""
    width: Any = 96
    """Reference-view render width; a list like height."""
    resolution_milestones: List[int] = field(default_factory=list)
    """Training steps at which the reference views (height/width lists) change resolution."""
    recenter: bool = True
    """Centre the object by its alpha bounding box and rescale it to object_fraction (each
    reference independently; set false to keep the framing of posed multi-view images)."""
    object_fraction: float = ZERO123_OBJECT_FRACTION
    """Longer side of the object's box over the frame size (Zero-1-to-3: 200/256)."""
    condition_size: int = 256
    """Size of the square conditioning images handed to the guidance (Zero-1-to-3: 256)."""
    default_elevation_deg: float = 0.0
    """Elevation of the reference camera (degrees above the horizon)."""
    default_azimuth_deg: float = 0.0
    """Azimuth of the reference camera (0 = +x = the object's front)."""
    default_camera_distance: float = 2.0
    """Distance of the reference camera from the origin."""
    default_fovy_deg: float = 49.1
    """Vertical field of view of the reference camera (degrees)."""
    use_random_camera: bool = True
    """Add a batch of random training cameras under batch["random_camera"]."""
    random_camera: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    """Random training views and the validation/test orbit (a random-camera-datamodule config)."""


class SingleImageIterableDataset(IterableDataset, Updateable):
    """Endless training batches: the N reference views, and random views around the object."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        heights = [int(h) for h in _as_list(cfg.height)]
        widths = [int(w) for w in _as_list(cfg.width)]
        if len(heights) != len(widths):
            raise ConfigError("data.height and data.width must have the same length.")
        if len(cfg.resolution_milestones) != len(heights) - 1:
            raise ConfigError(
                f"data.resolution_milestones needs {len(heights) - 1} step(s) for {len(heights)} "
                f"resolutions, got {list(cfg.resolution_milestones)}."
            )
        self.references = reference_views_from_config(cfg)
        rgbas = [load_reference_rgba(view) for view in self.references]
        size = int(cfg.condition_size)
        cond = torch.stack([resize_rgba(rgba, size, size, cfg.recenter, cfg.object_fraction) for rgba in rgbas])
        self.condition = {"cond_rgb": composite(cond), "cond_mask": (cond[..., 3:] > 0.5).float()}
        t = torch.tensor
        self.cameras = {
            "c2w": torch.stack([view.c2w for view in self.references]),
            "fovy": t([view.fovy_deg for view in self.references]),
            "elevation": t([view.elevation_deg for view in self.references]),
            "azimuth": t([view.azimuth_deg for view in self.references]),
            "camera_distances": t([view.distance for view in self.references]),
        }
        cams = self.cameras
        self.views: List[Dict[str, Any]] = []
        for h, w in zip(heights, widths):
            view = reference_camera_batch(
                cams["c2w"], cams["fovy"], h, w, cams["elevation"], cams["azimuth"], cams["camera_distances"]
            )
            image = torch.stack([resize_rgba(rgba, h, w, cfg.recenter, cfg.object_fraction) for rgba in rgbas])
            view.update(rgb=composite(image), mask=(image[..., 3:] > 0.5).float())
            self.views.append(view)
        self.random_cameras = RandomCameraIterableDataset(cfg.random_camera) if cfg.use_random_camera else None
        self.level = 0

    @property
    def n_references(self) -> int:
        return len(self.references)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.level = bisect.bisect_right(list(self.cfg.resolution_milestones), global_step)

    def get_all_images(self) -> Tensor:
        """The conditioning images ``[N, S, S, 3]`` (white background)."""
        return self.condition["cond_rgb"]

    def reference_views(self) -> Dict[str, Tensor]:
        """The posed conditioning images: ``cond_rgb`` ``[N, S, S, 3]``, ``cond_mask``
        ``[N, S, S, 1]``, ``c2w`` ``[N, 4, 4]``, ``camera_positions`` ``[N, 3]``, ``fovy``,
        ``elevation``, ``azimuth`` (degrees) and ``camera_distances`` ``[N]``."""
        out = dict(self.condition)
        out.update(self.cameras)
        out["camera_positions"] = self.cameras["c2w"][:, :3, 3]
        return out

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            yield {}

    def collate(self, _items: list) -> Dict[str, Any]:
        batch = dict(self.views[self.level])
        batch.update(self.condition)
        batch["n_views"] = 1
        batch["n_references"] = self.n_references
        if self.random_cameras is not None:
            batch["random_camera"] = self.random_cameras.collate(_items)
        return batch


@register("single-image-datamodule")
class SingleImageDataModule(pl.LightningDataModule):
    """Posed conditioning image(s) + random training views; orbit evaluation.

    The images are loaded (and checked) when the data module is built, before any training work.
    """

    Config = SingleImageConfig

    def __init__(self, cfg: Optional[Any] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.train_dataset = SingleImageIterableDataset(self.cfg)

    def reference_views(self) -> Dict[str, Tensor]:
        """See :meth:`SingleImageIterableDataset.reference_views`."""
        return self.train_dataset.reference_views()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=1, num_workers=0, collate_fn=self.train_dataset.collate)

    def _eval_loader(self, n_views: int) -> DataLoader:
        dataset = OrbitDataset(self.cfg.random_camera, n_views)
        return DataLoader(
            dataset, batch_size=self.cfg.random_camera.eval_batch_size, num_workers=0,
            collate_fn=dataset.collate, shuffle=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.cfg.random_camera.n_val_views)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.cfg.random_camera.n_test_views)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(1)
