"""HawkI's test-time personalisation: a text embedding and a LoRA fitted to one image.

Every stage minimises the denoising loss of Stable Diffusion on the image's latent ``z``:
``L = || eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t, e) - eps ||^2`` with
``t ~ U{0..T-1}`` and ``eps ~ N(0, I)`` drawn afresh each step (Adam). Stage (a)/(c) optimise the
embedding ``e`` ``[1, 77, D]`` with the UNet frozen; stage (b)/(d) train a rank-``r`` LoRA on the
query/key/value/output projections of every attention layer (HawkI's ``LoRAAttnProcessor2_0`` on
all processors; here through peft: ``W x + B A x``, ``A ~ N(0, 1/r^2)``, ``B = 0``, scale 1) with
the embedding frozen. (c)/(d) start from (a)/(b)'s results and fit the guidance image.

Each stage's result is saved as safetensors (:class:`StageCache`) under a key hashing everything
it depends on (weights, input pixels, initial embedding, steps, learning rate, seed, and the
previous stage's key), so a rerun with the same inputs loads it instead of optimising.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.utils.files import atomic_path
from threestudio_like.utils.progress import Progress

LORA_ADAPTER = "hawki"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections HawkI's LoRA processors wrap (self- and cross-attention)."""
CACHE_VERSION = "hawki-1"


# ------------------------------------------------------------------------------ the loss


def noise_schedule(num_train_timesteps: int = 1000) -> Tensor:
    """``abar_t`` of SD's scaled-linear schedule (betas 0.00085..0.012), float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def denoising_loss(unet: nn.Module, latents: Tensor, embedding: Tensor, t: Tensor, noise: Tensor,
                   alphas_cumprod: Tensor) -> Tensor:
    """Mean ``||eps_theta(z_t, t, e) - eps||^2`` over a batch of timesteps ``t`` ``[B]`` and noises."""
    abar = alphas_cumprod.to(latents.device)[t].float().view(-1, 1, 1, 1)
    z = latents.expand(len(t), -1, -1, -1)
    z_t = abar.sqrt() * z + (1.0 - abar).sqrt() * noise
    dtype = next(unet.parameters()).dtype
    context = embedding.expand(len(t), -1, -1).to(dtype)
    eps = unet(z_t.to(dtype), t, encoder_hidden_states=context).sample.float()
    return F.mse_loss(eps, noise)


@torch.no_grad()
def evaluation_loss(unet: nn.Module, latents: Tensor, embedding: Tensor, alphas_cumprod: Tensor,
                    n: int = 8, seed: int = 1234) -> float:
    """The denoising loss on fixed noises and evenly spaced timesteps (comparable across stages)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, len(alphas_cumprod) - 1, n).round().long().to(latents.device)
    noise = torch.randn((n, *latents.shape[1:]), generator=generator).to(latents.device)
    return float(denoising_loss(unet, latents, embedding, t, noise, alphas_cumprod))


