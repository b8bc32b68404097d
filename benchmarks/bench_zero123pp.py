"""Zero123++ guidance: seconds per SDS step on the six-view grid (renders -> loss -> gradient).

    python benchmarks/bench_zero123pp.py --weights full-random   # full-size random weights (no download)
    python benchmarks/bench_zero123pp.py                         # sudo-ai/zero123plus-v1.2 from the HF cache
    python benchmarks/bench_zero123pp.py --weights tiny-random --tile 32   # smoke run

One step is what a training step asks of the prior: six renders ``[6, T, T, 3]`` (T = 320) tiled
into the 960 x 640 grid, VAE-encoded with gradients, one write pass over the noised 320 px
reference latent and one read pass over the 120 x 80 grid latent (both CFG branches batched:
2 rows each), then the backward pass through the VAE encoder to the renders. The input image's
condition is prepared once, outside the timing. ``full-random`` writes a randomly initialised
full-size Zero123++ (SD2 UNet with 1024-d context, KL-f8 VAE, CLIP ViT-H/14 image tower,
OpenCLIP-H text tower, 77 ramping coefficients) to a temporary diffusers folder (fp16
safetensors, as the real release): the same compute as the real weights. A benchmark, not a
test: prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import bench_weights  # noqa: E402
from threestudio_like import find  # noqa: E402
from threestudio_like.cameras import Cameras  # noqa: E402
from threestudio_like.data.random_camera import make_batch  # noqa: E402


def write_full_random(folder: str) -> str:
    """A full-size Zero123++ with random weights as a diffusers folder (fp16 safetensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from threestudio_like.models import ldm_convert as LC
    from threestudio_like.models.architectures import SD21_UNET, SD_VAE_DDCONFIG
    from threestudio_like.prompt.stable_diffusion import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    parts = {
        "unet": lambda: UNet2DConditionModel(**LC.diffusers_unet_config(SD21_UNET, sample_size=40)),
        "vae": lambda: AutoencoderKL(**LC.diffusers_vae_config(SD_VAE_DDCONFIG)),
        "vision_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")),
    }
    for name, build in parts.items():  # one at a time: peak memory of the largest part only
        build().half().save_pretrained(os.path.join(folder, name), safe_serialization=True)
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    ramp = torch.linspace(0.0, 1.0, 77).tolist()
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "Zero123PlusPipeline", "ramping_coefficients": ramp}, f)
    return folder


def bench(weights: str, tile: int, steps: int) -> None:
    start = time.perf_counter()
    guidance = find("zero123pp-guidance")({"pretrained_model_name_or_path": weights, "image_size": tile})
    loaded = time.perf_counter() - start
    c2w = make_batch(torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([2.5]), torch.tensor([20.0]), 4, 4)["c2w"]
    condition = guidance.prepare_condition(torch.rand(1, tile, tile, 3), c2w.to(guidance.device))
    rig = guidance.rig(condition, 20.0)
    views = make_batch(rig["elevation"], rig["azimuth"], rig["camera_distances"], rig["fovy"], tile, tile)
    cameras = Cameras.from_batch(views)
    params = sum(p.numel() for net in guidance.networks().values() for p in net.parameters())
    print(f"Zero123++ [{weights}], {params / 1e6:.0f} M parameters, loaded in {loaded:.1f} s; "
          f"grid {3 * tile} x {2 * tile} px, device {guidance.device}, {torch.get_num_threads()} threads")
    for step in range(steps):
        rgb = torch.rand(6, tile, tile, 3, device=guidance.device, requires_grad=True)
        t0 = time.perf_counter()
        out = guidance(rgb, condition, cameras)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        out["loss_sds"].backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"step {step}: {t2 - t0:.2f} s (guidance forward {t1 - t0:.2f} s, backward to the renders "
              f"{t2 - t1:.2f} s), t={int(out['timestep'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="sudo-ai/zero123plus-v1.2", help="weights source, or full-random")
    parser.add_argument("--tile", type=int, default=320, help="pixels per view (320: the model's)")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        weights = bench_weights(args.weights, root, "Zero123++", write_full_random)
        bench(weights, args.tile, args.steps)


if __name__ == "__main__":
    main()
