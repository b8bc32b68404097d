"""Reading and framing the RGBA input images of the image-conditioned recipes.

Shared by the ``single-image-datamodule`` (:mod:`.image`), its posed references
(:mod:`.references`) and the guidances that load their conditioning image themselves
(Zero-1-to-3), so that every path frames an image the same way:

* :func:`load_rgba` reads an RGBA image (or an RGB image with a separate mask) as straight
  (non-premultiplied) RGBA in [0, 1], with clear errors for missing files, images without alpha
  and empty masks;
* :func:`resize_rgba` resizes it, optionally re-centring the object: the alpha bounding box is
  scaled so that its longer side spans ``object_fraction`` of the frame and placed in the centre
  (Zero-1-to-3's ``load_and_preprocess``: the object fits 200 px of a 256 px frame). Colours are
  resampled premultiplied, so whatever hides under alpha = 0 never bleeds into the edges;
* :func:`composite` puts it on a solid (white) background, as the models were trained;
* :func:`load_reference_image` does all three for one image.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.errors import ConfigError, ImageLoadError

ZERO123_OBJECT_FRACTION = 200.0 / 256.0
"""Zero-1-to-3's framing: the object's longer side spans 200 of 256 pixels."""


OBJECT_IMAGE_HINT = ("set data.image_path (or pass image=path/to/object.png), or give several posed images "
                     "with data.references (references=path/to/views.yaml)")


def open_image(path: str, what: str, hint: str = OBJECT_IMAGE_HINT, missing_hint: str = "") -> Any:
    """The PIL image at ``path``, fully read; :class:`ImageLoadError` names a missing path (with
    ``hint``: how to pass one), a missing file (followed by ``missing_hint``) and an unreadable one."""
    from PIL import Image

    if not path:
        raise ImageLoadError(f"No {what} given: {hint}.")
    if not os.path.isfile(path):
        raise ImageLoadError(f"{what.capitalize()} not found: {os.path.abspath(path)}.{missing_hint}")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # truncated or not an image
        raise ImageLoadError(f"Could not read the {what} {path}: {exc}.") from None
    return img


def load_rgba(image_path: str, mask_path: Optional[str] = None) -> Tensor:
    """Straight RGBA ``[H, W, 4]`` float in [0, 1] from an RGBA image or an RGB image + mask.

    The mask (any image of the same size; its alpha channel if it has one, else its grey
    level) replaces the image's alpha. Raises :class:`ImageLoadError` for a missing or
    unreadable file, an image without alpha and no mask, a fully opaque alpha and an empty mask.
    """
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
