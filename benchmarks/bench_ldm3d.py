"""LDM3D recipe (RGBD SDS): seconds per training step and peak GPU memory.

    python benchmarks/bench_ldm3d.py                                   # Intel/ldm3d-4c from the HF cache
    python benchmarks/bench_ldm3d.py --weights full-random --steps 2 --warmup 1   # CPU: one timed step
    python benchmarks/bench_ldm3d.py --weights tiny-random --steps 3   # smoke run

Runs ``configs/ldm3d.yaml`` as is (64 px renders, batch 1, 512 samples per ray, 512 px RGBD
encode, CFG 100 with view-dependent prompts; fp16 guidance and 16-mixed on a GPU) for ``--steps``
steps and prints the median step time after ``--warmup`` steps and ``torch.cuda.max_memory_allocated``.
``full-random`` writes a randomly initialised full-size LDM3D-4c (SD1.x UNet, KL-f8 autoencoder
with 4 pixel channels, CLIP ViT-L/14 text tower) to a temporary diffusers folder: the same compute
and memory as the real weights. A benchmark, not a test: prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import bench_weights, time_training  # noqa: E402
from threestudio_like.config import load_config  # noqa: E402

CLIP_VIT_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}


def write_full_random(folder: str, vae_channels: int = 4) -> str:
    """A full-size LDM3D with random weights as a diffusers folder (fp16 safetensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from threestudio_like.models import ldm_convert as LC
    from threestudio_like.models.architectures import LDM3D_UNET, SD_VAE_DDCONFIG, with_image_channels
    from threestudio_like.prompt.stable_diffusion import tiny_tokenizer

    parts = {
        "unet": UNet2DConditionModel(**LC.diffusers_unet_config(LDM3D_UNET, sample_size=64)),
        "vae": AutoencoderKL(**LC.diffusers_vae_config(with_image_channels(SD_VAE_DDCONFIG, vae_channels))),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L_TEXT)),
    }
    for name, model in parts.items():
        model.half().save_pretrained(os.path.join(folder, name), safe_serialization=True)
    tiny_tokenizer().save_pretrained(os.path.join(folder, "tokenizer"))
    return folder


def bench(weights: str, steps: int, warmup: int, root: str) -> None:
    overrides = [
        "prompt=a DSLR photo of a corgi", f"exp_root_dir={root}",
        f"system.guidance.pretrained_model_name_or_path={weights}",
        f"system.prompt_processor.cache_dir={root}/cache", f"trainer.max_steps={steps}",
    ]
    if weights == "tiny-random":
        overrides.append("system.guidance.image_size=64")
    cfg = load_config("ldm3d.yaml", overrides)
    median, peak, device = time_training(cfg, steps, warmup=warmup)
    print(f"ldm3d.yaml, 64 px renders, 512 px RGBD encode: {median:.3f} s/step, peak GPU memory {peak:.1f} GiB  "
          f"[{device}, weights={weights}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="Intel/ldm3d-4c", help="weights source, or full-random")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        weights = bench_weights(args.weights, root, "LDM3D-4c", write_full_random)
        bench(weights, args.steps, args.warmup, root)


if __name__ == "__main__":
    main()
