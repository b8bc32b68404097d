"""DDIM sampling from pure noise with a guided noise predictor (the ``--sample`` loop)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from threestudio_like.models.builders import make_ddim_scheduler
from threestudio_like.utils.progress import track


@torch.no_grad()
def ddim_sample(
    predict_noise: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    num_train_timesteps: int = 1000,
    num_inference_steps: int = 50,
    device: Optional[torch.device] = None,
    generator: Optional[torch.Generator] = None,
    eta: float = 0.0,
    after_step: Optional[Callable[[Tensor, Tensor, Tensor, Tensor, int, int], Tensor]] = None,
) -> Tensor:
    """Latents ``shape`` denoised by DDIM; ``predict_noise(x_t, t[B])`` returns the guided noise.

    The initial noise comes from ``generator`` (on CPU, so a seed gives the same samples on every
    device); DDIM's eta noise from the global generator. ``after_step(x_prev, x_t, t, eps, i, n)``
    may change each step's result (guidance on the latent, e.g. HawkI's mutual information; it
    runs under ``no_grad`` and enables gradients itself where it needs them).
    """
    scheduler = make_ddim_scheduler(num_train_timesteps)
    scheduler.set_timesteps(num_inference_steps)
    latents = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)
    total = len(scheduler.timesteps)
    for index, t in enumerate(track(scheduler.timesteps, "sample: DDIM step")):
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        eps = predict_noise(latents, t_batch).float()
        previous = scheduler.step(eps, t, latents, eta=eta).prev_sample
        latents = previous if after_step is None else after_step(previous, latents, t_batch[:1], eps, index, total)
    return latents
