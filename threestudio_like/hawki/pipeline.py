"""``--sample`` for HawkI: photo -> personalised SD2.1 -> MI-guided DDIM aerial view.

Order of work (each optimisation stage cached, :mod:`.personalise`):

1. the photo (:func:`load_photo`) and the text embeddings: CLIP(prompt) initialises e_opt,
   e_aerial = CLIP(aerial_prefix + prompt), the negative prompt is the unconditional branch;
2. (a) e_opt and (b) the LoRA fitted to the photo's latent ``z_in = 0.18215 E(I)`` (the posterior
   mean, so a rerun's key is stable);
3. the guidance image (:mod:`.sources`: HawkI's IPM, or a novel-view prior's view), and (c) e_hom
   (from e_opt) and (d) the LoRA fitted to its latent;
4. DDIM with CFG over ``e = alpha e_aerial + (1 - alpha) e_hom`` (the paper; HawkI's released
   loop uses e_aerial alone, ``text_embedding: aerial``), and after each step but the last the
   mutual-information step (:mod:`.mutual_info`) towards ``z_in``;
5. ``save/``: the aerial image, the guidance image, the IPM image and a labelled sheet
   input | IPM | guidance | aerial.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from threestudio_like import find
from threestudio_like.data.image_io import composite, open_image
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.distillation import classifier_free_guidance
from threestudio_like.guidance.latent_diffusion import UNetBranch
from threestudio_like.hawki import mutual_info as MI
from threestudio_like.hawki import personalise as P
from threestudio_like.hawki.ipm import ipm_image, resize_image
from threestudio_like.hawki.sources import ViewRequest, make_guidance_image
from threestudio_like.models.builders import make_ddim_scheduler, seeded
from threestudio_like.sampling.ddim import ddim_sample
from threestudio_like.utils.files import atomic_path
from threestudio_like.utils.saving import save_image


def load_photo(path: str) -> Tensor:
    """The photo as ``[H, W, 3]`` float in [0, 1] (alpha composited on white)."""
    img = open_image(path, "image", "pass the photo with image=path/to/photo.png",
                     missing_hint=" Pass the photo with image=path/to/photo.png.")
    rgba = torch.from_numpy(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0)
    return composite(rgba).contiguous()


@torch.no_grad()
def encode_mean(guidance: Any, image: Tensor) -> Tensor:
    """Scaled latent ``[1, 4, s, s]`` (posterior mean) of ``image`` ``[H, W, 3]`` at ``image_size``."""
    x = guidance.resize_renders(image[None].to(guidance.device)) * 2.0 - 1.0
    posterior = guidance.vae.encode(x.to(guidance.weights_dtype)).latent_dist
    return (posterior.mode() * guidance.vae.config.scaling_factor).float()


def mixed_text(c: Any, e_aerial: Tensor, e_hom: Tensor) -> Tensor:
    """The sampling text embedding: ``alpha e_aerial + (1 - alpha) e_hom``, or e_aerial alone."""
    if c.text_embedding == "aerial":
        return e_aerial
    return c.alpha * e_aerial + (1.0 - c.alpha) * e_hom


def source_options(c: Any) -> Dict[str, Any]:
    """The chosen guidance-image source's own settings: the ``<source>_*`` fields, unprefixed."""
    prefix = f"{c.guidance_image}_"
    return {name[len(prefix):]: c[name] for name in c.keys() if name.startswith(prefix)}


def mi_options(c: Any) -> Dict[str, Any]:
    return {"num_bins": int(c.mi_bins), "sigma": float(c.mi_sigma), "normalisation": str(c.mi_normalisation),
            "fixed_range": float(c.mi_fixed_range)}


