"""The reference-object prior: a guidance with a known answer that needs no weights.

A small procedural object (analytic signed distances and colours; a face on the front at +x, a
tail on the back, front and back halves in different colours) is rendered by our own renderer at
the query cameras. The prior is the *exact* denoiser of those renders: for a candidate set
``{x_k}`` the posterior mean ``E[x_0 | x_t]`` is a softmax-weighted average
(:func:`~threestudio_like.guidance.distillation.exact_posterior_mean`). In the
``camera-conditioned`` mode the set is the single render at the query camera, so distillation
must reproduce the object — an end-to-end test of cameras, renderer, SDS plumbing and export with
a number (IoU) that can fail. The other modes of the Janus benchmark (front-biased unconditioned
views, view bins, joint multi-view sets; :mod:`threestudio_like.reference.modes`) only change which
candidates each query gets; classifier-free guidance adds an unconditional branch over renders of
procedural relatives of the object (:func:`~threestudio_like.reference.object.variant_parts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import find, register
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad, rays_for_cameras
from threestudio_like.errors import ConfigError, FieldError
from threestudio_like.guidance.base import BaseGuidance
from threestudio_like.models.rgbd import axis_cosines, ldm3d_depth
from threestudio_like.reference import modes as M
from threestudio_like.reference.object import ReferenceObjectGeometry


CRISP_SURFACE = {"softness": 0.001, "density_scale": 3000.0}
"""The rendered object's density: a 0.001-wide transition to 3000. The geometry's own default
(0.01 to 200) is soft enough to fatten what the renders show: a grazing ray at distance d from a
part of radius R meets an optical depth of about ``200 sqrt(2 pi R 0.01) exp(-d / 0.01)``, so the
silhouette (opacity 1/2) lies 0.037 outside the surface for R = 0.3, more than a cell of the 64^3
IoU lattice. The object's visual hull from 40 views then has IoU 0.736 with the object itself;
with this surface it has 0.971, so a reconstruction that matches the renders also matches the
occupancy it is measured against."""

SURFACE_BAND_CELLS = 1.5
"""The reference renderer's occupancy grid marks every cell within this many cell half-diagonals
(plus the transition's width) of the surface, and skips those deeper inside: a ray that reaches
them has already crossed the opaque surface."""


@register("reference-object-guidance")
class ReferenceObjectGuidance(BaseGuidance):
    """Exact-denoiser prior over renders of the bundled reference object (no weights).

    Modes (candidates per query, :mod:`threestudio_like.reference.modes`): ``camera-conditioned`` —
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
        mode: M.Mode = "camera-conditioned"
        """camera-conditioned | unconditioned | view-binned | multi-view-joint (see the class doc)."""
        resolution: int = 64
        """Renders are resized to this square size before noising (the prior's image space)."""
        num_samples_per_ray: int = 2048
        """Step-size setting of the renderer that renders the reference object (step 2 sqrt(3) / n:
        0.0017 at 2048, fine enough for the crisp default surface)."""
        background_color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
        """Background of the reference renders: must match the system's background."""
        render_chunk: int = 65536
        """Rays per chunk when rendering the reference object."""
        geometry: dict = field(default_factory=lambda: dict(CRISP_SURFACE))
        """Overrides for the rendered reference-object geometry; default a crisp surface (see
        CRISP_SURFACE), so the renders show the object the IoU measures."""
        channels: Literal["rgb", "rgbd"] = "rgb"
        """rgb | rgbd: the prior's images are colour plus depth in LDM3D's convention (relative inverse
        depth normalised per image, background far), as an RGBD prior such as LDM3D sees them."""
        depth_convention: Literal["inverse", "metric"] = "inverse"
        """rgbd: how the *queries'* depth is converted (the candidates always use LDM3D's inverse
        convention); metric is wrong on purpose, to show that the convention matters."""
        update_rule: Literal["sds", "sjc"] = "sds"
        """sds | sjc (Score Jacobian Chaining with perturb-and-average scoring)."""
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

        def validate(self) -> None:
            if self.resolution < 1:
                raise FieldError("resolution", f"must be >= 1, got {self.resolution}")
            if self.n_azimuth < 1 or self.n_other_azimuth < 1 or self.n_azimuth % self.n_other_azimuth:
                raise FieldError("n_other_azimuth", f"must divide n_azimuth={self.n_azimuth}, got {self.n_other_azimuth}")
            if self.mode == "multi-view-joint" and (self.n_azimuth % self.n_view or self.n_other_azimuth % self.n_view):
                raise FieldError("n_view", f"must divide n_azimuth and n_other_azimuth in multi-view-joint mode, "
                                           f"got {self.n_view}")
            if self.bank_elevation_step <= 0:
                raise FieldError("bank_elevation_step", f"must be positive, got {self.bank_elevation_step}")

    cfg: Config
    MODES = M.MODES

    def configure(self) -> None:
        super().configure()
        c = self.cfg
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
        # A few full passes (random points inside every cell) so thin parts are not missed. The
        # points come from a fixed seed, apart from the run's generators: the grid is built on
        # first use, at whatever training step that is, and must neither differ nor shift the
        # step's draws (a resumed run builds it at another step than the uninterrupted one).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for _ in range(4):
                renderer.update_occupancy_grid(0, force=True)
        # Random points can miss the sliver of a crisp surface in a cell; the distances cannot.
        near, deep = _surface_band(renderer)
        renderer.estimator.binaries = (renderer.estimator.binaries | near) & ~deep

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

    def render_input(self, out: Dict[str, Tensor]) -> Tensor:
        """Colour, plus depth and opacity in the ``rgbd`` mode (``[B, H, W, 3 or 5]``)."""
        if self.cfg.channels == "rgbd":
            return torch.cat([out["comp_rgb"], out["depth"], out["opacity"]], -1)
        return out["comp_rgb"]

    @torch.no_grad()
    def render_reference(self, c2w: Tensor, fovy_deg: Tensor, height: int, width: int) -> Tensor:
        """Renders ``[B, H, W, 3]`` (``rgbd``: ``[B, H, W, 5]``, :meth:`render_input`) of the reference
        object at the given cameras."""
        self._prepare_grid(c2w.device)
        rays_o, rays_d = rays_for_cameras(c2w.float(), deg2rad(fovy_deg.float()), height, width)
        return self.render_input(self.renderer(rays_o, rays_d))

    def to_prior_space(self, rgb: Tensor, fovy_deg: Optional[Tensor] = None, convention: str = "inverse") -> Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> ``[B, 3, R, R]`` in [-1, 1] at the prior's resolution; colour +
        depth + opacity ``[B, H, W, 5]`` -> RGB + LDM3D depth ``[B, 4, R, R]`` (depth by
        ``convention``, planar for cameras of vertical field of view ``fovy_deg`` ``[B]``)."""
        if rgb.shape[-1] == 5:
            cosine = None if fovy_deg is None else axis_cosines(fovy_deg.expand(rgb.shape[0]), *rgb.shape[1:3])
            depth = ldm3d_depth(rgb[..., 3:4], rgb[..., 4:5], cosine, convention)
            rgb = torch.cat([rgb[..., :3], depth], -1)
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
        return self.to_prior_space(self.render_input(renderer(rays_o, rays_d)), torch.rad2deg(fovy))

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
                raise ConfigError(
                    f"multi-view-joint needs batches of groups of {c.n_view} views 360/{c.n_view} degrees "
                    f"apart (data.n_view={c.n_view}, batch_size a multiple of it); got n_views={n_views}."
                )
            rows = rows[:: c.n_view]  # one query per group: its views share elevation, distance, fov
        bins = torch.round(elevation[rows] / c.bank_elevation_step).long().tolist()
        mag = (c.bank_camera_distance * math.tan(math.radians(c.bank_fovy_deg) / 2)
               / (dist[rows] * torch.tan(torch.deg2rad(fovy[rows]) / 2))).tolist()
        at_query = ours = uncond = None
        if mode == "camera-conditioned":
            at_query = self.to_prior_space(self.render_reference(c2w, fovy, c.resolution, c.resolution), fovy)
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

    def guide(self, rgb: Tensor, condition: Any, cameras: Cameras, rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """``loss_sds`` (or ``loss_sjc``) for renders ``[B, H, W, 3]``; the condition is unused
        (the prior knows its object); the cameras' field of view is required."""
        if rgb_as_latents:
            raise ConfigError("The reference-object prior works on RGB renders (rgb_as_latents=False).")
        if cameras.fovy is None:
            raise ConfigError("The reference-object prior needs each camera's field of view (Cameras.fovy).")
        c = self.cfg
        expected = 5 if c.channels == "rgbd" else 3
        if rgb.shape[-1] != expected:
            raise ConfigError(f"The reference-object prior ({c.channels}) takes {expected}-channel renders "
                              f"(render_input(out)); got {rgb.shape[-1]}.")
        latents = self.to_prior_space(rgb, cameras.fovy, c.depth_convention)
        cand = self.candidates(cameras.c2w, cameras.fovy, cameras.n_views)
        group = c.n_view if c.mode == "multi-view-joint" else 1
        if group > 1:  # one joint sample (and one timestep) per group of views
            latents = latents.reshape(-1, group, *latents.shape[1:])

        def predict_noise(x_t: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
            k = x_t.shape[0] // latents.shape[0]  # SJC: k noise draws per view, stacked draw-major
            data, log_prior = cand["cond"]
            cond = (_tile(data, k), _tile(log_prior, k))
            eps = M.guided_noise(x_t, t, self.alphas_cumprod, cond, _tile(cand["uncond"], k), c.guidance_scale)
            return eps, eps

        out = self.distil(latents, predict_noise)
        if group > 1:  # the loss is normalised per group: back to per view, like the other modes
            for key in [k for k in out if k.startswith("loss_")]:
                out[key] = out[key] / group
        return out


def _tile(x: Optional[Tensor], k: int) -> Optional[Tensor]:
    """``x`` repeated ``k`` times along the batch (SJC's draw-major stacking)."""
    if x is None:
        return None
    return x.repeat(k, *([1] * (x.dim() - 1)))


@torch.no_grad()
def _surface_band(renderer: Any) -> Tuple[Tensor, Tensor]:
    """``(near, deep)`` cells of the renderer's occupancy grid (shaped as ``estimator.binaries``):
    ``|sdf(centre)|`` within the margin, and ``sdf(centre)`` below minus the margin. The margin is
    :data:`SURFACE_BAND_CELLS` half-diagonals, plus twelve transition widths (where the density is
    1/(1 + e^12) of its scale) and the ripple's amplitude."""
    estimator, geometry = renderer.estimator, renderer.geometry
    low, high = estimator.aabbs[0, :3], estimator.aabbs[0, 3:]
    cell = (high - low) / estimator.resolution
    centres = low + (estimator.grid_coords.to(low.dtype) + 0.5) * cell
    margin = (SURFACE_BAND_CELLS * 0.5 * float(cell.norm()) + 12.0 * float(geometry.cfg.softness)
              + abs(float(geometry.cfg.ripple)))
    sdf = torch.cat([geometry.sdf(c)[0] for c in centres.split(65536)])
    shape = estimator.binaries.shape
    return (sdf.abs() <= margin).view(shape), (sdf < -margin).view(shape)