def optimise(params: Sequence[Tensor], loss_fn: Callable[[Tensor, Tensor], Tensor], steps: int, lr: float,
             latent_shape: Sequence[int], num_train_timesteps: int, seed: int, label: str,
             device: torch.device) -> List[float]:
    """``steps`` Adam steps on ``loss_fn(t, noise)`` with ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``
    (seeded); returns the losses. Progress lines under ``label``."""
    optimiser = torch.optim.Adam(list(params), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with Progress(label, steps) as progress:
        for _ in range(steps):
            t = torch.randint(0, num_train_timesteps, (1,), generator=generator).to(device)
            noise = torch.randn((1, *latent_shape[1:]), generator=generator).to(device)
            loss = loss_fn(t, noise)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            progress.update()
    return losses


# ------------------------------------------------------------------------------ LoRA


def add_lora(unet: nn.Module, rank: int) -> List[Tensor]:
    """Attach HawkI's LoRA (rank ``rank``) to every attention projection; returns its parameters."""
    from peft import LoraConfig

    if LORA_ADAPTER not in getattr(unet, "peft_config", {}):
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
        unet.add_adapter(config, adapter_name=LORA_ADAPTER)
    params = lora_parameters(unet)
    for p in params:
        p.data = p.data.float()
    return params


def lora_parameters(unet: nn.Module) -> List[Tensor]:
    return [p for name, p in unet.named_parameters() if "lora_" in name]


def lora_state(unet: nn.Module) -> Dict[str, Tensor]:
    """The LoRA weights (peft names, without the adapter name), on CPU, contiguous."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=LORA_ADAPTER)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def load_lora_state(unet: nn.Module, state: Dict[str, Tensor]) -> None:
    """Adopt saved LoRA weights (exactly: every LoRA tensor must be in ``state``)."""
    from peft.utils import set_peft_model_state_dict

    params = dict((n, p) for n, p in unet.named_parameters() if "lora_" in n)
    result = set_peft_model_state_dict(unet, state, adapter_name=LORA_ADAPTER)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or not params:
        raise ValueError(f"saved LoRA does not fit the UNet (missing {missing[:3]})")


def set_trainable(params: Sequence[Tensor], trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)


# ------------------------------------------------------------------------------ the cache


def stage_key(**parts: Any) -> str:
    """A stable hash of a stage's dependencies (tensors by content)."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for name in sorted(parts):
        value = parts[name]
        digest.update(name.encode())
        if isinstance(value, Tensor):
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


@dataclass
class StageCache:
    """Stage results as ``<folder>/<stage>-<key>.safetensors``; lookups also search
    ``search_glob`` (the other trials of the experiment), so a rerun reuses earlier work."""

    folder: str
    search_glob: Optional[str] = None
    enabled: bool = True

    def path(self, stage: str, key: str) -> str:
        return os.path.join(self.folder, f"{stage}-{key}.safetensors")

    def load(self, stage: str, key: str) -> Optional[Dict[str, Tensor]]:
        """The saved tensors of ``stage`` under ``key`` (copied into this trial), or None."""
        if not self.enabled:
            return None
        from safetensors.torch import load_file

        name = os.path.basename(self.path(stage, key))
        candidates = [self.path(stage, key)]
        if self.search_glob:
            candidates += sorted(glob.glob(os.path.join(self.search_glob, name)))
        for candidate in candidates:
            if os.path.isfile(candidate):
                try:
                    tensors = load_file(candidate)
                except Exception:  # a foreign or damaged file: recompute
                    continue
                if candidate != self.path(stage, key):
                    self.save(stage, key, tensors)
                return tensors
        return None

    def save(self, stage: str, key: str, tensors: Dict[str, Tensor]) -> str:
        from safetensors.torch import save_file

        path = self.path(stage, key)
        os.makedirs(self.folder, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                      metadata={"stage": stage, "key": key})
        return path


# ------------------------------------------------------------------------------ the stages


@dataclass
class StageSpec:
    """One optimisation stage: what trains, for how long, how fast."""

    name: str
    """embedding | lora | guidance-embedding | guidance-lora."""
    steps: int
    lr: float


def run_embedding_stage(unet: nn.Module, latents: Tensor, init: Tensor, spec: StageSpec, cache: StageCache,
                        key: str, seed: int, num_train_timesteps: int = 1000) -> Tensor:
    """Stage (a)/(c): the embedding ``[1, L, D]`` that best denoises ``latents`` (UNet frozen)."""
    saved = cache.load(spec.name, key)
    if saved is not None:
        return saved["embedding"].to(latents.device)
    embedding = init.detach().clone().float().to(latents.device).requires_grad_(True)
    if spec.steps > 0:
        lora = lora_parameters(unet)
        set_trainable(lora, False)
        alphas = noise_schedule(num_train_timesteps)
        optimise([embedding], lambda t, n: denoising_loss(unet, latents, embedding, t, n, alphas), spec.steps,
                 spec.lr, latents.shape, num_train_timesteps, seed, f"hawki: {spec.name}", latents.device)
    cache.save(spec.name, key, {"embedding": embedding.detach()})
    return embedding.detach()


def run_lora_stage(unet: nn.Module, latents: Tensor, embedding: Tensor, spec: StageSpec, rank: int,
                   cache: StageCache, key: str, seed: int, num_train_timesteps: int = 1000) -> None:
    """Stage (b)/(d): train the UNet's LoRA (added if absent) on ``latents`` with ``embedding`` frozen."""
    params = add_lora(unet, rank)
    saved = cache.load(spec.name, key)
    if saved is not None:
        load_lora_state(unet, saved)
        return
    if spec.steps > 0:
        set_trainable(params, True)
        alphas = noise_schedule(num_train_timesteps)
        frozen = embedding.detach()
        optimise(params, lambda t, n: denoising_loss(unet, latents, frozen, t, n, alphas), spec.steps, spec.lr,
                 latents.shape, num_train_timesteps, seed, f"hawki: {spec.name}", latents.device)
        set_trainable(params, False)
    cache.save(spec.name, key, lora_state(unet))
