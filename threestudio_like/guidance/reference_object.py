"""The reference-object prior: a guidance with a known answer that needs no weights.

A small procedural object (analytic signed distances and colours; a face on the front at +x, a
tail on the back, front and back halves in different colours) is rendered by our own renderer at
the query cameras. The prior is the *exact* denoiser of those renders: for a candidate set
``{x_k}`` the posterior mean ``E[x_0 | x_t]`` is a softmax-weighted average
(:func:`~threestudio_like.guidance.distillation.exact_posterior_mean`). In the
``camera-conditioned`` mode the set is the single render at the query camera, so distillation
must reproduce the object — an end-to-end test of cameras, renderer, SDS plumbing and export with
a number (IoU) that can fail. Other modes (front-biased unconditioned views, view bins, joint
multi-view sets) only change which candidates each query gets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import find, register
from threestudio_like.base import BaseModule
from threestudio_like.cameras import deg2rad, rays_for_cameras
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.base import BaseGuidance

# (kind, centre, size, colour): spheres have a radius, ellipsoids radii, capsules an end point
# and a radius. The front (+x) carries a face; the back (-x) a tail.
_PRIMITIVES: List[Tuple[str, Tuple[float, ...], Tuple[float, ...], Tuple[float, float, float]]] = [
    ("ellipsoid", (0.0, 0.0, -0.05), (0.42, 0.32, 0.34), (0.95, 0.55, 0.12)),  # body (front colour)
    ("sphere", (0.36, 0.0, 0.26), (0.21,), (0.96, 0.86, 0.70)),  # head
    ("sphere", (0.53, 0.085, 0.33), (0.05,), (0.05, 0.05, 0.05)),  # eye
    ("sphere", (0.53, -0.085, 0.33), (0.05,), (0.05, 0.05, 0.05)),  # eye
    ("sphere", (0.57, 0.0, 0.24), (0.05,), (0.85, 0.10, 0.10)),  # nose
    ("capsule", (-0.35, 0.0, 0.0, -0.62, 0.0, 0.38), (0.075,), (0.10, 0.45, 0.15)),  # tail
]
_BACK_COLOUR = (0.15, 0.35, 0.90)  # body colour behind the x = 0 plane


def _sdf_primitive(kind: str, centre: Tuple[float, ...], size: Tuple[float, ...], p: Tensor) -> Tensor:
    if kind == "sphere":
        return (p - p.new_tensor(centre)).norm(dim=-1) - size[0]
    if kind == "ellipsoid":
        # A standard first-order distance bound for ellipsoids (exact on the axes).
        radii = p.new_tensor(size)
        q = (p - p.new_tensor(centre)) / radii
        k0 = q.norm(dim=-1)
        k1 = (q / radii).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1.0) / k1
    if kind == "capsule":
        a, b = p.new_tensor(centre[:3]), p.new_tensor(centre[3:])
        ab = b - a
        h = (((p - a) * ab).sum(-1) / (ab * ab).sum()).clamp(0, 1)
        return (p - a - h[..., None] * ab).norm(dim=-1) - size[0]
    raise ValueError(kind)


@register("reference-object-geometry")
class ReferenceObjectGeometry(BaseModule):
    """The procedural reference object as a geometry: analytic density and colour features."""

    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0
        """Half size of the scene box the renderer marches through."""
        density_scale: float = 200.0
        """Density deep inside the object."""
        softness: float = 0.01
        """Width of the surface transition (world units)."""
        isosurface_threshold: float = 100.0
        """Density level at the surface (half of density_scale)."""

    cfg: Config

    def sdf(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Signed distance to the object and the index of the closest primitive."""
        dists = torch.stack([_sdf_primitive(k, c, s, points) for k, c, s, _ in _PRIMITIVES], dim=-1)
        return dists.min(dim=-1)

    def occupancy(self, points: Tensor) -> Tensor:
        """Boolean inside-test, the ground truth for IoU."""
        return self.sdf(points)[0] < 0

    def colour(self, points: Tensor, nearest: Tensor) -> Tensor:
        palette = points.new_tensor([c for *_, c in _PRIMITIVES])
        rgb = palette[nearest]
        back = points.new_tensor(_BACK_COLOUR)
        is_back_body = (nearest == 0) & (points[..., 0] < 0)
        return torch.where(is_back_body[..., None], back.expand_as(rgb), rgb)

    def forward_density(self, points: Tensor) -> Tensor:
        sdf, _ = self.sdf(points)
        return (self.cfg.density_scale * torch.sigmoid(-sdf / self.cfg.softness))[..., None]

    def forward(self, points: Tensor, output_normal: bool = False) -> Dict[str, Tensor]:
        sdf, nearest = self.sdf(points)
        density = (self.cfg.density_scale * torch.sigmoid(-sdf / self.cfg.softness))[..., None]
        return {"density": density, "features": self.colour(points, nearest)}

    def export(self, points: Tensor) -> Dict[str, Tensor]:
        return {"features": self.colour(points, self.sdf(points)[1])}

    def isosurface(self, resolution: Optional[int] = None, threshold: Optional[float] = None):
        """Marching-cubes mesh of the object (``vertices [V, 3]``, ``faces [F, 3]``)."""
        from threestudio_like.geometry.isosurface import marching_cubes

        r = self.cfg.radius
        return marching_cubes(
            lambda x: self.forward_density(x)[..., 0],
            resolution or 128,
            (-r, -r, -r),
            (r, r, r),
            self.cfg.isosurface_threshold if threshold is None else threshold,
        )


