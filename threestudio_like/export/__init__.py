"""Exporters: density field -> marching cubes -> coloured mesh files; found by the registry."""
