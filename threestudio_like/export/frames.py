"""Axis conventions of exported files: the one rotation from the project's world frame.

The project's world frame is right-handed, **z up, the object's front facing +x** (the reference
object's face looks along +x; cameras orbit about z). It is also Unreal Engine's convention.

glTF 2.0 (and so GLB) and USD/USDZ as read by AR viewers are right-handed, **+Y up, the front
facing +Z** (glTF's "+X is the asset's left"). The rotation ``R`` taking world coordinates to
those frames is the cyclic permutation of the axes

    (x, y, z)_world  ->  (X, Y, Z) = (y, z, x)

``R`` maps +x (front) to +Z, +z (up) to +Y and +y (the object's left, as it faces +x) to +X,
which is the asset's left in glTF. A cyclic permutation has determinant +1, so it is a proper
rotation: triangle winding, outward normals and signed volumes are unchanged. Normals rotate
with the same matrix (it is orthogonal).

``up_axis`` chooses the frame of files whose format has no convention of its own (OBJ, PLY):
``"y"`` (default) is the glTF frame above, so that every file of one export lines up; ``"z"``
keeps the world frame (z up, front +x). 1 world unit is written as 1 unit (glTF: metres).
"""
from __future__ import annotations

from typing import Literal, Tuple, get_args

import numpy as np

UpAxis = Literal["y", "z"]
UP_AXES: Tuple[str, ...] = get_args(UpAxis)

WORLD_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
"""Rows: the world components that make X, Y and Z of the +Y-up, front-+Z frame."""


def rotation(up_axis: str) -> np.ndarray:
    """The 3x3 rotation from world coordinates to the export frame of ``up_axis``."""
    if up_axis == "y":
        return WORLD_TO_Y_UP
    if up_axis == "z":
        return np.eye(3)
    raise ValueError(f"up_axis must be one of {', '.join(UP_AXES)}, got {up_axis!r}.")


def to_export_frame(vectors: np.ndarray, up_axis: str = "y") -> np.ndarray:
    """World points or normals ``[N, 3]`` in the export frame of ``up_axis`` (same dtype)."""
    vectors = np.asarray(vectors)
    return (vectors @ rotation(up_axis).T).astype(vectors.dtype, copy=False)


def to_world_frame(vectors: np.ndarray, up_axis: str = "y") -> np.ndarray:
    """The inverse of :func:`to_export_frame`: export-frame points ``[N, 3]`` back in the world."""
    vectors = np.asarray(vectors)
    return (vectors @ rotation(up_axis)).astype(vectors.dtype, copy=False)
