"""The reference-object prior: a guidance with a known answer that needs no weights.

A small procedural object (analytic signed distances and colours; a face on the front at +x, a
tail on the back, front and back halves in different colours) is rendered by our own renderer at
the query cameras. The prior is the *exact* denoiser of those renders: for a candidate set
``{x_k}`` the posterior mean ``E[x_0 | x_t]`` is a softmax-weighted average
(:func:`~threestudio_like.guidance.distillation.exact_posterior_mean`). In the
``camera-conditioned`` mode the set is the single render at the query camera, so distillation
must reproduce the object — an end-to-end test of cameras, renderer, SDS plumbing and export with
a number (IoU) that can fail. The other modes of the Janus benchmark (front-biased unconditioned
views, view bins, joint multi-view sets; :mod:`threestudio_like.janus.modes`) only change which
candidates each query gets; classifier-free guidance adds an unconditional branch over renders of
procedural relatives of the object (:func:`variant_parts`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import find, register
from threestudio_like.base import BaseModule
from threestudio_like.cameras import c2w_from_spherical, deg2rad, rays_for_cameras
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.base import BaseGuidance
from threestudio_like.janus import modes as M

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


def variant_parts(variant: int):
    """``(primitives, back colour, yaw in degrees)`` of the reference object (``variant`` 0) or of
    one of its procedural relatives (``variant`` > 0, seeded): every primitive recoloured,
    resized (x0.7-1.3) and nudged, the face (eyes and nose) or the tail dropped at random, the
    whole turned by a random yaw. They are the "other objects" of the reference prior's
    unconditional data set."""
    if variant == 0:
        return _PRIMITIVES, _BACK_COLOUR, 0.0
    rng = random.Random(variant)
    drop_face, drop_tail = rng.random() < 0.5, rng.random() < 0.3
    prims = []
    for i, (kind, centre, size, _) in enumerate(_PRIMITIVES):
        if (drop_face and i in (2, 3, 4)) or (drop_tail and kind == "capsule"):
            continue
        shift = [rng.uniform(-0.05, 0.05) for _ in range(3)]
        centre = tuple(c + shift[j % 3] for j, c in enumerate(centre))
        factor = rng.uniform(0.7, 1.3)
        colour = tuple(rng.random() for _ in range(3))
        prims.append((kind, centre, tuple(x * factor for x in size), colour))
    back = tuple(rng.random() for _ in range(3))
    return prims, back, rng.uniform(0.0, 360.0)


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
        variant: int = 0
        """0: the reference object; k > 0: its k-th procedural relative (:func:`variant_parts`)."""

    cfg: Config

    def configure(self) -> None:
        self.primitives, self.back_colour, self.yaw_deg = variant_parts(self.cfg.variant)

    def _local(self, points: Tensor) -> Tensor:
        """World points in the object's own frame (undoes the variant's yaw)."""
        if self.yaw_deg == 0.0:
            return points
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        x, y = points[..., 0], points[..., 1]
        return torch.stack([c * x + s * y, -s * x + c * y, points[..., 2]], -1)

    def sdf(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """Signed distance to the object and the index of the closest primitive."""
        p = self._local(points)
        dists = torch.stack([_sdf_primitive(k, c, s, p) for k, c, s, _ in self.primitives], dim=-1)
        return dists.min(dim=-1)

    def occupancy(self, points: Tensor) -> Tensor:
        """Boolean inside-test, the ground truth for IoU."""
        return self.sdf(points)[0] < 0

    def colour(self, points: Tensor, nearest: Tensor) -> Tensor:
        palette = points.new_tensor([c for *_, c in self.primitives])
        rgb = palette[nearest]
        back = points.new_tensor(self.back_colour)
        is_back_body = (nearest == 0) & (self._local(points)[..., 0] < 0)
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
    """Exact-denoiser prior over renders of the bundled reference object (no weights).

    Modes (candidates per query, :mod:`threestudio_like.janus.modes`): ``camera-conditioned`` —
    the render at the query camera; ``unconditioned`` — the bank of renders at ``n_azimuth``
    uniform azimuths weighted by a front-biased von Mises prior (``kappa``), the query's azimuth
    ignored; ``view-binned`` — those in the query's front/side/back bin; ``multi-view-joint`` —
    batches of groups of ``n_view`` views 360/n_view degrees apart (``data.n_view``), scored
    jointly against the bank's sets of ``n_view`` views at every rotation. With
    ``guidance_scale != 1`` the unconditional branch is the exact denoiser over the bank's renders
    of ``n_other`` procedural relatives of the object plus ours (``n_other_azimuth`` uniform
    azimuths each), combined by classifier-free guidance.

    Banks are rendered once per (resolution, elevation bin) at ``bank_camera_distance`` and
    ``bank_fovy_deg`` (lazily, cached); a query's elevation picks the nearest bin and its distance
    and field of view are matched by zooming the bank's images about their centre.
    """

    @dataclass
    class Config(BaseGuidance.Config):
        mode: str = "camera-conditioned"
        """camera-conditioned | unconditioned | view-binned | multi-view-joint (see the class doc)."""
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
        kappa: float = 2.0
        """unconditioned / view-binned: concentration of the front-biased von Mises view prior."""
        n_view: int = 4
        """multi-view-joint: views per group (must equal data.n_view)."""
        n_azimuth: int = 36
        """Bank: renders of the object at this many uniform azimuths per elevation bin."""
        n_other: int = 8
        """CFG: other objects (procedural relatives) in the unconditional data set."""
        n_other_azimuth: int = 12
        """CFG: uniform azimuths per object in the unconditional data set (divides n_azimuth)."""
        bank_elevation_step: float = 10.0
        """Bank: elevation bin width in degrees."""
        bank_camera_distance: float = 2.0
        """Bank: camera distance of the bank renders."""
        bank_fovy_deg: float = 45.0
        """Bank: vertical field of view of the bank renders."""

    cfg: Config
    MODES = M.MODES

    def configure(self) -> None:
        super().configure()
        c = self.cfg
        if c.mode not in self.MODES:
            raise ValueError(
                f"reference-object-guidance mode '{c.mode}' is not available; choose one of {', '.join(self.MODES)}."
            )
        if c.update_rule not in ("sds", "sjc"):
            raise ValueError(f"update_rule must be sds or sjc, got {c.update_rule!r}.")
        if c.n_azimuth % c.n_other_azimuth:
            raise ValueError(f"n_other_azimuth={c.n_other_azimuth} must divide n_azimuth={c.n_azimuth}.")
        if c.mode == "multi-view-joint" and (c.n_azimuth % c.n_view or c.n_other_azimuth % c.n_view):
            raise ValueError(f"multi-view-joint: n_view={c.n_view} must divide n_azimuth and n_other_azimuth.")
        if c.bank_elevation_step <= 0:
            raise ValueError("bank_elevation_step must be positive.")
        self.renderer = self._make_renderer(ReferenceObjectGeometry(c.geometry))
        self._grid_ready_for: Optional[torch.device] = None
        self._others: List[Any] = []  # renderers of the other objects (built on first CFG use)
        self._others_ready_for: Optional[torch.device] = None
        self._banks: Dict[Tuple[str, int, int], Dict[str, Tensor]] = {}

    def _make_renderer(self, geometry: ReferenceObjectGeometry, grid_resolution: int = 64):
        material = find("no-material")({"color_activation": "none"})
        background = find("solid-color-background")({"color": list(self.cfg.background_color)})
        renderer = find("nerf-volume-renderer")(
            {
                "radius": geometry.cfg.radius,
                "num_samples_per_ray": self.cfg.num_samples_per_ray,
                "randomized": False,
                "eval_chunk_size": self.cfg.render_chunk,
                "occ_grid_resolution": grid_resolution,
            },
            geometry=geometry,
            material=material,
            background=background,
        )
        renderer.eval()
        return renderer

    @staticmethod
    def _fill_grid(renderer, device: torch.device) -> None:
        renderer.to(device)
        # A few full passes (random points inside every cell) so thin parts are not missed.
        for _ in range(4):
            renderer.update_occupancy_grid(0, force=True)

    def _prepare_grid(self, device: torch.device) -> None:
        if self._grid_ready_for == device:
            return
        self._fill_grid(self.renderer, device)
        self._grid_ready_for = device

    def _prepare_others(self, device: torch.device) -> None:
        if not self._others:
            geo_cfg = dict(self.cfg.geometry)
            self._others = [
                self._make_renderer(ReferenceObjectGeometry({**geo_cfg, "variant": k}), grid_resolution=32)
                for k in range(1, self.cfg.n_other + 1)
            ]
        if self._others_ready_for != device:
            for renderer in self._others:
                self._fill_grid(renderer, device)
            self._others_ready_for = device

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

    # ------------------------------------------------------------------ the bank of candidates
    def bank_azimuths(self) -> Tensor:
        """``[n_azimuth]`` azimuths (degrees) of the bank's renders of our object."""
        return torch.arange(self.cfg.n_azimuth, dtype=torch.float32) * 360.0 / self.cfg.n_azimuth

    @torch.no_grad()
    def _turntable(self, renderer, n: int, elevation_deg: float, device: torch.device) -> Tensor:
        """``[n, 3, R, R]`` prior-space renders at n uniform azimuths on the bank's camera circle."""
        r = self.cfg.resolution
        az = torch.arange(n, dtype=torch.float32, device=device) * (2 * math.pi / n)
        elev = torch.full_like(az, math.radians(elevation_deg))
        c2w = c2w_from_spherical(elev, az, torch.full_like(az, self.cfg.bank_camera_distance))
        fovy = torch.full_like(az, math.radians(self.cfg.bank_fovy_deg))
        rays_o, rays_d = rays_for_cameras(c2w, fovy, r, r)
        return self.to_prior_space(renderer(rays_o, rays_d)["comp_rgb"])

    def bank(self, elevation_bin: int, device: torch.device, unconditional: bool = False) -> Dict[str, Tensor]:
        """The cached renders of one elevation bin: ``ours`` ``[n_azimuth, 3, R, R]`` and, when
        ``unconditional``, ``uncond``: the unconditional candidates (``[(n_other + 1) *
        n_other_azimuth, 3, R, R]``, or joint sets ``[..., n_view, 3, R, R]``)."""
        c = self.cfg
        entry = self._banks.setdefault((str(device), c.resolution, elevation_bin), {})
        elevation = elevation_bin * c.bank_elevation_step
        if "ours" not in entry:
            self._prepare_grid(device)
            entry["ours"] = self._turntable(self.renderer, c.n_azimuth, elevation, device)
        if unconditional and "uncond" not in entry:
            self._prepare_others(device)
            views = [entry["ours"][:: c.n_azimuth // c.n_other_azimuth]]
            views += [self._turntable(o, c.n_other_azimuth, elevation, device) for o in self._others]
            entry["uncond"] = M.unconditional_candidates(c.mode, torch.stack(views), c.n_view)
        return entry

    @staticmethod
    def _zoom(images: Tensor, magnification: float) -> Tensor:
        """``images`` ``[K, ..., 3, R, R]`` magnified about the centre (border padding: the
        background), so a bank render matches a closer or narrower camera."""
        if abs(magnification - 1.0) < 1e-6:
            return images
        flat = images.reshape(-1, *images.shape[-3:])
        theta = flat.new_tensor([[1.0 / magnification, 0.0, 0.0], [0.0, 1.0 / magnification, 0.0]])
        grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(images.shape)

    @torch.no_grad()
    def candidates(self, c2w: Tensor, fovy: Tensor, n_views: int = 1) -> Dict[str, Any]:
        """The candidates of each query of a batch of cameras (``c2w`` ``[B, 4, 4]``, ``fovy``
        ``[B]`` degrees): ``cond = (data, log_prior)`` and ``uncond`` data (None at
        ``guidance_scale == 1``), per query (per group of ``n_view`` views for
        multi-view-joint), with the query ``azimuth``/``elevation`` (degrees, from ``c2w``) and
        the ``elevation_bin`` of each query's bank."""
        c = self.cfg
        mode, device = c.mode, c2w.device
        pos = c2w[:, :3, 3].float()
        dist = pos.norm(dim=-1).clamp_min(1e-6)
        elevation = torch.rad2deg(torch.asin((pos[:, 2] / dist).clamp(-1, 1)))
        azimuth = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0]))
        fovy = fovy.float().to(device).expand(pos.shape[0])
        rows = torch.arange(pos.shape[0], device=device)
        if mode == "multi-view-joint":
            if n_views != c.n_view or pos.shape[0] % c.n_view:
                raise ValueError(
                    f"multi-view-joint needs batches of groups of {c.n_view} views 360/{c.n_view} degrees "
                    f"apart (data.n_view={c.n_view}, batch_size a multiple of it); got n_views={n_views}."
                )
            rows = rows[:: c.n_view]  # one query per group: its views share elevation, distance, fov
        bins = torch.round(elevation[rows] / c.bank_elevation_step).long().tolist()
        mag = (c.bank_camera_distance * math.tan(math.radians(c.bank_fovy_deg) / 2)
               / (dist[rows] * torch.tan(torch.deg2rad(fovy[rows]) / 2))).tolist()
        at_query = ours = uncond = None
        if mode == "camera-conditioned":
            at_query = self.to_prior_space(self.render_reference(c2w, fovy, c.resolution, c.resolution))
        else:
            ours = torch.stack([self._zoom(self.bank(b, device)["ours"], m) for b, m in zip(bins, mag)])
        if c.guidance_scale != 1.0:
            uncond = torch.stack([self._zoom(self.bank(b, device, True)["uncond"], m) for b, m in zip(bins, mag)])
        bank_az = self.bank_azimuths().to(device)
        cond = M.conditional_candidates(
            mode, ours if ours is not None else at_query, bank_az, azimuth[rows], c.kappa, c.n_view,
            at_query=at_query, per_query=True,
        )
        return {"cond": cond, "uncond": uncond, "azimuth": azimuth, "elevation": elevation,
                "elevation_bin": bins, "bank_azimuth": bank_az}

    def __call__(
        self,
        rgb: Tensor,
        condition: Any = None,
        *,
        c2w: Tensor,
        fovy: Tensor,
        rgb_as_latents: bool = False,
        n_views: int = 1,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        if rgb_as_latents:
            raise ValueError("The reference-object prior works on RGB renders (rgb_as_latents=False).")
        c = self.cfg
        latents = self.to_prior_space(rgb)
        cand = self.candidates(c2w, fovy, n_views)
        group = c.n_view if c.mode == "multi-view-joint" else 1
        if group > 1:  # one joint sample (and one timestep) per group of views
            latents = latents.reshape(-1, group, *latents.shape[1:])

        def predict_noise(x_t: Tensor, t: Tensor) -> Tensor:
            k = x_t.shape[0] // latents.shape[0]  # SJC: k noise draws per view, stacked draw-major
            data, log_prior = cand["cond"]
            cond = (_tile(data, k), _tile(log_prior, k))
            return M.guided_noise(x_t, t, self.alphas_cumprod, cond, _tile(cand["uncond"], k), c.guidance_scale)

        if c.update_rule == "sjc":
            out = D.sjc_update(
                latents, predict_noise, self.alphas_cumprod, self.min_step, self.max_step,
                c.n_perturb, c.var_red, c.shared_timestep,
            )
        else:
            out = self.sds(latents, predict_noise)
        if group > 1:  # the loss is normalised per group: back to per view, like the other modes
            for key in [k for k in out if k.startswith("loss_")]:
                out[key] = out[key] / group
        return out


def _tile(x: Optional[Tensor], k: int) -> Optional[Tensor]:
    """``x`` repeated ``k`` times along the batch (SJC's draw-major stacking)."""
    if x is None:
        return None
    return x.repeat(k, *([1] * (x.dim() - 1)))