@register("reference-object-guidance")
class ReferenceObjectGuidance(BaseGuidance):
    """Exact-denoiser prior over renders of the bundled reference object (no weights)."""

    @dataclass
    class Config(BaseGuidance.Config):
        mode: str = "camera-conditioned"
        """Which candidates each query view gets: camera-conditioned = the render at that camera."""
        resolution: int = 64
        """Renders are resized to this square size before noising (the prior's image space)."""
        num_samples_per_ray: int = 256
        """Step-size setting of the renderer that renders the reference object."""
        background_color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
        """Background of the reference renders: must match the system's background."""
        render_chunk: int = 65536
        """Rays per chunk when rendering the reference object."""
        geometry: dict = field(default_factory=dict)
        """Overrides for the reference-object geometry (density_scale, softness)."""
        update_rule: str = "sds"
        """sds | sjc (Score Jacobian Chaining with perturb-and-average scoring)."""
        n_perturb: int = 1
        """SJC: noise draws averaged per view."""
        var_red: bool = True
        """SJC: variance-reduced gradient (D - y) / sigma instead of (D - z) / sigma."""

    cfg: Config
    MODES = ("camera-conditioned",)

    def configure(self) -> None:
        super().configure()
        if self.cfg.mode not in self.MODES:
            raise ValueError(
                f"reference-object-guidance mode '{self.cfg.mode}' is not available; "
                f"choose one of {', '.join(self.MODES)}."
            )
        if self.cfg.update_rule not in ("sds", "sjc"):
            raise ValueError(f"update_rule must be sds or sjc, got {self.cfg.update_rule!r}.")
        if self.cfg.guidance_scale != 1.0:
            raise ValueError(
                "The camera-conditioned reference prior has no unconditional branch: "
                "set guidance_scale: 1.0."
            )
        geometry = ReferenceObjectGeometry(self.cfg.geometry)
        material = find("no-material")({"color_activation": "none"})
        background = find("solid-color-background")({"color": list(self.cfg.background_color)})
        self.renderer = find("nerf-volume-renderer")(
            {
                "radius": geometry.cfg.radius,
                "num_samples_per_ray": self.cfg.num_samples_per_ray,
                "randomized": False,
                "eval_chunk_size": self.cfg.render_chunk,
                "occ_grid_resolution": 64,
            },
            geometry=geometry,
            material=material,
            background=background,
        )
        self.renderer.eval()
        self._grid_ready_for: Optional[torch.device] = None

    def _prepare_grid(self, device: torch.device) -> None:
        if self._grid_ready_for == device:
            return
        self.renderer.to(device)
        # A few full passes (random points inside every cell) so thin parts are not missed.
        for _ in range(4):
            self.renderer.update_occupancy_grid(0, force=True)
        self._grid_ready_for = device

    @torch.no_grad()
    def render_reference(self, c2w: Tensor, fovy_deg: Tensor, height: int, width: int) -> Tensor:
        """Renders ``[B, H, W, 3]`` of the reference object at the given cameras."""
        self._prepare_grid(c2w.device)
        rays_o, rays_d = rays_for_cameras(c2w.float(), deg2rad(fovy_deg.float()), height, width)
        return self.renderer(rays_o, rays_d)["comp_rgb"]

    def to_prior_space(self, rgb: Tensor) -> Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> ``[B, 3, R, R]`` in [-1, 1] at the prior's resolution."""
        x = rgb.permute(0, 3, 1, 2)
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, (r, r), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def __call__(
        self,
        rgb: Tensor,
        condition: Any = None,
        *,
        c2w: Tensor,
        fovy: Tensor,
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        if rgb_as_latents:
            raise ValueError("The reference-object prior works on RGB renders (rgb_as_latents=False).")
        r = self.cfg.resolution
        target = self.to_prior_space(self.render_reference(c2w, fovy, r, r))
        latents = self.to_prior_space(rgb)

        def predict_noise(x_t: Tensor, t: Tensor) -> Tensor:
            alpha, sigma = D.alpha_sigma(self.alphas_cumprod, t, x_t)
            candidates = target.repeat(x_t.shape[0] // target.shape[0], 1, 1, 1)  # SJC: k draws per view
            x0 = D.exact_posterior_mean(x_t, alpha, sigma, candidates[:, None])
            return D.eps_from_x0(x_t, x0, t, self.alphas_cumprod)

        if self.cfg.update_rule == "sjc":
            return D.sjc_update(
                latents, predict_noise, self.alphas_cumprod, self.min_step, self.max_step,
                self.cfg.n_perturb, self.cfg.var_red, self.cfg.shared_timestep,
            )
        return self.sds(latents, predict_noise)
