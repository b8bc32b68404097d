"""Synthetic turntables with known answers: a shaded head with one or more painted faces.

Used to test the real-run metrics: a head with faces at longitudes (0,) must give one face arc
and a low second-peak ratio, faces at (0, 180) two arcs and a high ratio.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _blob(lon: np.ndarray, lat: np.ndarray, c_lon: float, c_lat: float, r_lon: float, r_lat: float) -> np.ndarray:
    d_lon = np.angle(np.exp(1j * (lon - c_lon)))
    return (d_lon / r_lon) ** 2 + ((lat - c_lat) / r_lat) ** 2 < 1.0


def synthetic_head_turntable(
    n_views: int = 36, size: int = 128, face_longitudes_deg: Sequence[float] = (0.0,), elevation_deg: float = 0.0
) -> np.ndarray:
    """``[n_views, size, size, 3]`` float renders in [0, 1] (white background) of a sphere head
    seen from azimuths ``360 i / n_views``; a face is painted at each of ``face_longitudes_deg``
    (0 = the front, +x), hair covers the rest of the top, a dark patch marks the back."""
    ys, xs = np.mgrid[0:size, 0:size]
    u = (xs + 0.5) / size * 2 - 1
    v = 1 - (ys + 0.5) / size * 2
    r = 0.8
    inside = u**2 + v**2 < r**2
    zc = np.sqrt(np.clip(r**2 - u**2 - v**2, 0, None))
    # camera space: x right, y up, z towards the camera; shading from the camera's upper left
    light = np.array([-0.3, 0.5, 0.8]) / np.linalg.norm([-0.3, 0.5, 0.8])
    shade = 0.35 + 0.65 * np.clip((u * light[0] + v * light[1] + zc * light[2]) / r, 0, 1)
    elev = math.radians(elevation_deg)
    out = np.ones((n_views, size, size, 3), dtype=np.float32)
    for i in range(n_views):
        az = 2 * math.pi * i / n_views
        # the camera looks from azimuth az: camera z = direction (cos az, sin az) in the world
        px, py, pz = u / r, v / r, zc / r
        # undo elevation (rotate about camera x), then azimuth (about world z)
        fy = py * math.cos(elev) + pz * math.sin(elev)
        fz = -py * math.sin(elev) + pz * math.cos(elev)
        wx = fz * math.cos(az) - px * math.sin(az)
        wy = fz * math.sin(az) + px * math.cos(az)
        wz = fy
        lon, lat = np.arctan2(wy, wx), np.arcsin(np.clip(wz, -1, 1))
        skin = np.array([0.93, 0.75, 0.62])
        img = np.broadcast_to(skin, (size, size, 3)).copy()
        hair = lat > 0.75
        face_zone = np.zeros_like(hair)
        features = np.zeros_like(hair)
        mouth = np.zeros_like(hair)
        for f in face_longitudes_deg:
            c = math.radians(f)
            face_zone |= _blob(lon, lat, c, 0.0, 1.0, 1.2)
            for side in (-1, 1):
                features |= _blob(lon, lat, c + side * 0.33, 0.22, 0.13, 0.09)  # eyes
                features |= _blob(lon, lat, c + side * 0.33, 0.40, 0.2, 0.035)  # brows
            features |= _blob(lon, lat, c, -0.02, 0.06, 0.12)  # nose
            mouth |= _blob(lon, lat, c, -0.38, 0.3, 0.06)
        hair = hair | ~face_zone
        img[hair] = (0.25, 0.15, 0.08)
        img[features] = (0.1, 0.07, 0.05)
        img[mouth] = (0.55, 0.1, 0.1)
        img = img * shade[..., None]
        out[i][inside] = img[inside]
    return np.clip(out, 0, 1)
