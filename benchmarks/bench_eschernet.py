"""EscherNet recipe: seconds per training step and peak GPU memory at 128 and 256 px.

    python benchmarks/bench_eschernet.py --image front_rgba.png                      # kxic/eschernet-6dof from the HF cache
    python benchmarks/bench_eschernet.py --weights full-random                       # full-size random weights (no download)
    python benchmarks/bench_eschernet.py --weights tiny-random --steps 3 --sizes 16  # CPU smoke run

Runs ``configs/eschernet-6dof.yaml`` (or ``--config``) as is: 4 target views denoised jointly at
256 px by the guidance, renders at the given size, the reference view supervised by RGB and mask,
512 samples per ray, fp16 guidance, 16-mixed; ``--references`` N posed copies of the image
(``references=`` file) to see how N affects the cost. ``full-random`` writes a randomly
initialised full-size EscherNet (SD1.5 UNet, KL-f8 VAE, ConvNeXtV2-tiny) to a temporary diffusers
folder: same compute and memory as the real weights. A benchmark, not a test: prints figures,
asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import bench_weights, time_training  # noqa: E402
from threestudio_like.config import load_config  # noqa: E402

SHARED_IMAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data", "images", "robot_rgba.png"
)


def write_full_random(folder: str) -> str:
    """A full-size EscherNet with random weights as a diffusers folder (fp16 safetensors)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import ConvNextV2Config, ConvNextV2Model

    from threestudio_like.models import ldm_convert as LC
    from threestudio_like.models.architectures import ESCHERNET_UNET

    sd_vae = {"ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "in_channels": 3, "out_ch": 3, "z_channels": 4}
    parts = {
        "unet": UNet2DConditionModel(**LC.diffusers_unet_config(ESCHERNET_UNET)),
        "vae": AutoencoderKL(**LC.diffusers_vae_config(sd_vae)),
        "image_encoder": ConvNextV2Model(ConvNextV2Config(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3])),
    }
    for name, model in parts.items():
        model.half().save_pretrained(os.path.join(folder, name), safe_serialization=True)
    return folder


def bench(config: str, weights: str, image: str, n_refs: int, size: int, steps: int, root: str) -> None:
    if n_refs > 1:
        views = [{"image": os.path.abspath(image), "azimuth": 360.0 * i / n_refs, "elevation": 0.0, "distance": 1.8}
                 for i in range(n_refs)]
        path = os.path.join(root, f"views{n_refs}.json")
        with open(path, "w") as f:
            json.dump(views, f)
        inputs = [f"references={path}"]
    else:
        inputs = [f"image={image}"]
    overrides = inputs + [
        f"exp_root_dir={root}", f"system.guidance.pretrained_model_name_or_path={weights}",
        f"data.height={size}", f"data.width={size}", "data.resolution_milestones=[]",
        f"data.random_camera.height={size}", f"data.random_camera.width={size}",
        "data.random_camera.resolution_milestones=[]", f"trainer.max_steps={steps}",
    ]
    if weights == "tiny-random":
        overrides += ["system.guidance.image_size=64", "data.condition_size=64"]
    cfg = load_config(config, overrides)
    median, peak, device = time_training(cfg, steps)
    print(f"{size:4d} px, 4 target views, {n_refs} reference(s): {median:.3f} s/step, "
          f"peak GPU memory {peak:.1f} GiB  [{device}, weights={weights}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="eschernet-6dof.yaml")
    parser.add_argument("--weights", default="kxic/eschernet-6dof", help="weights source, or full-random")
    parser.add_argument("--image", default=SHARED_IMAGE, help="an RGBA image of an object")
    parser.add_argument("--references", type=int, nargs="+", default=[1, 3], help="numbers of reference views")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        weights = bench_weights(args.weights, root, "EscherNet", write_full_random)
        for size in args.sizes:
            for n_refs in args.references:
                bench(args.config, weights, args.image, n_refs, size, args.steps, root)


if __name__ == "__main__":
    main()
