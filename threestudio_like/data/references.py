"""Posed reference images: the ``data.references`` list, its checks, and camera batches of it.

The ``single-image-datamodule`` (:mod:`.image`) takes either one image, ``data.image_path``
(``image=``), seen from the default camera (``default_elevation_deg``, ``default_azimuth_deg``,
``default_camera_distance``, ``default_fovy_deg``), or N posed images, ``data.references``
(``references=``): a JSON/YAML file or an inline list, parsed by :func:`parse_references`::

    - {image: front.png, elevation: 0, azimuth: 0, distance: 2.0}
    - {image: side.png, mask: side_mask.png, azimuth: 90, fovy: 40}   # omitted: default_*
    - {image: top.png, c2w: [[...], [...], [...], [0, 0, 0, 1]]}     # our convention

or the parallel lists ``{images: [...], elevations: [...], azimuths: [...], distances: [...],
masks?: [...], fovys?: [...]}`` (or ``c2ws: [...]``). Relative paths are relative to the
references file's folder. ``c2w`` is a camera-to-world rigid transform in the convention of
:mod:`threestudio_like.cameras` (OpenGL axes, world z up); the rays of such a view come from
the matrix itself (:func:`reference_camera_batch`).

Parsing is separate from loading: every entry is checked (and named in the error: ``entry 1
of references file views.yaml``) before any image is read, and the views are plain
:class:`ReferenceView` records that the data module turns into images and cameras.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from threestudio_like.cameras import (
    c2w_from_spherical,
    deg2rad,
    mvp_matrix,
    projection_matrix,
    rays_for_cameras,
    spherical_coordinates,
)
from threestudio_like.data.image_io import load_rgba
from threestudio_like.errors import ConfigError, ImageLoadError, did_you_mean

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
                f"{source}: unknown key '{key}' in the parallel-lists form.{did_you_mean(str(key), PARALLEL_KEYS, cutoff=0.5)} "
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
                    f"{where}: unknown key '{key}'.{did_you_mean(str(key), REFERENCE_KEYS, cutoff=0.5)} "
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
