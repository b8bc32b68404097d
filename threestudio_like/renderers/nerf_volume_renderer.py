"""NeRF volume renderer: occupancy-grid ray marching + alpha compositing (threestudio semantics).

Rays are marched with a uniform step ``render_step_size = 1.732 * 2 * radius / num_samples_per_ray``
through nerfacc's ``OccGridEstimator`` (32^3 cells over the box ``[-radius, radius]^3``). On CUDA
with nerfacc's extension the marching and compositing are nerfacc's kernels; everywhere else the
torch twins in :mod:`threestudio_like.renderers.occupancy` run the same maths on the same grid.
Either way the occupancy grid is refreshed from the geometry's density every
``occ_update_every_n`` training steps (nerfacc's EMA update, pure torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Literal, Optional

import nerfacc
import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseModule
from threestudio_like.errors import at_least, in_range
from threestudio_like.renderers import occupancy

# Per-ray outputs of _render_flat (concatenated over evaluation chunks); the rest is per sample.
_PER_RAY = ("comp_rgb_fg", "opacity", "depth", "z_variance", "comp_normal")
# Keyword arguments of forward() that are never handed on to the material.
_RESERVED = {"features", "viewdirs", "positions", "shading_normal", "light_positions", "n_views"}


@dataclass
class _Parts:
    """Plain holder: keeps geometry/material/background out of the renderer's registered children
    (the system owns and registers them, so their parameters appear once in its state_dict)."""

    geometry: Any
    material: Any
    background: Any


def _chunked(fn: Callable[..., Any], n: int, chunk: int, *args: Tensor, **kwargs: Any) -> Any:
    """Call ``fn`` on row-chunks of ``args`` (length ``n``) and concatenate tensor/dict outputs."""
    if chunk <= 0 or n <= chunk:
        return fn(*args, **kwargs)
    outs = [fn(*(a[i : i + chunk] for a in args), **kwargs) for i in range(0, n, chunk)]
    if isinstance(outs[0], dict):
        keys = [k for k, v in outs[0].items() if isinstance(v, Tensor)]
        return {k: torch.cat([o[k] for o in outs], 0) for k in keys}
    return torch.cat(outs, 0)


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(BaseModule):
    """Volume renderer of an implicit geometry with a material and a background.

    Build with ``NeRFVolumeRenderer(cfg, geometry=..., material=..., background=...)``; call with
    rays ``[B, H, W, 3]``. Outputs are ``[B, H, W, C]`` images (``comp_rgb``, ``comp_rgb_fg``,
    ``comp_rgb_bg``, ``opacity``, ``depth``, ``z_variance``, ``comp_normal`` when normals are
    computed) and, in training, the packed per-sample tensors regularisers use.
    """

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        """Half size of the scene box ``[-radius, radius]^3``."""
        num_samples_per_ray: int = 512
        """Sets the step: ``render_step_size = 1.732 * 2 * radius / num_samples_per_ray``."""
        randomized: bool = True
        """Stratified jitter of the sample lattice in training."""
        eval_chunk_size: int = 160000
        """Evaluation: rays per chunk (and points per network call)."""
        grid_prune: bool = True
        """Skip empty space with the occupancy grid (refreshed during training)."""
        prune_alpha_threshold: bool = True
        """With grid_prune: also drop samples with alpha < alpha_threshold and occluded samples."""
        alpha_threshold: float = 0.01
        """nerfacc's ``alpha_thre`` (capped by the grid's mean occupancy, as nerfacc does)."""
        early_stop_eps: float = 1e-4
        """Drop samples behind transmittance < this (nerfacc's early termination)."""
        occ_grid_resolution: int = 32
        """Occupancy grid cells per axis (one level)."""
        occ_threshold: float = 0.01
        """Cells with EMA occupancy (density * step) above this stay occupied."""
        occ_update_every_n: int = 16
        """Refresh the occupancy grid every N training steps."""
        occ_warmup_steps: int = 256
        """Before this step every cell is re-evaluated; later 1/4 random + 1/4 occupied cells."""
        occ_ema_decay: float = 0.95
        """EMA decay of cell occupancy."""
        near_plane: float = 0.0
        """Samples start at this distance along the ray."""
        far_plane: float = 1e10
        """Samples end at this distance along the ray."""
        return_comp_normal: bool = False
        """Training: compute normals and output ``comp_normal`` even if the material needs none."""
        return_normal_perturb: bool = False
        """Training: output normals at points jittered by N(0, 0.01) (``normal_perturb``)."""
        backend: Literal["auto", "nerfacc", "torch"] = "auto"

        def validate(self) -> None:
            for name in ("num_samples_per_ray", "eval_chunk_size", "occ_grid_resolution", "occ_update_every_n"):
                at_least(name, getattr(self, name), 1)
            in_range("radius", self.radius, 0, float("inf"), open_low=True)
        """Ray marcher: auto (nerfacc kernels on CUDA when they load, else torch) | nerfacc | torch."""

    cfg: Config

    def configure(self, geometry: Any, material: Any, background: Any) -> None:
        self._parts = _Parts(geometry, material, background)
        r = self.cfg.radius
        self.register_buffer(
            "bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32)
        )
        self.estimator = nerfacc.OccGridEstimator(
            roi_aabb=self.bbox.view(-1), resolution=self.cfg.occ_grid_resolution, levels=1
        )
        # An unrefreshed grid prunes nothing: all cells occupied, occupancy 0 (so the alpha
        # threshold, capped by the mean occupancy, is off too). The first update replaces both.
        self.estimator.binaries.fill_(True)
        if not self.cfg.grid_prune:
            self.estimator.occs.fill_(1.0)
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray

    # parts ---------------------------------------------------------------------------------
    @property
    def geometry(self) -> Any:
        return self._parts.geometry

    @property
    def material(self) -> Any:
        return self._parts.material

    @property
    def background(self) -> Any:
        return self._parts.background

    def set_geometry(self, geometry: Any) -> None:
        self._parts.geometry = geometry

    def set_material(self, material: Any) -> None:
        self._parts.material = material

    def set_background(self, background: Any) -> None:
        self._parts.background = background

    def train(self, mode: bool = True) -> "NeRFVolumeRenderer":
        """Switch the renderer and its (unregistered) parts between training and evaluation."""
        super().train(mode)
        for part in (self.geometry, self.material, self.background):
            if isinstance(part, torch.nn.Module):
                part.train(mode)
        return self

    # occupancy grid ------------------------------------------------------------------------
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Refresh the occupancy grid every ``occ_update_every_n`` training steps."""
        if self.cfg.grid_prune and self.training and not on_load_weights:
            self.update_occupancy_grid(global_step)

    @torch.no_grad()
    def update_occupancy_grid(self, global_step: int, force: bool = False) -> None:
        """nerfacc's EMA update with ``occ = density * render_step_size`` (pure torch, any device),
        with repeated cells merged deterministically (:func:`occupancy.update_occupancy_ema`)."""

        def occ_eval_fn(x: Tensor) -> Tensor:
            return self.geometry.forward_density(x) * self.render_step_size

        if force or global_step % self.cfg.occ_update_every_n == 0:
            occupancy.update_occupancy_ema(
                self.estimator, global_step, occ_eval_fn, occ_thre=self.cfg.occ_threshold,
                ema_decay=self.cfg.occ_ema_decay, warmup_steps=self.cfg.occ_warmup_steps,
            )

    # rendering -----------------------------------------------------------------------------
    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        light_positions: Optional[Tensor] = None,
        bg_color: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        """Render rays ``[B, H, W, 3]``.

        ``light_positions`` ``[B, 3]`` or ``[B, H, W, 3]`` (default: at the camera); ``bg_color``
        ``[B, C]``, ``[B, H, W, C]`` or ``[C]`` replaces the background module. ``n_views`` goes to the
        background; other keyword arguments (``shading``, ``ambient_ratio``, ...) go to the
        material, which ignores what it does not know (c2w, fovy, ...).
        """
        batch, height, width = rays_o.shape[:3]
        n_rays = batch * height * width
        rays_o_flat = rays_o.reshape(-1, 3)
        rays_d_flat = F.normalize(rays_d.reshape(-1, 3), dim=-1)
        if light_positions is None:
            lights_flat = rays_o_flat
        elif light_positions.dim() == 4:  # per pixel [B, H, W, 3]
            lights_flat = light_positions.reshape(-1, 3)
        else:  # per view [B, 3]
            lights_flat = light_positions.reshape(batch, 1, 3).expand(-1, height * width, -1)
            lights_flat = lights_flat.reshape(-1, 3)
        material_kwargs = {k: v for k, v in kwargs.items() if k not in _RESERVED}

        if self.training:
            out = self._render_flat(rays_o_flat, rays_d_flat, lights_flat, material_kwargs)
        else:
            chunk = self.cfg.eval_chunk_size if self.cfg.eval_chunk_size > 0 else n_rays
            pieces = [
                self._render_flat(
                    rays_o_flat[i : i + chunk],
                    rays_d_flat[i : i + chunk],
                    lights_flat[i : i + chunk],
                    material_kwargs,
                )
                for i in range(0, n_rays, chunk)
            ]
            out = {k: torch.cat([p[k] for p in pieces], 0) for k in pieces[0] if k in _PER_RAY}

        # background
        if bg_color is None:
            dirs = rays_d_flat.view(batch, height, width, 3)
            bg = self.background(dirs=dirs, n_views=kwargs.get("n_views", 1))
        else:
            bg = bg_color.to(out["comp_rgb_fg"])
            if bg.dim() == 1:
                bg = bg.expand(batch, height, width, -1)
            elif bg.dim() == 2:
                bg = bg[:, None, None, :].expand(-1, height, width, -1)
        bg_flat = bg.reshape(n_rays, -1)
        comp_rgb = out["comp_rgb_fg"] + bg_flat * (1.0 - out["opacity"])

        result = {
            "comp_rgb": comp_rgb.view(batch, height, width, -1),
            "comp_rgb_fg": out["comp_rgb_fg"].view(batch, height, width, -1),
            "comp_rgb_bg": bg.reshape(batch, height, width, -1),
            "opacity": out["opacity"].view(batch, height, width, 1),
            "depth": out["depth"].view(batch, height, width, 1),
            "z_variance": out["z_variance"].view(batch, height, width, 1),
        }
        if "comp_normal" in out:
            result["comp_normal"] = out["comp_normal"].view(batch, height, width, 3)
        if self.training:
            for key, value in out.items():
                if key not in _PER_RAY:
                    result[key] = value
        return result

    def _render_flat(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        lights: Tensor,
        material_kwargs: Dict[str, Any],
    ) -> Dict[str, Tensor]:
        """March and composite flat rays ``[N, 3]``; per-ray outputs ``[N, C]`` + per-sample ones."""
        n_rays = rays_o.shape[0]
        geometry, material = self.geometry, self.material
        chunk = 0 if self.training else self.cfg.eval_chunk_size
        use_nerfacc = occupancy.use_nerfacc_kernels(rays_o.device, self.cfg.backend)

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            t_mid = (t_starts + t_ends)[:, None] * 0.5
            points = rays_o[ray_indices] + rays_d[ray_indices] * t_mid
            return _chunked(geometry.forward_density, points.shape[0], chunk, points)[:, 0]

        prune = self.cfg.grid_prune and self.cfg.prune_alpha_threshold
        with torch.no_grad():
            ray_indices, t_starts, t_ends = occupancy.occgrid_sampling(
                self.estimator,
                rays_o,
                rays_d,
                sigma_fn=sigma_fn if prune else None,
                near_plane=self.cfg.near_plane,
                far_plane=self.cfg.far_plane,
                render_step_size=self.render_step_size,
                early_stop_eps=self.cfg.early_stop_eps if prune else 0.0,
                alpha_thre=self.cfg.alpha_threshold if prune else 0.0,
                stratified=self.training and self.cfg.randomized,
                use_nerfacc=use_nerfacc,
            )
        if ray_indices.numel() == 0:
            # One zero-length sample keeps the graph (and the networks' call shapes) non-empty.
            ray_indices = torch.zeros(1, dtype=torch.long, device=rays_o.device)
            t_starts = torch.zeros(1, dtype=rays_o.dtype, device=rays_o.device)
            t_ends = t_starts.clone()

        t_points = (t_starts + t_ends)[:, None] * 0.5
        t_intervals = (t_ends - t_starts)[:, None]
        t_dirs = rays_d[ray_indices]
        points = rays_o[ray_indices] + t_dirs * t_points
        want_normal = bool(
            getattr(material, "requires_normal", False)
            or (self.training and (self.cfg.return_comp_normal or self.cfg.return_normal_perturb))
        )
        geo_out = _chunked(geometry, points.shape[0], chunk, points, output_normal=want_normal)
        shading_normal = geo_out.get("shading_normal", geo_out.get("normal"))

        def shade(features: Tensor, positions: Tensor, viewdirs: Tensor, lights_: Tensor,
                  normals: Optional[Tensor] = None) -> Tensor:
            return material(features=features, viewdirs=viewdirs, positions=positions,
                            shading_normal=normals, light_positions=lights_, **material_kwargs)

        shade_args = [geo_out["features"], points, t_dirs, lights[ray_indices]]
        if shading_normal is not None:
            shade_args.append(shading_normal)
        rgb = _chunked(shade, points.shape[0], chunk, *shade_args)

        weights = occupancy.render_weight_from_density(
            t_starts, t_ends, geo_out["density"][:, 0], ray_indices, n_rays, use_nerfacc=use_nerfacc
        )
        acc = occupancy.accumulate_along_rays
        opacity = acc(weights, None, ray_indices, n_rays)
        depth = acc(weights, t_points, ray_indices, n_rays)
        comp_rgb_fg = acc(weights, rgb, ray_indices, n_rays)
        z_variance = acc(weights, (t_points - depth[ray_indices]) ** 2, ray_indices, n_rays)
        out = {
            "comp_rgb_fg": comp_rgb_fg,
            "opacity": opacity,
            "depth": depth,
            "z_variance": z_variance,
        }
        if "normal" in geo_out:
            comp_normal = F.normalize(acc(weights, geo_out["normal"], ray_indices, n_rays), dim=-1)
            out["comp_normal"] = (comp_normal + 1.0) * 0.5 * opacity
        if self.training:
            out.update(
                {
                    "weights": weights[:, None],
                    "t_points": t_points,
                    "t_positions": t_points,
                    "t_intervals": t_intervals,
                    "t_dirs": t_dirs,
                    "ray_indices": ray_indices,
                    "points": points,
                }
            )
            for key, value in geo_out.items():
                out.setdefault(key, value)
            if self.cfg.return_normal_perturb and "normal" in geo_out:
                jittered = points + torch.randn_like(points) * 1e-2
                out["normal_perturb"] = geometry(jittered, output_normal=True)["normal"]
        return out

