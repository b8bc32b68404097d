"""The reference-object prior: its object faces +x in our convention, its exact denoiser is
still at the object's own renders, and exporting its field gives a matching mesh."""
from __future__ import annotations

import torch

from threestudio_like.data.random_camera import make_batch
from threestudio_like.export.mesh_exporter import MeshExporter, volume_iou
from threestudio_like.guidance.reference_object import ReferenceObjectGeometry, ReferenceObjectGuidance


def _camera(azimuth_deg, res=32, elevation_deg=10.0):
    t = torch.tensor
    return make_batch(t([elevation_deg]), t([float(azimuth_deg)]), t([2.0]), t([45.0]), res, res)


def _guidance(**cfg):
    return ReferenceObjectGuidance({"resolution": 32, "num_samples_per_ray": 128, **cfg})


def test_face_is_seen_from_azimuth_zero_and_tail_from_behind():
    g = _guidance()
    skin = torch.tensor([0.96, 0.86, 0.70])
    tail = torch.tensor([0.10, 0.45, 0.15])

    def fraction(img, colour):
        return ((img - colour).abs().max(-1).values < 0.05).float().mean().item()

    front = g.render_reference(_camera(0)["c2w"], torch.tensor([45.0]), 32, 32)[0]
    back = g.render_reference(_camera(180)["c2w"], torch.tensor([45.0]), 32, 32)[0]
    assert fraction(front, skin) > 0.03 and fraction(front, tail) == 0.0
    assert fraction(back, tail) > 0.005 and fraction(back, skin) < fraction(front, skin) / 4


def test_sds_vanishes_at_the_reference_and_points_to_it_elsewhere():
    g = _guidance()
    cam = _camera(30)
    ref = g.render_reference(cam["c2w"], cam["fovy"], 32, 32)
    rgb = ref.clone().requires_grad_(True)
    out = g(rgb, None, **cam)
    out["loss_sds"].backward()
    assert rgb.grad.abs().max() < 1e-5
    wrong = torch.full_like(ref, 0.5).requires_grad_(True)
    g(wrong, None, **cam)["loss_sds"].backward()
    # the exact denoiser's SDS gradient points straight from the render to the reference
    direction = torch.nn.functional.cosine_similarity(
        -wrong.grad.flatten(), (ref - wrong.detach()).flatten(), dim=0
    )
    assert direction > 0.99


def test_unsupported_modes_are_refused():
    import pytest

    with pytest.raises(ValueError, match="camera-conditioned"):
        _guidance(mode="view-binned")
    with pytest.raises(ValueError, match="guidance_scale"):
        _guidance(guidance_scale=7.5)


def test_exported_reference_mesh_matches_its_occupancy():
    geometry = ReferenceObjectGeometry({})
    mesh = MeshExporter({"isosurface_resolution": 96}).build_mesh(
        geometry, _IdentityMaterial()
    )
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward faces
    iou = volume_iou(mesh, geometry.occupancy, resolution=64)
    assert iou > 0.9, iou
    # a mirrored object (front and back swapped) is measurably different
    mirrored = mesh.copy()
    mirrored.vertices[:, 0] *= -1
    mirrored.invert()
    assert volume_iou(mirrored, geometry.occupancy, resolution=64) < 0.8


class _IdentityMaterial:
    def export(self, features):
        return {"albedo": features}
