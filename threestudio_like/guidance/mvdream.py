"""MVDream: multi-view Stable Diffusion 2.1 as a guidance, on a stock diffusers UNet.

MVDream (Shi et al. 2023) is SD2.1-base plus two deltas, both expressed without forking the UNet:

* a camera MLP ``16 -> 1280 -> 1280`` on the flattened 4x4 camera-to-world matrix, added to the
  time embedding: the UNet's *projection class embedding* (``class_labels`` = camera);
* self-attention over the tokens of all views of one object: :class:`MultiViewAttnProcessor`
  on every ``attn1``. Cross-attention (text) and feed-forward layers stay per view.

Camera convention: MVDream takes our ``c2w`` with its translation scaled to unit length
(:func:`mvdream_camera`); our azimuth ``a`` is MVDream's azimuth ``a + 90``.

The guidance (``mvdream-guidance``) follows MVDream-threestudio: renders of ``n_view`` views
per object (contiguous in the batch) resized to 256 and encoded, one timestep shared by the
batch, CFG ``eps_u + s (eps_c - eps_u)`` and the x0-reconstruction loss with CFG rescale per view
group (``update_rule: x0``; or plain SDS). ``sample`` generates the 4 views of a prompt with DDIM,
as MVDream's ``t2i.py`` does. Weights (:data:`MVDREAM_WEIGHTS`): ``MVDream/MVDream``
(``sd-v2.1-base-4view.pt``), a local file, a diffusers folder, or ``tiny-random``;
``python launch.py --convert mvdream SRC DST`` writes a diffusers folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras, c2w_from_spherical, deg2rad
from threestudio_like.errors import ConfigError
from threestudio_like.guidance.base import NoisePredictor, UpdateRule, classifier_free
from threestudio_like.guidance.latent_diffusion import TextPriorGuidance, unet_and_vae
from threestudio_like.guidance.multiview_attention import (
    MultiViewAttnProcessor,
    check_view_groups,
    install_attention_processors,
)
from threestudio_like.models.architectures import TINY_MVDREAM_UNET
from threestudio_like.models.builders import parts_from_ldm_checkpoint
from threestudio_like.models.hub import OriginalCheckpoint, WeightsSource
from threestudio_like.models.loader import WeightsRecipe, register_weights
from threestudio_like.prompt.stable_diffusion import PromptEmbeddings, load_tokenizer

CAMERA_DIM = 16


def install_multiview_attention(unet: nn.Module) -> nn.Module:
    """Multi-view processors on every self-attention (``attn1``), per-view SDPA elsewhere."""
    return install_attention_processors(unet, MultiViewAttnProcessor)


# ------------------------------------------------------------------------------------------
# cameras


def mvdream_camera(c2w: Tensor) -> Tensor:
    """MVDream's camera condition ``[B, 16]`` for our ``c2w`` ``[B, 4, 4]``.

    Our cameras (z up, OpenGL axes) are what MVDream calls "blender" cameras; it only needs the
    translation on the unit sphere, then the row-major flattening. Our azimuth ``a`` equals
    MVDream's ``a + 90``. The input is not modified.
    """
    camera = c2w.detach().float().clone().reshape(-1, 4, 4)
    translation = camera[:, :3, 3]
    camera[:, :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + 1e-8)
    return camera.reshape(-1, 16)


def orbit_cameras(n_view: int, elevation_deg: float, azimuth_start_deg: float = 0.0) -> Tensor:
    """MVDream conditions ``[n_view, 16]`` of ``n_view`` views 360/n apart (our azimuths)."""
    azimuth = azimuth_start_deg + torch.arange(n_view, dtype=torch.float32) * (360.0 / n_view)
    elevation = torch.full_like(azimuth, float(elevation_deg))
    c2w = c2w_from_spherical(deg2rad(elevation), deg2rad(azimuth), torch.ones_like(azimuth))
    return mvdream_camera(c2w)


# ------------------------------------------------------------------------------------------
# weights


def check_mvdream_unet(parts: Dict[str, nn.Module], where: str) -> None:
    """A clear error when the weights are a plain SD UNet without MVDream's camera MLP."""
    unet = parts["unet"]
    if getattr(unet.config, "class_embed_type", None) != "projection" or (
        unet.config.projection_class_embeddings_input_dim != CAMERA_DIM
    ):
        raise ConfigError(
            f"{where} is not an MVDream UNet: it has no 16-d camera embedding "
            f"(class_embed_type='projection'). Use MVDream/MVDream (sd-v2.1-base-4view.pt) or a "
            f"folder written by 'python launch.py --convert mvdream'."
        )


def write_tokenizer(out: Path, source: WeightsSource, options: Dict[str, Any], index: Dict[str, Any]) -> None:
    """``--convert mvdream``: copy SD2.1's CLIP tokenizer (or ``--tokenizer``) into ``tokenizer/``."""
    try:
        tok, where = load_tokenizer(source, options.get("tokenizer"))
    except FileNotFoundError as exc:
        print(f"  note: no tokenizer written ({str(exc).splitlines()[0]}); prompts will use SD2.1's "
              f"tokenizer from the Hugging Face cache or system.prompt_processor.tokenizer_name_or_path.")
        return
    tok.save_pretrained(str(out / "tokenizer"))
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    print(f"  wrote {out / 'tokenizer'} (from {where})")


