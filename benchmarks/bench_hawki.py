"""HawkI (``configs/hawki-aerial.yaml``): seconds per optimisation step of each stage, the
projected time of each full stage, and seconds per MI-guided DDIM step.

    python benchmarks/bench_hawki.py                      # full-size random SD2.1-base, 512 px (latents 64 x 64)
    python benchmarks/bench_hawki.py --size tiny          # smoke run on the toy model
    python benchmarks/bench_hawki.py --through-unet       # also MI through the UNet's prediction

A full-size SD2.1-base UNet (865 M parameters) is built with random weights in memory (no
download: the same compute as the real weights), fp32 on CPU (fp16 weights off on CUDA, as the
recipe trains in fp32). Each stage step is one Adam step of the denoising loss on a 1-image batch,
as the stages run them (:mod:`threestudio_like.hawki.personalise`); the DDIM step is one CFG UNet
call (batch 2), the scheduler step and the MI step (:func:`threestudio_like.hawki.pipeline.mi_hook`).
Projected stage time = median step time x the recipe's step count. Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Callable, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from threestudio_like.guidance.distillation import classifier_free_guidance  # noqa: E402
from threestudio_like.hawki import personalise as P  # noqa: E402
from threestudio_like.hawki.pipeline import mi_hook  # noqa: E402
from threestudio_like.models.builders import make_ddim_scheduler  # noqa: E402

RECIPE_STEPS = {"embedding": 1000, "lora": 500, "guidance-embedding": 500, "guidance-lora": 250}


def build_unet(size: str) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    from threestudio_like.models import ldm_convert as LC
    from threestudio_like.models.architectures import SD21_UNET, TINY_SD21_UNET
    from threestudio_like.models.builders import freeze, tiny_unet

    if size == "tiny":
        return freeze(tiny_unet(TINY_SD21_UNET))
    torch.manual_seed(0)
    return freeze(UNet2DConditionModel(**LC.diffusers_unet_config(SD21_UNET, sample_size=64)))


def timed(fn: Callable[[], None], steps: int, warmup: int) -> float:
    """Median seconds of ``fn`` over ``steps`` calls after ``warmup`` untimed ones."""
    times: List[float] = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--through-unet", action="store_true", help="also time MI through the UNet")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet = build_unet(args.size).to(device)
    latent, width = (64, 1024) if args.size == "full" else (8, unet.config.cross_attention_dim)
    params = sum(p.numel() for p in unet.parameters())
    print(f"HawkI stages, {args.size} SD2.1-base UNet ({params / 1e6:.0f} M parameters), latents {latent}x{latent}, "
          f"{device}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, latent, latent, generator=g).to(device)
    embedding = torch.randn(1, 77, width, generator=g).to(device).requires_grad_(True)
    alphas = P.noise_schedule()

    def stage_step(trained: List[torch.Tensor], context: torch.Tensor) -> Callable[[], None]:
        optimiser = torch.optim.Adam(trained, lr=1e-4)

        def step() -> None:
            t = torch.randint(0, 1000, (1,), generator=g).to(device)
            noise = torch.randn(1, 4, latent, latent, generator=g).to(device)
            loss = P.denoising_loss(unet, z, context, t, noise, alphas)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        return step

    results = {}
    seconds = timed(stage_step([embedding], embedding), args.steps, args.warmup)
    results["embedding"] = results["guidance-embedding"] = seconds
    lora = P.add_lora(unet, 4)
    print(f"  LoRA rank 4: {sum(p.numel() for p in lora) / 1e6:.2f} M parameters")
    results["lora"] = results["guidance-lora"] = timed(stage_step(lora, embedding.detach()), args.steps, args.warmup)
    P.set_trainable(lora, False)
    for name, steps in RECIPE_STEPS.items():
        s = results[name]
        print(f"  stage {name:<19} {s:7.2f} s/step  x {steps:4d} steps = {s * steps / 60:7.1f} min")

    scheduler = make_ddim_scheduler()
    scheduler.set_timesteps(50)
    text = torch.randn(2, 77, width, generator=g).to(device)

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = unet(torch.cat([x_t, x_t]), t.repeat(2), encoder_hidden_states=text).sample
        eps_cond, eps_uncond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, 7.5)

    for through in ([False, True] if args.through_unet else [False]):
        c = SimpleNamespace(mi_scale=1e-2, mi_bins=16, mi_sigma=0.15, mi_normalisation="minmax",
                            mi_fixed_range=4.0, mi_through_unet=through)
        hook = mi_hook(predict, scheduler.alphas_cumprod, z, c)
        t = scheduler.timesteps[10]
        t_batch = torch.full((1,), int(t), dtype=torch.long, device=device)

        @torch.no_grad()
        def ddim_step(hook=hook, t=t, t_batch=t_batch) -> None:
            eps = predict(z, t_batch)
            previous = scheduler.step(eps, t, z).prev_sample
            hook(previous, z, t_batch, eps, 10, 50)

        @torch.no_grad()
        def plain_step(t=t, t_batch=t_batch) -> None:
            scheduler.step(predict(z, t_batch), t, z)

        with_mi = timed(ddim_step, args.steps, args.warmup)
        without = timed(plain_step, args.steps, args.warmup) if not through else None
        label = "MI through the UNet" if through else "MI (eps held fixed)"
        extra = f"; without MI {without:.2f} s" if without is not None else ""
        print(f"  DDIM + {label}: {with_mi:.2f} s/step, x 50 steps = {with_mi * 50 / 60:.1f} min{extra}")


if __name__ == "__main__":
    main()
