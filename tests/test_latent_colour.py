"""Mesh colours of a NeRF that renders diffusion latents (zero123-sjc): known answer.

The field is the bundled reference object in latent space: every point stores the latent
``M (2c - 1)`` of its colour ``c`` (M a fixed 4x3 matrix), as a perfectly distilled latent NeRF
would, and the VAE decoder is the affine map that inverts it (pixel-wise, 8x upsampled), so the
decoded turntable shows the object's true colours. The exporter must give the mesh those colours,
not the latent channels (what it wrote before: clamp of the first three features).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from threestudio_like import find
from threestudio_like.config import load_config
from threestudio_like.data.random_camera import orbit_loader
from threestudio_like.reference.object import ReferenceObjectGeometry
from threestudio_like.systems.latent_colour import fit_latent_to_rgb

M = torch.tensor([[0.45, -0.10, 0.20], [0.05, 0.40, -0.15], [-0.20, 0.15, 0.35], [0.25, 0.25, -0.30]])
"""Colour (in [-1, 1]) -> latent; its pseudo-inverse is the stand-in decoder."""


class LatentObject(ReferenceObjectGeometry):
    """The reference object whose features are the latent of its colour, as features in [0, 1]."""

    def to_latent_features(self, rgb: torch.Tensor) -> torch.Tensor:
        return ((2 * rgb - 1) @ M.T.to(rgb) + 1) / 2

    def forward(self, points, output_normal=False):
        out = super().forward(points, output_normal)
        return {**out, "features": self.to_latent_features(out["features"])}

    def export(self, points):
        return {"features": self.to_latent_features(super().export(points)["features"])}


def decoder(gamma: float):
    """Latent renders ``[B, h, w, 4]`` (features in [0, 1]) -> images ``[B, 8h, 8w, 3]``: the
    inverse of M, then a tone curve ``c ** gamma`` (1: affine; else a nonlinear VAE stand-in)."""

    def decode(comp_rgb: torch.Tensor) -> torch.Tensor:
        latents = comp_rgb * 2 - 1
        rgb = ((latents @ torch.linalg.pinv(M).T.to(latents) + 1) / 2).clamp(0, 1) ** gamma
        return F.interpolate(rgb.permute(0, 3, 1, 2), scale_factor=8, mode="nearest").permute(0, 2, 3, 1)

    return decode


def test_affine_fit_recovers_a_known_map():
    g = torch.Generator().manual_seed(0)
    features = torch.rand(500, 4, generator=g)
    A, b = torch.randn(4, 3, generator=g) * 0.2, torch.tensor([0.5, 0.4, 0.6])
    fit = fit_latent_to_rgb(features, features @ A + b, torch.ones(500), ridge=1e-9)
    assert torch.allclose(fit.weight, A, atol=1e-4) and torch.allclose(fit.bias, b, atol=1e-4)
    assert fit.residual_rms < 1e-4


@pytest.fixture
def image(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (220, 120, 40, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "square.png")
    return str(tmp_path / "square.png")


@pytest.mark.parametrize("gamma,tolerance", [(1.0, 0.01), (1.6, 0.05)])
def test_latent_field_exports_the_decoded_colours(image, tmp_path, capsys, gamma, tolerance):
    cfg = load_config("zero123-sjc.yaml", [
        f"image={image}", f"exp_root_dir={tmp_path}", "system.guidance.pretrained_model_name_or_path=tiny-random",
        "system.guidance.image_size=64", "data.condition_size=64", "data.random_camera.eval_height=24",
        "data.random_camera.eval_width=24", "system.renderer.num_samples_per_ray=96",
        "data.random_camera.eval_camera_distance=2.2", "system.latent_colour_views=8",
    ], make_trial_dir=False)
    system = find(cfg.system_type)(cfg.system).eval()
    obj = LatentObject({"radius": 1.0})
    system.geometry = obj
    system.renderer.set_geometry(obj)
    system.decode = decoder(gamma)
    (camera,) = list(orbit_loader(find(cfg.data_type)(cfg.data).cfg.random_camera, 1))
    system.predict_step(camera, 0)
    assert "latent->RGB map fitted on 8 decoded views" in capsys.readouterr().out

    verts, _ = obj.isosurface(resolution=64)
    truth = ReferenceObjectGeometry({"radius": 1.0}).export(verts)["features"] ** gamma  # what the decoder shows
    features = obj.export(verts)["features"]
    before = system.material.export(features)["albedo"]  # what the exporter wrote so far
    after = system.export_material().export(features)["albedo"]
    mae_before = float((before - truth).abs().mean())
    mae_after = float((after - truth).abs().mean())
    print(f"latent recipe mesh colours (decoder gamma {gamma}), MAE vs the object's decoded colours: "
          f"before {mae_before:.3f}, after {mae_after:.3f}")
    assert mae_before > 0.15
    assert mae_after < tolerance
