"""MVDream recipe: seconds per training step and peak GPU memory at 64 and 256 px.

    python benchmarks/bench_mvdream.py                          # MVDream/MVDream from the HF cache
    python benchmarks/bench_mvdream.py --weights full-random    # full-size random weights (no download)
    python benchmarks/bench_mvdream.py --weights tiny-random --steps 3 --sizes 16   # CPU smoke run

Runs ``configs/mvdream-sd21.yaml`` as is (batch 8 = 2 objects x 4 views at 64 px, 4 at 256 px,
512 samples per ray, fp16 guidance, 16-mixed) for ``--steps`` steps per resolution and prints the
median step time (first steps excluded) and ``torch.cuda.max_memory_allocated``. ``full-random``
writes a randomly initialised full-size MVDream (SD2.1-base UNet + camera MLP, KL-f8 VAE,
OpenCLIP-H text tower) to a temporary diffusers folder: same compute and memory as the real
weights. A benchmark, not a test: prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import bench_weights, time_training  # noqa: E402
from threestudio_like.config import load_config  # noqa: E402


def write_full_random(folder: str) -> str:
    """A full-size MVDream with random weights as a diffusers folder (fp16 safetensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from threestudio_like.models import ldm_convert as LC
    from threestudio_like.models.architectures import MVDREAM_UNET
    from threestudio_like.prompt.stable_diffusion import tiny_tokenizer

    sd2_vae = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "in_channels": 3, "out_ch": 3, "z_channels": 4}
    parts = {
        "unet": UNet2DConditionModel(**LC.diffusers_unet_config(MVDREAM_UNET)),
        "vae": AutoencoderKL(**LC.diffusers_vae_config(sd2_vae)),
        "text_encoder": CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")),
    }
    for name, model in parts.items():
        model.half().save_pretrained(os.path.join(folder, name), safe_serialization=True)
    tiny_tokenizer().save_pretrained(os.path.join(folder, "tokenizer"))
    return folder


def bench(weights: str, size: int, batch: int, steps: int, root: str) -> None:
    overrides = [
        "prompt=a DSLR photo of a corgi", f"exp_root_dir={root}",
        f"system.guidance.pretrained_model_name_or_path={weights}",
        f"system.prompt_processor.cache_dir={root}/cache",
        f"data.height={size}", f"data.width={size}", f"data.batch_size={batch}", "data.resolution_milestones=[]",
        f"trainer.max_steps={steps}",
    ]
    if weights == "tiny-random":
        overrides.append("system.guidance.image_size=64")
    cfg = load_config("mvdream-sd21.yaml", overrides)
    median, peak, device = time_training(cfg, steps)
    print(f"{size:4d} px, batch {batch} ({batch // 4} x 4 views): {median:.3f} s/step, "
          f"peak GPU memory {peak:.1f} GiB  [{device}, weights={weights}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="MVDream/MVDream", help="weights source, or full-random")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        weights = bench_weights(args.weights, root, "MVDream", write_full_random)
        for size in args.sizes:
            bench(weights, size, 8 if size <= 64 else 4, args.steps, root)


if __name__ == "__main__":
    main()
