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
group (or plain SDS). ``sample`` generates the 4 views of a prompt with DDIM, as MVDream's
``t2i.py`` does. ``python launch.py --convert mvdream SRC DST`` writes a diffusers folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import c2w_from_spherical, deg2rad
from threestudio_like.config import ConfigError
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance import ldm_convert as LC
from threestudio_like.guidance.latent_diffusion import (
    LatentDiffusionGuidance,
    load_diffusers_component,
    make_ddim_scheduler,
    move,
    quiet_progress_bars,
    text_encoder_from_open_clip,
    tiny_unet,
    tiny_vae,
    unet_from_ldm,
    vae_from_ldm,
)
from threestudio_like.guidance.multiview_attention import (
    MultiViewAttnProcessor,
    check_view_groups,
    install_attention_processors,
)
from threestudio_like.guidance.weights import (
    TINY_RANDOM,
    load_state_dict_file,
    register_converter,
    resolve_weights,
)

# MVDream's sd-v2-base.yaml UNet (= SD2.1-base + camera_dim 16), in ldm terms.
MVDREAM_SD21_UNET: Dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_levels": [True, True, True, False],  # attention_resolutions [4, 2, 1]
    "num_head_channels": 64,
    "context_dim": 1024,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "camera_dim": 16,
}
# The same architecture at toy size (text width 32 = the tiny text encoder's).
TINY_MVDREAM_UNET: Dict[str, Any] = {
    **MVDREAM_SD21_UNET,
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attention_levels": [True, True, False],
    "num_head_channels": 8,
    "context_dim": 32,
}
CAMERA_DIM = 16
MVDREAM_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, "
    "cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, "
    "dehydrated, bad proportions"
)


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
# loading


def check_mvdream_unet(unet: nn.Module, where: str) -> None:
    """A clear error when the weights are a plain SD UNet without MVDream's camera MLP."""
    if getattr(unet.config, "class_embed_type", None) != "projection" or (
        unet.config.projection_class_embeddings_input_dim != CAMERA_DIM
    ):
        raise ConfigError(
            f"{where} is not an MVDream UNet: it has no 16-d camera embedding "
            f"(class_embed_type='projection'). Use MVDream/MVDream (sd-v2.1-base-4view.pt) or a "
            f"folder written by 'python launch.py --convert mvdream'."
        )


def load_mvdream_networks(
    name_or_path: str, dtype: torch.dtype = torch.float32, num_head_channels: int = 64
) -> Tuple[nn.Module, nn.Module]:
    """``(unet, vae)`` of MVDream from any weights source, multi-view attention installed."""
    quiet_progress_bars()
    source = resolve_weights(
        name_or_path, "MVDream", subfolders=("unet", "vae"), key="system.guidance.pretrained_model_name_or_path"
    )
    if source.kind == TINY_RANDOM:
        unet, vae = tiny_unet(TINY_MVDREAM_UNET, sample_size=8), tiny_vae()
    elif source.kind == "diffusers":
        unet = load_diffusers_component(source, "unet", "UNet2DConditionModel", dtype)
        vae = load_diffusers_component(source, "vae", "AutoencoderKL", dtype)
    else:
        unet_sd, vae_sd, _ = LC.split_ldm_checkpoint(load_state_dict_file(source.path))
        if not unet_sd or not vae_sd:
            raise LC.ConversionError(
                f"{source.path} is not an ldm checkpoint with '{LC.UNET_PREFIX}*' and '{LC.VAE_PREFIX}*' keys."
            )
        unet = unet_from_ldm(unet_sd, num_head_channels=num_head_channels)
        vae = vae_from_ldm(vae_sd)
    check_mvdream_unet(unet, source.path or source.name)
    install_multiview_attention(unet)
    return move(unet, dtype=dtype), move(vae, dtype=dtype)


