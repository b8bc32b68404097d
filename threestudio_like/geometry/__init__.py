"""Geometry: hash-grid encodings (tcnn | triton | torch backends), MLP heads, implicit volume, isosurface.

Importing this package registers ``hashgrid-implicit-volume``.
"""

from threestudio_like.geometry.hashgrid import (
    HashGridEncoding,
    get_encoding,
    level_layout,
    tcnn_available,
)
from threestudio_like.geometry.networks import (
    SphericalHarmonicsEncoding,
    VanillaMLP,
    get_activation,
    get_mlp,
    trunc_exp,
)
from threestudio_like.geometry.isosurface import IsosurfaceError, marching_cubes
from threestudio_like.geometry.implicit_volume import HashGridImplicitVolume

__all__ = [
    "HashGridEncoding",
    "HashGridImplicitVolume",
    "IsosurfaceError",
    "SphericalHarmonicsEncoding",
    "VanillaMLP",
    "get_activation",
    "get_encoding",
    "get_mlp",
    "level_layout",
    "marching_cubes",
    "tcnn_available",
    "trunc_exp",
]