def mi_hook(predict: Callable[[Tensor, Tensor], Tensor], alphas_cumprod: Tensor, target: Tensor,
            c: Any) -> Callable[..., Tensor]:
    """The sampler's ``after_step``: the MI step towards ``target`` after every DDIM step but the
    last, with ``x0(z_t) = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (``eps`` re-predicted
    from ``z_t`` with ``mi_through_unet``, else the step's own prediction held fixed)."""

    def after_step(z_prev: Tensor, z_t: Tensor, t: Tensor, eps: Tensor, index: int, total: int) -> Tensor:
        if c.mi_scale <= 0 or index >= total - 1:
            return z_prev
        abar = alphas_cumprod[int(t)].float().to(z_t.device)

        def x0_of(z: Tensor) -> Tensor:
            e = predict(z, t.expand(z.shape[0])) if c.mi_through_unet else eps
            return (z - (1.0 - abar).sqrt() * e) / abar.sqrt()

        grad = MI.mi_gradient(z_t, x0_of, target, **mi_options(c))
        return MI.mi_step(z_prev, grad, c.mi_scale)

    return after_step


def sample_aerial(guidance: Any, text: Tensor, uncond: Tensor, target: Tensor, seed: int) -> Tensor:
    """MI-guided DDIM latents ``[1, 4, s, s]`` (CFG over ``text`` vs ``uncond``) towards ``target``."""
    c = guidance.cfg
    branches = [UNetBranch(text.to(guidance.device)), UNetBranch(uncond.to(guidance.device))]

    def predict(x_t: Tensor, t: Tensor) -> Tensor:
        eps_cond, eps_uncond = guidance.unet_branches(x_t, t, branches)
        return classifier_free_guidance(eps_uncond, eps_cond, c.guidance_scale)

    alphas = make_ddim_scheduler(c.num_train_timesteps).alphas_cumprod
    size = guidance.latent_size
    with seeded(seed):
        return ddim_sample(predict, (1, 4, size, size), c.num_train_timesteps, c.ddim_steps, device=guidance.device,
                           generator=torch.Generator().manual_seed(seed), eta=c.eta,
                           after_step=mi_hook(predict, alphas, target, c))


def save_png(path: str, image: Tensor | np.ndarray) -> str:
    """``[H, W, 3]`` in [0, 1] (or uint8) -> PNG, written atomically."""
    with atomic_path(path) as tmp:
        save_image(tmp, image)
    return path


