"""HawkI's pseudo-aerial image: inverse perspective mapping (IPM) by a fixed homography.

HawkI's baseline guidance image (arXiv 2311.15478, ``train_aerialbooth_batch.py``): the input,
resized to 256 x 256, is warped by the homography ``M`` that sends the image corners (x, y)
``(0,0), (256,0), (256,256), (0,256)`` to ``(0,256), (256,0), (256,256), (0,512)`` into a
512 x 512 canvas (``cv2.warpPerspective``), rotated by -45 degrees with the canvas enlarged to
hold it (``scipy.ndimage.rotate(reshape=True)``) and resized back to 512 x 512.

Everything is implemented here in torch: :func:`homography_from_points` solves the 8 x 8 direct
linear transform (``h33 = 1``), :func:`warp_perspective` samples the source at ``M^-1 (x, y, 1)``
(pixel centres at integer coordinates, bilinear, zeros outside, as OpenCV's defaults),
:func:`rotate_reshape` maps each output pixel (row, col) to the input by scipy's rotation matrix
about the image centres. Differences from upstream: bilinear interpolation where scipy uses
cubic splines (order 3); resizes are bilinear with antialiasing.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

IPM_INPUT_SIZE = 256
IPM_SOURCE_CORNERS = ((0.0, 0.0), (256.0, 0.0), (256.0, 256.0), (0.0, 256.0))
"""Corners (x, y) of the 256 x 256 input: top-left, top-right, bottom-right, bottom-left."""
IPM_TARGET_CORNERS = ((0.0, 256.0), (256.0, 0.0), (256.0, 256.0), (0.0, 512.0))
"""Where HawkI sends them in the 512 x 512 canvas."""
IPM_CANVAS = (512, 512)
IPM_ROTATION_DEG = -45.0
IPM_OUTPUT_SIZE = 512


def homography_from_points(src: Sequence[Sequence[float]], dst: Sequence[Sequence[float]]) -> Tensor:
    """The 3 x 3 homography (float64, ``H[2, 2] = 1``) mapping 4 points (x, y) ``src`` to ``dst``.

    Each pair gives two rows of ``A h = b`` for ``h = (h11 .. h32)``:
    ``u = (h11 x + h12 y + h13) / (h31 x + h32 y + 1)``, likewise ``v`` with the second row.
    """
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("a homography takes exactly 4 point pairs")
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, h.new_ones(1)]).reshape(3, 3)


def apply_homography(matrix: Tensor, points: Tensor) -> Tensor:
    """Points ``[N, 2]`` (x, y) mapped by ``matrix`` (with the perspective division)."""
    homogeneous = torch.cat([points.to(matrix.dtype), points.new_ones(len(points), 1).to(matrix.dtype)], 1)
    mapped = homogeneous @ matrix.T
    return mapped[:, :2] / mapped[:, 2:]


def sample_bilinear(image: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``image`` ``[H, W, C]`` at pixel coordinates ``x, y`` (any equal shape ``S``) -> ``[*S, C]``;
    pixel centres at integers, zeros outside."""
    height, width = image.shape[:2]
    grid = torch.stack([2.0 * x / max(width - 1, 1) - 1.0, 2.0 * y / max(height - 1, 1) - 1.0], -1)
    out = F.grid_sample(image.permute(2, 0, 1)[None].float(), grid.reshape(1, -1, 1, 2).float(),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, :, :, 0].T.reshape(*x.shape, image.shape[2])


def warp_perspective(image: Tensor, matrix: Tensor, size: Tuple[int, int]) -> Tensor:
    """``image`` ``[H, W, C]`` warped by ``matrix`` (source -> output) into ``size`` (width, height)."""
    width, height = size
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    source = apply_homography(torch.linalg.inv(matrix), torch.stack([xs.reshape(-1), ys.reshape(-1)], 1))
    return sample_bilinear(image, source[:, 0].reshape(height, width), source[:, 1].reshape(height, width))


def rotate_reshape(image: Tensor, angle_deg: float) -> Tensor:
    """``image`` ``[H, W, C]`` rotated by ``angle_deg`` on an enlarged canvas, with
    ``scipy.ndimage.rotate(image, angle_deg, reshape=True)``'s geometry (bilinear)."""
    angle = math.radians(angle_deg)
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)  # (row, col) output -> input
    in_shape = torch.tensor(image.shape[:2], dtype=torch.float64)
    corners = torch.tensor([[0.0, 0.0, in_shape[0], in_shape[0]], [0.0, in_shape[1], 0.0, in_shape[1]]],
                           dtype=torch.float64)
    bounds = rotation @ corners
    out_shape = ((bounds.max(1).values - bounds.min(1).values) + 0.5).floor()
    offset = (in_shape - 1) / 2 - rotation @ ((out_shape - 1) / 2)
    rows, cols = torch.meshgrid(torch.arange(int(out_shape[0]), dtype=torch.float64),
                                torch.arange(int(out_shape[1]), dtype=torch.float64), indexing="ij")
    source = torch.stack([rows.reshape(-1), cols.reshape(-1)], 0)
    source = rotation @ source + offset[:, None]
    shape = rows.shape
    return sample_bilinear(image, source[1].reshape(shape), source[0].reshape(shape))


def resize_image(image: Tensor, size: int) -> Tensor:
    """``[H, W, C]`` -> ``[size, size, C]`` (bilinear, antialiased when shrinking)."""
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0)


def ipm_matrix() -> Tensor:
    """HawkI's homography (float64 3 x 3) for the 256 x 256 input."""
    return homography_from_points(IPM_SOURCE_CORNERS, IPM_TARGET_CORNERS)


def ipm_image(image: Tensor, output_size: int = IPM_OUTPUT_SIZE) -> Tensor:
    """HawkI's pseudo-aerial image of ``image`` ``[H, W, 3]`` in [0, 1] -> ``[S, S, 3]`` in [0, 1]."""
    small = resize_image(image, IPM_INPUT_SIZE)
    warped = warp_perspective(small, ipm_matrix(), IPM_CANVAS)
    rotated = rotate_reshape(warped, IPM_ROTATION_DEG)
    return resize_image(rotated, output_size).clamp(0.0, 1.0)
