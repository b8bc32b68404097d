"""Weights' precision and memory layout of the latent-diffusion guidances: float16 or bfloat16 on
CUDA (fp32 on CPU), and channels-last convolutions that change speed, never values."""
from __future__ import annotations

import pytest
import torch

from threestudio_like import find
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.errors import ConfigError
from threestudio_like.models.builders import pick_device_dtype


def test_half_precision_dtype_applies_on_cuda_only():
    cuda = torch.device("cuda", 0)  # an explicit index: no CUDA call is made
    assert pick_device_dtype(True, cuda) == (cuda, torch.float16)
    assert pick_device_dtype(True, cuda, torch.bfloat16) == (cuda, torch.bfloat16)
    assert pick_device_dtype(False, cuda, torch.bfloat16) == (cuda, torch.float32)
    assert pick_device_dtype(True, torch.device("cpu"), torch.bfloat16) == (torch.device("cpu"), torch.float32)


def _sds_loss(tmp_path, **options):
    pp = find("stable-diffusion-prompt-processor")({"prompt": "a corgi", "pretrained_model_name_or_path": "tiny-random",
                                                     "cache_dir": str(tmp_path)})
    guidance = find("stable-diffusion-guidance")({"pretrained_model_name_or_path": "tiny-random", "image_size": 64,
                                                   **options})
    rgb = torch.linspace(0, 1, 2 * 32 * 32 * 3).reshape(2, 32, 32, 3).requires_grad_(True)
    c2w = c2w_from_spherical(deg2rad(torch.tensor([0.0, 10.0])), deg2rad(torch.tensor([0.0, 170.0])),
                             torch.full((2,), 2.0))
    torch.manual_seed(0)
    loss = guidance(rgb, pp(), Cameras.from_c2w(c2w))["loss_sds"]
    loss.backward()
    return guidance, float(loss.detach()), rgb.grad


def test_channels_last_changes_the_layout_not_the_values(tmp_path):
    plain, loss, grad = _sds_loss(tmp_path)
    nhwc, loss_cl, grad_cl = _sds_loss(tmp_path, channels_last=True)
    conv = nhwc.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.unet.conv_in.weight.is_contiguous()
    assert torch.equal(plain.unet.conv_in.weight, conv)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(grad_cl, grad, atol=1e-4 * float(grad.abs().max()))  # other summation order only


def test_an_unknown_half_precision_type_names_the_choices():
    with pytest.raises(ConfigError, match="half_precision_dtype.*float16.*bfloat16"):
        find("stable-diffusion-guidance")({"pretrained_model_name_or_path": "tiny-random", "half_precision_dtype": "fp8"})