def labelled_sheet(panels: Dict[str, Tensor], size: int) -> np.ndarray:
    """Panels side by side at ``size`` px, each under its label: ``[size + 24, n size, 3]`` uint8."""
    from PIL import Image, ImageDraw

    strip = 24
    sheet = Image.new("RGB", (size * len(panels), size + strip), "white")
    for i, (label, image) in enumerate(panels.items()):
        pixels = (resize_image(image.detach().float().cpu(), size).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        sheet.paste(Image.fromarray(pixels), (i * size, strip))
        caption = Image.new("RGB", (size, strip), "white")  # clipped to its panel: never over the next
        draw = ImageDraw.Draw(caption)
        lines = [label] if draw.textlength(label) <= size - 8 else label.split(" ", 1)
        for row, line in enumerate(lines[:2]):
            draw.text((4, 1 + 11 * row if len(lines) > 1 else 6), line, fill="black")
        sheet.paste(caption, (i * size, 0))
    return np.asarray(sheet)


def _cache(cfg: Any, use: bool) -> P.StageCache:
    trial = str(cfg.trial_dir)
    return P.StageCache(os.path.join(trial, "hawki"), os.path.join(os.path.dirname(trial), "*", "hawki"), use)


def run_hawki(cfg: Any, status: Optional[Any] = None) -> str:
    """The HawkI pipeline for experiment config ``cfg`` (module doc); returns the sheet's path."""
    system = cfg.system
    gcfg = dict(system.get("guidance", {}))
    photo = load_photo(str(gcfg.get("image_path") or ""))  # a bad image fails before any weights load
    if not system.get("prompt_processor_type"):
        raise ConfigError("HawkI needs a prompt describing the photo: set system.prompt_processor_type: "
                          "stable-diffusion-prompt-processor and pass prompt=\"...\".")
    if status is not None:
        status.phase("sample")
    guidance = find(system.guidance_type)(gcfg)  # hawki-guidance (or a subclass)
    c = guidance.cfg
    processor = find(system.prompt_processor_type)(dict(system.get("prompt_processor", {})))
    prompt, negative = processor.cfg.prompt, processor.cfg.negative_prompt
    e_init, e_aerial, uncond = (e[None] for e in processor.embeddings_for([prompt, c.aerial_prefix + prompt, negative]))
    seed, device = int(cfg.seed), guidance.device
    cache = _cache(cfg, c.use_cache)
    unet = guidance.unet

    z_in = encode_mean(guidance, photo)
    base = dict(weights=c.pretrained_model_name_or_path, photo=photo, size=c.image_size, seed=seed)
    spec_a = P.StageSpec("embedding", c.embedding_steps, c.embedding_lr)
    key_a = P.stage_key(stage=vars(spec_a), init=e_init, **base)
    e_opt = P.run_embedding_stage(unet, z_in, e_init.to(device), spec_a, cache, key_a, seed, c.num_train_timesteps)
    spec_b = P.StageSpec("lora", c.lora_steps, c.lora_lr)
    key_b = P.stage_key(stage=vars(spec_b), previous=key_a, rank=c.lora_rank)
    P.run_lora_stage(unet, z_in, e_opt, spec_b, c.lora_rank, cache, key_b, seed + 1, c.num_train_timesteps)

    request = ViewRequest(c.elevation_deg, c.azimuth_deg, c.input_elevation_deg, c.image_size, seed,
                          source_options(c))
    key_g = P.stage_key(stage="guidance-image", source=c.guidance_image, photo=photo, request=vars(request))
    saved = cache.load("guidance-image", key_g)
    if saved is None:  # contiguous: the encoder's result must not depend on the memory layout
        guide_image = make_guidance_image(c.guidance_image, photo, request).float().cpu().contiguous()
        cache.save("guidance-image", key_g, {"image": guide_image})
    else:
        guide_image = saved["image"]
    z_hom = encode_mean(guidance, guide_image)
    spec_c = P.StageSpec("guidance-embedding", c.guidance_embedding_steps, c.guidance_embedding_lr)
    key_c = P.stage_key(stage=vars(spec_c), previous=key_b, guide=key_g)
    e_hom = P.run_embedding_stage(unet, z_hom, e_opt, spec_c, cache, key_c, seed + 2, c.num_train_timesteps)
    spec_d = P.StageSpec("guidance-lora", c.guidance_lora_steps, c.guidance_lora_lr)
    key_d = P.stage_key(stage=vars(spec_d), previous=key_c, rank=c.lora_rank)
    P.run_lora_stage(unet, z_hom, e_hom, spec_d, c.lora_rank, cache, key_d, seed + 3, c.num_train_timesteps)

    text = mixed_text(c, e_aerial.to(device), e_hom)
    latents = sample_aerial(guidance, text, uncond, z_in, seed)
    with torch.no_grad():
        aerial = guidance.decode_latents(latents)[0].cpu()
    ipm = ipm_image(photo, c.image_size)
    folder = os.path.join(str(cfg.trial_dir), "save")
    os.makedirs(folder, exist_ok=True)
    written = {
        "aerial": save_png(os.path.join(folder, "hawki-aerial.png"), aerial),
        "guidance": save_png(os.path.join(folder, f"hawki-guidance-{c.guidance_image}.png"), guide_image),
        "ipm": save_png(os.path.join(folder, "hawki-ipm.png"), ipm),
    }
    panels = {"input": photo, "IPM": ipm, f"guidance ({c.guidance_image})": guide_image, "aerial": aerial}
    written["sheet"] = save_png(os.path.join(folder, "hawki-sheet.png"), labelled_sheet(panels, min(c.image_size, 256)))
    if status is not None:
        for kind, path in written.items():
            status.add_output("samples", path, kind)
    return written["sheet"]
