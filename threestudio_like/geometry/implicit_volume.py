"""Hash-grid implicit volume: a density + feature field for NeRF-style rendering.

World points inside the box ``[-radius, radius]^3`` are mapped to ``[0,1]^3``, encoded by a
multi-resolution hash grid shared by two small MLP heads: density (1 output, plus a blob bias
before the activation) and features (``n_feature_dims`` raw outputs; the material applies its own
activation). Mirrors threestudio's ``implicit-volume`` with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from threestudio_like import register
from threestudio_like.base import BaseModule
from threestudio_like.errors import ConfigError, FieldError, at_least, did_you_mean, in_range
from threestudio_like.geometry.hashgrid import HASHGRID_DEFAULTS, get_encoding
from threestudio_like.geometry.isosurface import marching_cubes
from threestudio_like.geometry.networks import get_activation, get_mlp

DENSITY_ACTIVATIONS = ("softplus", "exp", "trunc_exp", "relu")
NORMAL_TYPES = (None, "analytic", "finite_difference")
_WHERE = "system.geometry"
"""Config path of the geometry, named in messages about its keys."""


def _default_pos_encoding() -> Dict[str, Any]:
    return {"otype": "HashGrid", **HASHGRID_DEFAULTS}


def _default_mlp() -> Dict[str, Any]:
    return {
        "otype": "VanillaMLP",
        "activation": "ReLU",
        "output_activation": "none",
        "n_neurons": 64,
        "n_hidden_layers": 1,
    }


@register("hashgrid-implicit-volume")
class HashGridImplicitVolume(BaseModule):
    """Density/feature field on a hash grid (threestudio ``implicit-volume``).

    ``forward(points, output_normal)`` returns ``density`` ``[..., 1]`` (activated),
    ``features`` ``[..., n_feature_dims]`` (raw) and, with ``output_normal`` and a
    ``normal_type``, unit ``normal`` / ``shading_normal`` ``[..., 3]`` pointing out of the object
    (down the density gradient).
    """

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        """Half-size of the bounding box ``[-radius, radius]^3`` that the hash grid covers."""
        n_feature_dims: int = 3
        """Raw feature channels for the material (3 = albedo/RGB, 4 = latent)."""
        density_activation: str = "softplus"
        """Density activation: softplus | exp | trunc_exp | relu."""
        density_bias: Any = "blob_magic3d"
        """Pre-activation bias: blob_magic3d | blob_dreamfusion | a number (see get_density_bias)."""
        density_blob_scale: float = 10.0
        """Blob bias scale."""
        density_blob_std: float = 0.5
        """Blob bias width (world units)."""
        pos_encoding_config: dict = field(default_factory=_default_pos_encoding)
        """Hash grid: otype HashGrid | ProgressiveBandHashGrid, tcnn keys, backend auto|tcnn|torch."""
        mlp_network_config: dict = field(default_factory=_default_mlp)
        """Density and feature heads (VanillaMLP: n_neurons, n_hidden_layers, no bias)."""
        normal_type: Optional[str] = None
        """Normals when asked for: null | analytic (-grad density, autograd) | finite_difference."""
        finite_difference_normal_eps: float = 0.01
        """Central-difference step for finite-difference normals (world units)."""
        isosurface_resolution: int = 128
        """Lattice points per axis for mesh extraction."""
        isosurface_threshold: Any = 25.0
        """Density level of the exported surface, or "auto" (mean density above 1e-5, threestudio)."""
        isosurface_chunk: int = 262144

        def validate(self) -> None:
            threshold = self.isosurface_threshold
            if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)) and threshold != "auto":
                raise FieldError("isosurface_threshold", f"must be a number or 'auto', got {threshold!r}")
            at_least("isosurface_resolution", self.isosurface_resolution, 2)
            at_least("isosurface_chunk", self.isosurface_chunk, 1)
            in_range("radius", self.radius, 0, float("inf"), open_low=True)
        """Points per field evaluation during mesh extraction."""

    cfg: Config
    config_where = _WHERE

    def configure(self) -> None:
        cfg = self.cfg
        if cfg.density_activation not in DENSITY_ACTIVATIONS:
            raise ConfigError(
                f"{_WHERE}.density_activation must be one of {', '.join(DENSITY_ACTIVATIONS)}, "
                f"got {cfg.density_activation!r}.{did_you_mean(str(cfg.density_activation), DENSITY_ACTIVATIONS)}"
            )
        if cfg.normal_type not in NORMAL_TYPES:
            raise ConfigError(
                f"{_WHERE}.normal_type must be null, 'analytic' or 'finite_difference', got "
                f"{cfg.normal_type!r}.{did_you_mean(str(cfg.normal_type), NORMAL_TYPES[1:])}"
            )
        bias = cfg.density_bias
        if not (isinstance(bias, (int, float)) and not isinstance(bias, bool)) and bias not in (
            "blob_magic3d",
            "blob_dreamfusion",
        ):
            raise ConfigError(
                f"{_WHERE}.density_bias must be 'blob_magic3d', 'blob_dreamfusion' or a number, got "
                f"{bias!r}.{did_you_mean(str(bias), ('blob_magic3d', 'blob_dreamfusion'))}"
            )
        self.encoding = get_encoding(3, cfg.pos_encoding_config, f"{_WHERE}.pos_encoding_config")
        mlp_where = f"{_WHERE}.mlp_network_config"
        self.density_network = get_mlp(self.encoding.n_output_dims, 1, cfg.mlp_network_config, mlp_where)
        self.feature_network = (
            get_mlp(self.encoding.n_output_dims, cfg.n_feature_dims, cfg.mlp_network_config, mlp_where)
            if cfg.n_feature_dims > 0
            else None
        )
        self._density_act = get_activation(cfg.density_activation)

    # ------------------------------------------------------------------------------------------
    # field

    def normalize_points(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> ``[0,1]^3`` via ``(x + radius) / (2 radius)``, clamped."""
        r = float(self.cfg.radius)
        return ((points + r) / (2.0 * r)).clamp(0.0, 1.0)

    def get_density_bias(self, points: torch.Tensor) -> Union[torch.Tensor, float]:
        """Pre-activation density bias at world ``points`` (``[..., 1]`` or a float).

        ``blob_magic3d``: ``scale * (1 - |x| / std)``; ``blob_dreamfusion``:
        ``scale * exp(-|x|^2 / (2 std^2))``; a number: that constant.
        """
        cfg = self.cfg
        if cfg.density_bias == "blob_magic3d":
            # vector_norm has a zero (not NaN) gradient at the origin.
            dist = torch.linalg.vector_norm(points, dim=-1, keepdim=True)
            return cfg.density_blob_scale * (1.0 - dist / cfg.density_blob_std)
        if cfg.density_bias == "blob_dreamfusion":
            sq = (points**2).sum(dim=-1, keepdim=True)
            return cfg.density_blob_scale * torch.exp(-0.5 * sq / cfg.density_blob_std**2)
        return float(cfg.density_bias)

    def _field(
        self, points: torch.Tensor, with_features: bool = True
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        lead = points.shape[:-1]
        enc = self.encoding(self.normalize_points(points).reshape(-1, 3))
        raw = self.density_network(enc).reshape(*lead, 1)
        density = self._density_act(raw + self.get_density_bias(points.to(raw.dtype)))
        features = None
        if with_features and self.feature_network is not None:
            features = self.feature_network(enc).reshape(*lead, self.cfg.n_feature_dims)
        return density, features

    def forward(self, points: torch.Tensor, output_normal: bool = False) -> Dict[str, torch.Tensor]:
        """Query the field at world ``points`` ``[..., 3]``.

        Returns ``density`` ``[..., 1]``, ``features`` ``[..., n_feature_dims]`` and, when
        ``output_normal`` and ``normal_type`` is set, ``normal`` and ``shading_normal`` (unit,
        outward). Analytic normals work under ``torch.no_grad`` (grad is enabled internally and
        the outputs are detached); in grad mode they keep the graph (``create_graph=True``) so
        normal-based losses train the field.
        """
        if points.shape[-1] != 3:
            raise ValueError(f"Expected points [..., 3], got {tuple(points.shape)}.")
        normal_type = self.cfg.normal_type if output_normal else None
        grad_enabled = torch.is_grad_enabled()
        out: Dict[str, torch.Tensor] = {}
        if normal_type == "analytic":
            with torch.enable_grad():
                pts = points if points.requires_grad else points.detach().requires_grad_(True)
                density, features = self._field(pts)
                grad = torch.autograd.grad(
                    density, pts, grad_outputs=torch.ones_like(density), create_graph=grad_enabled
                )[0]
            normal = F.normalize(-grad, dim=-1)
            if not grad_enabled:
                density, normal = density.detach(), normal.detach()
                features = features.detach() if features is not None else None
        else:
            density, features = self._field(points)
            normal = None
            if normal_type == "finite_difference":
                normal = self._finite_difference_normal(points)
        out["density"] = density
        if features is not None:
            out["features"] = features
        if normal is not None:
            out["normal"] = normal
            out["shading_normal"] = normal
        return out

    def _finite_difference_normal(self, points: torch.Tensor) -> torch.Tensor:
        eps = float(self.cfg.finite_difference_normal_eps)
        r = float(self.cfg.radius)
        offsets = torch.tensor(
            [
                [eps, 0.0, 0.0],
                [-eps, 0.0, 0.0],
                [0.0, eps, 0.0],
                [0.0, -eps, 0.0],
                [0.0, 0.0, eps],
                [0.0, 0.0, -eps],
            ],
            dtype=points.dtype,
            device=points.device,
        )
        shifted = (points[..., None, :] + offsets).clamp(-r, r)  # [..., 6, 3]
        dens = self.forward_density(shifted)[..., 0]  # [..., 6]
        grad = 0.5 * (dens[..., 0::2] - dens[..., 1::2]) / eps
        return F.normalize(-grad, dim=-1)

    def forward_density(self, points: torch.Tensor) -> torch.Tensor:
        """Activated density ``[..., 1]`` at world ``points`` ``[..., 3]`` (no feature head)."""
        return self._field(points, with_features=False)[0]

    @torch.no_grad()
    def export(self, points: torch.Tensor, chunk: int = 262144) -> Dict[str, torch.Tensor]:
        """Raw ``features`` ``[..., n_feature_dims]`` at world ``points`` (e.g. mesh vertices)."""
        if self.feature_network is None:
            return {}
        lead = points.shape[:-1]
        flat = points.reshape(-1, 3).to(self.device)
        feats = [self._field(flat[i : i + chunk])[1] for i in range(0, flat.shape[0], chunk)]
        if not feats:
            return {"features": flat.new_zeros(*lead, self.cfg.n_feature_dims)}
        return {"features": torch.cat(feats, dim=0).reshape(*lead, self.cfg.n_feature_dims)}

    # ------------------------------------------------------------------------------------------
    # mesh

    @torch.no_grad()
    def isosurface(
        self,
        resolution: Optional[int] = None,
        threshold: Optional[Union[float, str]] = None,
        on_miss: str = "raise",
        with_level: bool = False,
    ) -> Tuple[Any, ...]:
        """Marching cubes of the density at ``threshold`` (default ``cfg.isosurface_threshold``).

        Returns vertices ``[V, 3]`` float32 in world coordinates and faces ``[F, 3]`` int64, both
        on this module's device, with outward-facing winding. Raises
        :class:`~threestudio_like.geometry.isosurface.IsosurfaceError` when the density never
        reaches the threshold (the message names the density range and a value to try), unless
        ``on_miss="fit"`` chooses another level; ``with_level`` appends the level used
        (:class:`~threestudio_like.geometry.isosurface.IsosurfaceLevel`).
        """
        resolution = int(resolution or self.cfg.isosurface_resolution)
        threshold = self.cfg.isosurface_threshold if threshold is None else threshold
        r = float(self.cfg.radius)
        out = marching_cubes(
            lambda p: self.forward_density(p),
            resolution,
            (-r, -r, -r),
            (r, r, r),
            threshold,
            chunk=int(self.cfg.isosurface_chunk),
            device=self.device,
            on_miss=on_miss,
            with_level=True,
        )
        verts, faces, level = out
        out = (verts.to(self.device), faces.to(self.device))
        return (*out, level) if with_level else out
