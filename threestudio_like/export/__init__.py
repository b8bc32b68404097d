"""Exporters: density field -> marching cubes -> coloured mesh files."""
from threestudio_like.export import mesh_exporter  # noqa: F401  (registers exporters)
