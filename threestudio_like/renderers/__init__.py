"""Renderers and their parts: NeRF volume renderer, materials, backgrounds.

Importing this package registers ``nerf-volume-renderer``, ``no-material``,
``diffuse-with-point-light-material``, ``solid-color-background`` and
``neural-environment-map-background``.
"""
from threestudio_like.renderers import background, material, nerf_volume_renderer, occupancy
from threestudio_like.renderers.background import (
    BaseBackground,
    NeuralEnvironmentMapBackground,
    SolidColorBackground,
)
from threestudio_like.renderers.material import BaseMaterial, DiffuseWithPointLightMaterial, NoMaterial
from threestudio_like.renderers.nerf_volume_renderer import NeRFVolumeRenderer

__all__ = [
    "BaseBackground",
    "BaseMaterial",
    "DiffuseWithPointLightMaterial",
    "NeRFVolumeRenderer",
    "NeuralEnvironmentMapBackground",
    "NoMaterial",
    "SolidColorBackground",
    "background",
    "material",
    "nerf_volume_renderer",
    "occupancy",
]