@register_converter("mvdream")
def convert_mvdream(src: str, dst: str, tokenizer: Optional[str] = None, num_head_channels: int = 64) -> str:
    """Original MVDream checkpoint (file or ``MVDream/MVDream``) -> diffusers folder ``dst``.

    Writes ``unet/``, ``vae/``, ``text_encoder/`` (safetensors), ``scheduler/``,
    ``tokenizer/`` (when one can be found) and ``model_index.json``.
    """
    from threestudio_like.prompt.stable_diffusion import load_tokenizer

    quiet_progress_bars()
    source = resolve_weights(src, "MVDream")
    if source.kind != "checkpoint":
        raise ValueError(f"--convert mvdream takes the original checkpoint file (sd-v2.1-base-4view.pt), got {src!r}.")
    state = load_state_dict_file(source.path)
    unet_sd, vae_sd, text_sd = LC.split_ldm_checkpoint(state)
    unet = unet_from_ldm(unet_sd, num_head_channels=num_head_channels)
    check_mvdream_unet(unet, source.path)
    parts: Dict[str, nn.Module] = {"unet": unet, "vae": vae_from_ldm(vae_sd)}
    if text_sd:
        parts["text_encoder"] = text_encoder_from_open_clip(text_sd)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for name, model in parts.items():
        model.save_pretrained(str(out / name), safe_serialization=True)
        print(f"  wrote {out / name}")
    make_ddim_scheduler().save_pretrained(str(out / "scheduler"))
    index: Dict[str, Any] = {
        "_class_name": "MVDreamPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if "text_encoder" in parts:
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
    try:
        tok, where = load_tokenizer(source, tokenizer)
        tok.save_pretrained(str(out / "tokenizer"))
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        print(f"  wrote {out / 'tokenizer'} (from {where})")
    except FileNotFoundError as exc:
        print(f"  note: no tokenizer written ({str(exc).splitlines()[0]}); prompts will use SD2.1's "
              f"tokenizer from the Hugging Face cache or system.prompt_processor.tokenizer_name_or_path.")
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return str(out)


# ------------------------------------------------------------------------------------------
# the guidance


@register("mvdream-guidance")
class MVDreamGuidance(LatentDiffusionGuidance):
    """Multi-view SDS / x0-reconstruction guidance from MVDream (4 views per object)."""

    @dataclass
    class Config(LatentDiffusionGuidance.Config):
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
        recon_loss: bool = True
        """x0-reconstruction loss (MVDream Sec. 3.2); False: plain SDS with w(t) = 1 - abar."""
        recon_std_rescale: float = 0.5
        """CFG rescale r of the reconstructed x0 (std matched per view group); 0 disables."""
        num_head_channels: int = 64
        """Attention head width of the original checkpoint (for conversion on load)."""
        sample_steps: int = 50
        """--sample: DDIM steps."""
        sample_guidance_scale: float = 10.0
        """--sample: CFG scale."""
        sample_elevation_deg: float = 15.0
        """--sample: elevation of the 4 views."""
        sample_azimuth_start_deg: float = 0.0
        """--sample: our azimuth of the first view (0 = front = MVDream's 90)."""
        sample_prompt_suffix: str = ", 3d asset"
        """--sample: appended to the prompt (MVDream's t2i.py)."""
        sample_negative_prompt: str = ""
        """--sample: negative prompt (t2i.py uses the empty prompt)."""

    cfg: Config

    def load_networks(self) -> None:
        self.unet, self.vae = load_mvdream_networks(
            self.cfg.pretrained_model_name_or_path, self.weights_dtype, self.cfg.num_head_channels
        )
        self.check_image_size()

    def networks(self) -> Dict[str, nn.Module]:
        return {"unet": self.unet, "vae": self.vae}

    def predict_noise(
        self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, camera: Tensor, n_view: int
    ) -> Tuple[Tensor, Tensor]:
        """``(eps_cond, eps_uncond)`` for noisy latents ``[B, 4, h, w]``.

        ``text_embeddings`` is ``[2B, L, D]`` (conditional first), ``camera`` ``[B, 16]``.
        """
        dtype = self.weights_dtype
        eps = self.unet(
            torch.cat([x_t, x_t]).to(dtype),
            torch.cat([t, t]).to(self.device),
            encoder_hidden_states=text_embeddings.to(self.device, dtype),
            class_labels=torch.cat([camera, camera]).to(self.device, dtype),
            cross_attention_kwargs={"num_views": n_view},
        ).sample.float()
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond, eps_uncond

    def _check_batch(self, batch: int, n_views: Any) -> int:
        return check_view_groups(batch, n_views, self.cfg.n_view, "the MVDream guidance")

    def __call__(
        self,
        rgb: Tensor,
        condition: Any,
        *,
        c2w: Tensor,
        n_views: Any = None,
        rgb_as_latents: bool = False,
        **kwargs: Any,
    ) -> Dict[str, Tensor]:
        """Loss ``loss_sds`` for renders ``[B, H, W, 3]`` of ``B / n_view`` objects.

        ``condition`` is a text condition with ``get_text_embeddings(batch_size)`` (a
        :class:`~threestudio_like.prompt.stable_diffusion.PromptEmbeddings`); ``c2w`` the cameras.
        """
        if not hasattr(condition, "get_text_embeddings"):
            raise ConfigError(
                "mvdream-guidance needs text embeddings: set system.prompt_processor_type: "
                "stable-diffusion-prompt-processor."
            )
        batch = rgb.shape[0]
        n_view = self._check_batch(batch, n_views)
        self.ensure_device(rgb.device)
        latents = self.latents_from_rgb_as_latents(rgb) if rgb_as_latents else self.encode_images(rgb)
        text = condition.get_text_embeddings(batch, device=self.device, dtype=self.weights_dtype)
        camera = mvdream_camera(c2w).to(self.device)

        def guided_noise(x_t: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
            eps_cond, eps_uncond = self.predict_noise(x_t, t, text, camera, n_view)
            return D.classifier_free_guidance(eps_uncond, eps_cond, self.cfg.guidance_scale), eps_cond, eps_uncond

        if not self.cfg.recon_loss:
            return self.sds(latents, lambda x_t, t: guided_noise(x_t, t)[0])
        return self.x0_reconstruction(
            latents, lambda x_t, t: guided_noise(x_t, t)[:2], self.cfg.recon_std_rescale, group=n_view
        )

    # -- sampling (python launch.py --sample) -------------------------------------------------
    def sample_prompts(self, prompt: str) -> Tuple[str, str]:
        """``(prompt, negative_prompt)`` used by ``--sample`` (t2i.py's suffix and empty negative)."""
        return prompt + self.cfg.sample_prompt_suffix, self.cfg.sample_negative_prompt

    @torch.no_grad()
    def sample(
        self,
        condition: Any,
        generator: Optional[torch.Generator] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
    ) -> Tensor:
        """The ``n_view`` views ``[n_view, S, S, 3]`` of ``condition``'s prompt, by DDIM."""
        n_view = self.cfg.n_view
        camera = orbit_cameras(n_view, self.cfg.sample_elevation_deg, self.cfg.sample_azimuth_start_deg).to(self.device)
        text = condition.get_text_embeddings(n_view, device=self.device, dtype=self.weights_dtype)
        scale = self.cfg.sample_guidance_scale if guidance_scale is None else guidance_scale

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            eps_cond, eps_uncond = self.predict_noise(x_t, t, text, camera, n_view)
            return D.classifier_free_guidance(eps_uncond, eps_cond, scale)

        channels = self.unet.config.in_channels
        latents = self.ddim_sample(
            predict, (n_view, channels, self.latent_size, self.latent_size),
            num_inference_steps or self.cfg.sample_steps, generator=generator,
        )
        return self.decode_latents(latents)