MVDREAM_WEIGHTS = register_weights(WeightsRecipe(
    "mvdream", "MVDream", unet_and_vae(TINY_MVDREAM_UNET),
    from_checkpoint=lambda state, options: parts_from_ldm_checkpoint(state, options["num_head_channels"]),
    check=check_mvdream_unet,
    prepare=lambda parts: install_multiview_attention(parts["unet"]),
    hub_files={"MVDream/MVDream": OriginalCheckpoint("sd-v2.1-base-4view.pt", "MVDream (SD2.1-base, 4 views)", "mvdream")},
    default_options={"num_head_channels": 64},
    pipeline_class="MVDreamPipeline",
    after_convert=write_tokenizer,
))


# ------------------------------------------------------------------------------------------
# the guidance


@register("mvdream-guidance")
class MVDreamGuidance(TextPriorGuidance):
    """Multi-view SDS / x0-reconstruction guidance from MVDream (4 views per object)."""

    @dataclass
    class Config(TextPriorGuidance.Config):
        pretrained_model_name_or_path: str = "MVDream/MVDream"
        """MVDream weights: MVDream/MVDream (sd-v2.1-base-4view.pt), a file, a --convert folder, tiny-random."""
        guidance_scale: float = 50.0
        """CFG scale s in eps_u + s (eps_c - eps_u)."""
        image_size: int = 256
        """MVDream works at 256x256 (latents 32x32)."""
        n_view: int = 4
        """Views per object; the batch holds groups of n_view consecutive views."""
        shared_timestep: bool = True
        """One timestep for the whole batch (as MVDream-threestudio)."""
        min_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.02, 8000])
        """Lowest timestep fraction: annealed 0.98 -> 0.02 over 8000 steps."""
        max_step_percent: Any = field(default_factory=lambda: [0, 0.98, 0.50, 8000])
        """Highest timestep fraction: annealed 0.98 -> 0.50 over 8000 steps."""
        update_rule: UpdateRule = "x0"
        """x0 (MVDream's x0-reconstruction loss, Sec. 3.2) | sds (w(t) = 1 - abar) | sjc."""
        recon_std_rescale: float = 0.5
        """CFG rescale r of the reconstructed x0 (std matched per view group); 0 disables."""
        num_head_channels: int = 64
        """Attention head width of the original checkpoint (for conversion on load)."""

    cfg: Config
    weights = MVDREAM_WEIGHTS
    sample_defaults = {"steps": 50, "guidance_scale": 10.0, "eta": 0.0, "elevation_deg": 15.0,
                       "azimuth_start_deg": 0.0, "prompt_suffix": ", 3d asset", "negative_prompt": ""}
    """MVDream's ``t2i.py``: CFG 10, elevation 15, ", 3d asset" appended, empty negative prompt."""

    def weights_options(self) -> Dict[str, Any]:
        return {"num_head_channels": self.cfg.num_head_channels}

    def predict_noise(
        self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: Tensor, n_view: int
    ) -> Tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` for noisy latents ``[B, 4, h, w]``.

        ``text_embeddings`` is ``[2B, L, D]`` (conditional first), ``camera`` ``[B, 16]``.
        """
        eps_cond, eps_uncond = self.unet_branches(
            x_t, t, self.text_branches(text_embeddings, class_labels=camera), num_views=n_view)
        return eps_cond, eps_uncond

    def guided(self, text: Tensor, camera: Tensor, n_view: int, scale: float) -> NoisePredictor:
        """``predict(x_t, t) -> (guided eps, conditional eps)`` for the views of ``camera``."""
        return classifier_free(lambda x_t, t: self.predict_noise(x_t, t, text, camera, n_view), scale)

    def guide(self, rgb: Tensor, condition: PromptEmbeddings, cameras: Cameras,
              rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        """Loss ``loss_sds`` for renders ``[B, H, W, 3]`` of ``B / n_view`` objects."""
        batch = rgb.shape[0]
        n_view = check_view_groups(batch, cameras.n_views, self.cfg.n_view, "the MVDream guidance")
        latents = self.to_latents(rgb, rgb_as_latents)
        text = condition.get_text_embeddings(batch, device=self.device, dtype=self.weights_dtype)
        camera = mvdream_camera(cameras.c2w).to(self.device)
        return self.distil(latents, self.guided(text, camera, n_view, self.cfg.guidance_scale), group=n_view)

    # -- sampling (python launch.py --sample) -------------------------------------------------
    @torch.no_grad()
    def sample(self, condition: PromptEmbeddings, settings: Any, generator: Any = None) -> Tensor:
        """The ``n_view`` views ``[n_view, S, S, 3]`` of ``condition``'s prompt, by DDIM."""
        n_view = self.cfg.n_view
        camera = orbit_cameras(n_view, settings.elevation_deg, settings.azimuth_start_deg).to(self.device)
        text = condition.get_text_embeddings(n_view, device=self.device, dtype=self.weights_dtype)
        predict = self.guided(text, camera, n_view, settings.guidance_scale)
        return self.sample_images(lambda x_t, t: predict(x_t, t)[0], n_view, settings.steps, generator, settings.eta)
