"""Image-to-3D systems: input image(s), a novel-view prior, and losses at the input views.

The systems read the ``single-image-datamodule``'s batches (the N >= 1 reference views with their
images and masks, the conditioning images ``cond_rgb`` and a batch of random views under
``random_camera``) and hand the guidance the condition it prepares from the input images and
their cameras (``guidance.prepare_condition(cond_rgb, c2w)``; priors without one, such as the
reference-object prior, get ``None``).

* ``zero123-sjc-system`` follows Zero-1-to-3's ``3drec`` (Score Jacobian Chaining): the NeRF
  renders the 4 latent channels directly at the latent resolution (or RGB, encoded by the VAE,
  with ``render_latents: false``); per step it adds the input-view reconstruction (decoded render
  vs the image), depth smoothness (input view always, sampled views from
  ``sampled_depth_smooth_from`` of training on), near-view consistency and emptiness.
* ``zero123-system`` follows threestudio's Zero123 recipe: SDS on the random views plus RGB and
  mask losses at the reference view (and threestudio's normal/orientation/sparsity regularisers).
* ``zero123pp-system`` is the same recipe with Zero123++'s six fixed views around the input
  view (the guidance's ``rig``) in place of the random views, rendered at the random views'
  resolution (so ``data.random_camera``'s resolution schedule applies).
* ``eschernet-system`` is the same recipe for multi-view priors conditioned on N posed images:
  the random views come in groups of ``n_view`` (denoised jointly) and every reference view is
  supervised by its image and mask.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import register
from threestudio_like.data.random_camera import make_batch
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.latent_diffusion import LatentDiffusionGuidance
from threestudio_like.systems import losses as L
from threestudio_like.systems.base import BaseLift3DSystem
from threestudio_like.systems.latent_colour import LatentColourMaterial, LatentToRGB, fit_latent_to_rgb, pool_to

_RAY_KEYS = ("rays_o", "rays_d", "light_positions")


class ImageConditionedSystem(BaseLift3DSystem):
    """Shared plumbing: the image condition, rendering a view dict, weights that are on."""

    def configure(self) -> None:
        super().configure()
        self._image_condition: Any = None
        self._condition_ready = False

    def image_condition(self, batch: Dict[str, Any]) -> Any:
        """The guidance's condition for the batch's input image(s) (built once, then cached);
        None for priors that need none (the reference object)."""
        if not self._condition_ready:
            if self.guidance.conditioned_on_images:
                if "cond_rgb" not in batch:
                    raise ConfigError(
                        f"{self.cfg.guidance_type} is conditioned on an image: use data_type: single-image-datamodule."
                    )
                self._image_condition = self.guidance.prepare_condition(batch["cond_rgb"], batch["c2w"])
            self._condition_ready = True
        return self._image_condition

    def render(self, view: Dict[str, Any], **kwargs: Any) -> Dict[str, Tensor]:
        """Render the rays of a view dict (extra keyword arguments go to the renderer)."""
        return self.renderer(**{k: view[k] for k in _RAY_KEYS if k in view}, **kwargs)

    def weight_on(self, name: str) -> bool:
        """Whether ``lambda_<name>`` is currently non-zero."""
        return self.C(self.cfg.loss.get(f"lambda_{name}", 0)) > 0


@register("zero123-sjc-system")
class Zero123SJCSystem(ImageConditionedSystem):
    """Score Jacobian Chaining from one image (Zero-1-to-3's 3drec) with its regularisers."""

    @dataclass
    class Config(BaseLift3DSystem.Config):
        render_latents: bool = True
        """Render the 4 latent channels directly (3drec); false: render RGB and encode it with the VAE."""
        background_depth: float = 10.0
        """Depth of empty space in the depth losses (3drec's bg_dist)."""
        near_view_offset: float = 0.05
        """Distance the near view's eye moves in a random direction (3drec's sample_near_eye)."""
        sampled_depth_smooth_from: float = 0.5
        """Fraction of trainer.max_steps after which depth smoothness also applies to sampled views."""
        emptiness_scale: float = 10.0
        """Emptiness loss log(1 + scale * w)."""
        latent_colour_views: int = 8
        """Orbit views rendered and decoded to fit the latent->RGB map that colours the exported
        mesh of a latent render (:mod:`threestudio_like.systems.latent_colour`)."""

    cfg: Config

    # -- latent rendering ---------------------------------------------------------------------
    def background_for(self, view: Dict[str, Any]) -> Optional[Tensor]:
        """Latent renders: the white-image latent behind the object (3drec), as features in [0, 1]."""
        if not self.cfg.render_latents:
            return None
        if not isinstance(self.guidance, LatentDiffusionGuidance):
            raise ConfigError(
                f"render_latents needs a latent-diffusion guidance; {self.cfg.guidance_type} works on RGB: "
                f"set system.render_latents=false."
            )
        batch, height, width = view["rays_o"].shape[:3]
        latent = self.guidance.white_latents()
        latent = F.interpolate(latent, (height, width), mode="bilinear", align_corners=False)
        features = (latent + 1.0) / 2.0  # the inverse of latents_from_rgb_as_latents' 2f - 1
        return features.permute(0, 2, 3, 1).expand(batch, -1, -1, -1).to(view["rays_o"])

    def render_view(self, view: Dict[str, Any]) -> Dict[str, Tensor]:
        out = self.render(view, bg_color=self.background_for(view))
        out["full_depth"] = L.composite_depth(out["depth"], out["opacity"], self.cfg.background_depth)
        return out

    def decode(self, comp_rgb: Tensor) -> Tensor:
        """Latent renders ``[B, h, w, 4]`` (features in [0, 1]) -> images ``[B, 8h, 8w, 3]``."""
        latents = comp_rgb.permute(0, 3, 1, 2) * 2.0 - 1.0
        return self.guidance.decode_latents(latents)

    # -- losses -------------------------------------------------------------------------------
    def reference_rgb_loss(self, out: Dict[str, Tensor], batch: Dict[str, Any]) -> Tensor:
        """3drec's input-view loss: mean squared error in [-1, 1] of the (decoded) render."""
        if self.cfg.render_latents:
            latents = self.guidance.latents_from_rgb_as_latents(out["comp_rgb"])
            image = self.guidance.decode_latents(latents, clamp=False)
            target = batch["cond_rgb"]
        else:
            image, target = out["comp_rgb"], batch["rgb"]
        if target.shape[1:3] != image.shape[1:3]:
            target = F.interpolate(target.permute(0, 3, 1, 2), image.shape[1:3], mode="bilinear",
                                   align_corners=False, antialias=True).permute(0, 2, 3, 1)
        return L.centered_mse(image, target.to(image))

    def near_views(self, views: Dict[str, Any]) -> Dict[str, Any]:
        """The views with each eye moved by ``near_view_offset``, still looking at the origin."""
        positions = L.near_view_positions(views["camera_positions"], self.cfg.near_view_offset)
        near = make_batch(
            views["elevation"].cpu(), views["azimuth"].cpu(), views["camera_distances"].cpu(), views["fovy"].cpu(),
            int(views["height"]), int(views["width"]), positions=positions.cpu(),
        )
        return {k: (v.to(views["rays_o"].device) if torch.is_tensor(v) else v) for k, v in near.items()}

    def sampled_depth_smooth_active(self) -> bool:
        max_steps = self._trainer.max_steps if self._trainer is not None else -1
        return max_steps > 0 and self.true_global_step >= self.cfg.sampled_depth_smooth_from * max_steps

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        terms: Dict[str, Tensor] = {}
        condition = self.image_condition(batch)
        if self.weight_on("rgb") or self.weight_on("ref_depth_smooth"):
            ref = self.render_view(batch)
            if self.weight_on("rgb"):
                terms["loss_rgb"] = self.reference_rgb_loss(ref, batch)
            if self.weight_on("ref_depth_smooth"):
                terms["loss_ref_depth_smooth"] = L.depth_smoothness(ref["full_depth"])

        views = batch["random_camera"]
        out = self.render_view(views)
        guidance_out = self.guidance(out["comp_rgb"], condition, self.cameras(views),
                                     rgb_as_latents=self.cfg.render_latents)
        terms.update(self.log_diagnostics(guidance_out))
        if self.weight_on("near_view"):
            near = self.render_view(self.near_views(views))
            terms["loss_near_view"] = L.near_view_loss(
                out["comp_rgb"], out["full_depth"], near["comp_rgb"], near["full_depth"]
            )
        if self.weight_on("depth_smooth") and self.sampled_depth_smooth_active():
            terms["loss_depth_smooth"] = L.depth_smoothness(out["full_depth"])
        if self.weight_on("emptiness"):
            terms["loss_emptiness"] = L.emptiness_loss(out["weights"], self.cfg.emptiness_scale)
        terms.update(self.regularisers(out))
        return self.combine_losses(terms)

    # -- evaluation ---------------------------------------------------------------------------
    def render_eval(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        out = self.render_view(batch)
        if not self.cfg.render_latents:
            return out
        with torch.no_grad():
            rgb = self.decode(out["comp_rgb"])
        size = rgb.shape[1:3]

        def upsample(x: Tensor) -> Tensor:
            return F.interpolate(x.permute(0, 3, 1, 2), size, mode="nearest").permute(0, 2, 3, 1)

        return {"comp_rgb": rgb, "opacity": upsample(out["opacity"]), "depth": upsample(out["depth"])}

    # -- export: mesh colours of a latent field -----------------------------------------------
    @torch.no_grad()
    def fit_latent_colour(self, camera: Dict[str, Any]) -> LatentToRGB:
        """The latent->RGB map, fitted on ``latent_colour_views`` orbit views at the elevation,
        distance and field of view of ``camera`` (a predict batch), each decoded by the VAE."""
        n = max(int(self.cfg.latent_colour_views), 1)
        h, w = int(camera["height"]), int(camera["width"])
        views = make_batch(camera["elevation"].cpu()[:1].repeat(n), torch.arange(n, dtype=torch.float32) * (360.0 / n),
                           camera["camera_distances"].cpu()[:1].repeat(n), camera["fovy"].cpu()[:1].repeat(n), h, w)
        features, colours, weights = [], [], []
        for i in range(n):
            view = {k: (v[i:i + 1].to(self.device) if torch.is_tensor(v) else v) for k, v in views.items()}
            out = self.render_view(view)
            decoded = self.decode(out["comp_rgb"]).float()
            features.append(out["comp_rgb"].reshape(-1, out["comp_rgb"].shape[-1]).float())
            colours.append(pool_to(decoded, h, w).reshape(-1, 3))
            weights.append(out["opacity"].reshape(-1).float() ** 2)  # surface pixels, not the background
        return fit_latent_to_rgb(torch.cat(features).cpu(), torch.cat(colours).cpu(), torch.cat(weights).cpu())

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        if self.cfg.render_latents and batch_idx == 0:
            self.latent_colour = self.fit_latent_colour(batch)
            print(f"mesh colours: latent->RGB map fitted on {self.cfg.latent_colour_views} decoded views "
                  f"({self.latent_colour.n_pixels} pixels, residual {self.latent_colour.residual_rms:.3f} RMS)")

    def export_material(self) -> Any:
        """The material whose albedo colours the mesh: latent features mapped to RGB."""
        mapping = getattr(self, "latent_colour", None)
        return LatentColourMaterial(self.material, mapping) if mapping is not None else self.material


@register("zero123-system")
class Zero123System(ImageConditionedSystem):
    """threestudio's Zero123 recipe: SDS on random views + RGB and mask losses at the input view."""

    @dataclass
    class Config(BaseLift3DSystem.Config):
        ambient_ratio_min: float = 0.5
        """Random views are shaded with an ambient share drawn from [ambient_ratio_min, 1]."""
        ref_only_steps: int = 0
        """Steps at the start that use only the reference view."""

    cfg: Config

    def view_regularisers(self, out: Dict[str, Tensor], reference: bool) -> Dict[str, Tensor]:
        terms = self.regularisers(out)
        if reference:  # threestudio applies sparsity to the random views only
            terms.pop("loss_sparsity", None)
        if self.weight_on("normal_smooth"):
            if "comp_normal" not in out:
                raise ConfigError("lambda_normal_smooth > 0 needs system.renderer.return_comp_normal: true.")
            terms["loss_normal_smooth"] = L.normal_smoothness_2d(out["comp_normal"])
        if self.weight_on("3d_normal_smooth"):
            if "normal_perturb" not in out:
                raise ConfigError("lambda_3d_normal_smooth > 0 needs system.renderer.return_normal_perturb: true.")
            terms["loss_3d_normal_smooth"] = L.normal_smoothness_3d(out["normal"], out["normal_perturb"])
        return terms

    def guidance_views(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The views the prior scores this step (the data's random views)."""
        return batch["random_camera"]

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        totals: Dict[str, Tensor] = {}

        def add(terms: Dict[str, Tensor]) -> None:
            for name, value in terms.items():
                totals[name] = totals[name] + value if name in totals else value

        if self.true_global_step >= self.cfg.ref_only_steps:
            views = self.guidance_views(batch)
            ambient = self.cfg.ambient_ratio_min + (1.0 - self.cfg.ambient_ratio_min) * random.random()
            out = self.render(views, ambient_ratio=ambient)
            guidance_out = self.guidance(out["comp_rgb"], self.image_condition(batch), self.cameras(views))
            add(self.log_diagnostics(guidance_out))
            add(self.view_regularisers(out, reference=False))

        ref = self.render(batch, shading="diffuse", ambient_ratio=1.0)
        mask = batch["mask"]
        target = batch["rgb"] * mask + ref["comp_rgb_bg"] * (1.0 - mask)
        add({"loss_rgb": F.mse_loss(ref["comp_rgb"], target), "loss_mask": F.mse_loss(ref["opacity"], mask)})
        add(self.view_regularisers(ref, reference=True))
        return self.combine_losses(totals)


@register("eschernet-system")
class EscherNetSystem(Zero123System):
    """EscherNet recipe: multi-view SDS on groups of random views given N posed references, plus
    RGB and mask losses at every reference view (the Zero123 recipe's losses, applied to all N)."""


@register("zero123pp-system")
class Zero123PlusSystem(Zero123System):
    """Zero123++ recipe: SDS on the six rig views around the input view (tiled 3 x 2 by the
    guidance) plus RGB and mask losses at the input view."""

    def guidance_views(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The guidance's six cameras around the input view, at the random views' resolution."""
        rig = getattr(self.guidance, "rig", None)
        if rig is None:
            raise ConfigError(f"zero123pp-system renders a fixed rig of views; {self.cfg.guidance_type} has none "
                              f"(use guidance_type: zero123pp-guidance).")
        sizes = batch.get("random_camera", batch)
        cams = rig(self.image_condition(batch), float(batch["fovy"].reshape(-1)[0]))
        views = make_batch(cams["elevation"], cams["azimuth"], cams["camera_distances"], cams["fovy"],
                           int(sizes["height"]), int(sizes["width"]))
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in views.items()}
