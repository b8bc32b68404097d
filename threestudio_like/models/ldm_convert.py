"""Original latent-diffusion ("ldm", CompVis/Stability layout) -> diffusers/transformers keys.

Pure functions from an ldm state dict (prefix already stripped) to the state dict of the stock
model, plus the inference of that model's config from tensor shapes (the CLIP towers are in
:mod:`.clip_convert`):

* UNet (``openaimodel.UNetModel`` and MVDream's ``MultiViewUNetModel``) ->
  ``diffusers.UNet2DConditionModel``. MVDream's camera MLP ``camera_embed.{0,2}`` becomes the
  projection class embedding ``class_embedding.linear_{1,2}``.
* KL autoencoder (``first_stage_model``) -> ``diffusers.AutoencoderKL``.
* EMA weights of ldm training checkpoints (``LitEma`` shadows) copied over the model weights.

Every converter fails loudly on keys it does not understand, so a layout change can never
silently drop weights. Attention head counts cannot be read from shapes; they come from
``num_head_channels`` (SD2/MVDream: 64).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor

from threestudio_like.errors import ConversionError

StateDict = Dict[str, Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."


def key_indices(keys: List[str], pattern: str) -> List[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def check_all_used(state_dict: StateDict, used: set, what: str) -> None:
    """Fail loudly on keys a converter did not map (a layout change must never drop weights)."""
    left = sorted(set(state_dict) - used)
    if left:
        more = f" (+{len(left) - 8} more)" if len(left) > 8 else ""
        raise ConversionError(f"Unexpected {what} keys: {', '.join(left[:8])}{more}.")


# ------------------------------------------------------------------------------------------
# UNet

_RESBLOCK = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def infer_ldm_unet_config(
    unet: StateDict, num_head_channels: int = 64, num_heads: Optional[int] = None
) -> Dict[str, Any]:
    """The ldm UNet hyper-parameters implied by a UNet state dict's keys and shapes.

    ``num_heads`` (SD1.x, Zero-1-to-3: 8 heads at every level) overrides ``num_head_channels``.
    """
    keys = list(unet)
    if "input_blocks.0.0.weight" not in unet:
        raise ConversionError("Not an ldm UNet state dict: 'input_blocks.0.0.weight' is missing.")
    conv_in = unet["input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    downsample_ids = key_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    n_inputs = len(key_indices(keys, r"input_blocks\.(\d+)\."))
    n_levels = len(downsample_ids) + 1
    num_res_blocks = (n_inputs - 1 - len(downsample_ids)) // n_levels
    channel_mult, attention = [], []
    index = 1
    for level in range(n_levels):
        out_ch = unet[f"input_blocks.{index}.0.out_layers.3.weight"].shape[0]
        channel_mult.append(out_ch // model_channels)
        attention.append(any(k.startswith(f"input_blocks.{index}.1.") for k in keys))
        index += num_res_blocks + (1 if level < n_levels - 1 else 0)
    attn2 = [k for k in keys if k.endswith("attn2.to_k.weight")]
    context_dim = unet[attn2[0]].shape[1] if attn2 else None
    proj_in = [k for k in keys if k.endswith("proj_in.weight")]
    depth = len(key_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")) or 1
    cfg: Dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": unet["out.2.weight"].shape[0],
        "model_channels": model_channels,
        "channel_mult": channel_mult,
        "num_res_blocks": num_res_blocks,
        "attention_levels": attention,
        "num_head_channels": num_head_channels,
        "context_dim": context_dim,
        "use_linear_in_transformer": bool(proj_in) and unet[proj_in[0]].dim() == 2,
        "transformer_depth": depth,
        "camera_dim": unet["camera_embed.0.weight"].shape[1] if "camera_embed.0.weight" in unet else None,
        "num_heads": num_heads,
    }
    return cfg


def diffusers_unet_config(ldm: Dict[str, Any], sample_size: int = 32, norm_num_groups: int = 32) -> Dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments for ldm hyper-parameters.

    ``ldm`` holds ``model_channels, channel_mult, num_res_blocks, attention_levels`` (one bool
    per level), ``num_head_channels, context_dim, use_linear_in_transformer``, in/out channels
    and optionally ``camera_dim`` (MVDream) and ``transformer_depth``.
    """
    channels = [ldm["model_channels"] * m for m in ldm["channel_mult"]]
    attention = list(ldm["attention_levels"])
    heads = [max(c // ldm["num_head_channels"], 1) for c in channels]
    if ldm.get("num_heads"):  # a fixed head count per level (SD1.x) instead of a fixed width
        heads = [int(ldm["num_heads"])] * len(channels)
    config: Dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": ldm["in_channels"],
        "out_channels": ldm["out_channels"],
        "block_out_channels": tuple(channels),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "layers_per_block": ldm["num_res_blocks"],
        # diffusers reads ``attention_head_dim`` as the number of heads (a historical name)
        "attention_head_dim": tuple(heads),
        "cross_attention_dim": ldm["context_dim"],
        "use_linear_projection": bool(ldm.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": int(ldm.get("transformer_depth", 1)),
        "norm_num_groups": norm_num_groups,
    }
    if ldm.get("camera_dim"):
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(ldm["camera_dim"])
    return config


def convert_ldm_unet(unet: StateDict, num_res_blocks: int) -> StateDict:
    """ldm UNet keys (prefix stripped) -> ``UNet2DConditionModel`` keys."""
    out: StateDict = {}
    used: set = set()

    def take(src_prefix: str, dst_prefix: str, rename: Optional[Dict[str, str]] = None) -> int:
        count = 0
        for key, value in unet.items():
            if not key.startswith(src_prefix + "."):
                continue
            rest = key[len(src_prefix) + 1:]
            for old, new in (rename or {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            out[f"{dst_prefix}.{rest}"] = value
            used.add(key)
            count += 1
        return count

    take("time_embed.0", "time_embedding.linear_1")
    take("time_embed.2", "time_embedding.linear_2")
    take("camera_embed.0", "class_embedding.linear_1")
    take("camera_embed.2", "class_embedding.linear_2")
    take("input_blocks.0.0", "conv_in")
    take("out.0", "conv_norm_out")
    take("out.2", "conv_out")

    keys = list(unet)
    downsample_ids = key_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")
    n_levels = len(downsample_ids) + 1
    index = 1
    for level in range(n_levels):
        for r in range(num_res_blocks):
            take(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{r}", _RESBLOCK)
            take(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{r}")
            index += 1
        if level < n_levels - 1:
            take(f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            index += 1

    take("middle_block.0", "mid_block.resnets.0", _RESBLOCK)
    take("middle_block.1", "mid_block.attentions.0")
    take("middle_block.2", "mid_block.resnets.1", _RESBLOCK)

    index = 0
    for up in range(n_levels):
        for r in range(num_res_blocks + 1):
            take(f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{r}", _RESBLOCK)
            has_attention = any(k.startswith(f"output_blocks.{index}.1.norm.") for k in keys)
            if has_attention:
                take(f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{r}")
            upsample = f"output_blocks.{index}.{2 if has_attention else 1}.conv"
            if r == num_res_blocks and up < n_levels - 1:
                take(upsample, f"up_blocks.{up}.upsamplers.0.conv")
            index += 1
    check_all_used(unet, used, "UNet")
    return out


# ------------------------------------------------------------------------------------------
# KL autoencoder

_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def infer_ldm_vae_config(vae: StateDict) -> Dict[str, Any]:
    """The ldm autoencoder ``ddconfig`` implied by a VAE state dict."""
    keys = list(vae)
    if "encoder.conv_in.weight" not in vae:
        raise ConversionError("Not an ldm VAE state dict: 'encoder.conv_in.weight' is missing.")
    ch = vae["encoder.conv_in.weight"].shape[0]
    levels = key_indices(keys, r"encoder\.down\.(\d+)\.")
    mult = [vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels]
    return {
        "ch": ch,
        "ch_mult": mult,
        "num_res_blocks": len(key_indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")),
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_ch": vae["decoder.conv_out.weight"].shape[0],
        "z_channels": vae["post_quant_conv.weight"].shape[1],
    }


def diffusers_vae_config(
    ddconfig: Dict[str, Any], scaling_factor: float = 0.18215, sample_size: int = 256, norm_num_groups: int = 32
) -> Dict[str, Any]:
    """``AutoencoderKL`` keyword arguments for an ldm ``ddconfig``."""
    n = len(ddconfig["ch_mult"])
    return {
        "in_channels": ddconfig["in_channels"],
        "out_channels": ddconfig["out_ch"],
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": tuple(ddconfig["ch"] * m for m in ddconfig["ch_mult"]),
        "layers_per_block": ddconfig["num_res_blocks"],
        "latent_channels": ddconfig["z_channels"],
        "norm_num_groups": norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
    }


def convert_ldm_vae(vae: StateDict) -> StateDict:
    """ldm autoencoder keys (prefix stripped) -> ``AutoencoderKL`` keys."""
    out: StateDict = {}
    used: set = set()
    keys = list(vae)
    n_levels = len(key_indices(keys, r"encoder\.down\.(\d+)\."))
    for key, value in vae.items():
        if key.startswith("loss."):  # training-only discriminator/LPIPS weights
            used.add(key)
            continue
        new = _vae_key(key, n_levels)
        if new is None:
            continue
        if ".mid_block.attentions.0." in new and value.dim() > 2:  # 1x1 conv -> linear
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
        used.add(key)
    check_all_used(vae, used, "VAE")
    return out


def _vae_key(key: str, n_levels: int) -> Optional[str]:
    if key.split(".")[0] in ("quant_conv", "post_quant_conv"):
        return key
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return None
    simple = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
    head, _, tail = rest.partition(".")
    if head in simple:
        return f"{part}.{simple[head]}.{tail}"
    if m := re.match(r"mid\.block_(\d)\.(.+)$", rest):
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2).replace('nin_shortcut', 'conv_shortcut')}"
    if m := re.match(r"mid\.attn_1\.(\w+)\.(weight|bias)$", rest):
        if m.group(1) in _VAE_ATTENTION:
            return f"{part}.mid_block.attentions.0.{_VAE_ATTENTION[m.group(1)]}.{m.group(2)}"
        return None
    if m := re.match(r"(down|up)\.(\d+)\.block\.(\d+)\.(.+)$", rest):
        level = int(m.group(2)) if m.group(1) == "down" else n_levels - 1 - int(m.group(2))
        blocks = "down_blocks" if m.group(1) == "down" else "up_blocks"
        tail = m.group(4).replace("nin_shortcut", "conv_shortcut")
        return f"{part}.{blocks}.{level}.resnets.{m.group(3)}.{tail}"
    if m := re.match(r"down\.(\d+)\.downsample\.conv\.(.+)$", rest):
        return f"{part}.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.match(r"up\.(\d+)\.upsample\.conv\.(.+)$", rest):
        return f"{part}.up_blocks.{n_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    return None


def split_ldm_checkpoint(state_dict: StateDict) -> Tuple[StateDict, StateDict, StateDict]:
    """``(unet, vae, open_clip_text)`` parts of a full ldm checkpoint, prefixes stripped."""
    parts = []
    for prefix in (UNET_PREFIX, VAE_PREFIX, OPEN_CLIP_PREFIX):
        parts.append({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    return parts[0], parts[1], parts[2]


# ------------------------------------------------------------------------------------------
# EMA weights of ldm training checkpoints

LDM_EMA_PREFIX = "model_ema."
LDM_EMA_BOOKKEEPING = ("decay", "num_updates")
"""``LitEma``'s own buffers (not shadows of parameters)."""


def ldm_ema_name(key: str, model_prefix: str = "model.") -> str:
    """The ``LitEma`` shadow of the parameter ``key``: ``model.diffusion_model.input_blocks.0.0.weight``
    -> ``model_ema.diffusion_modelinput_blocks00weight`` (the name below ``model.``, dots removed)."""
    return LDM_EMA_PREFIX + key[len(model_prefix):].replace(".", "")


def _listing(names: List[str], limit: int = 4) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def copy_ldm_ema(
    state_dict: StateDict,
    model_prefix: str = "model.",
    strict: bool = False,
    report: Optional[Callable[[str], None]] = print,
) -> Tuple[StateDict, int]:
    """``state_dict`` with the EMA weights copied over the model weights, and how many.

    ldm's ``LitEma`` keeps a shadow of each trainable parameter ``model.<name>`` as the buffer
    ``model_ema.<name without dots>`` (see :func:`ldm_ema_name`) plus its ``decay`` and
    ``num_updates`` counters, which are ignored; this is its ``copy_to(model)`` on a state dict.
    The EMA entries themselves are dropped. Parameters under ``model_prefix`` without a shadow
    keep their raw weights, and shadows without a parameter are unused: both are reported
    through ``report`` (one line), or raise :class:`ConversionError` when ``strict``.
    """
    shadows = {
        k for k in state_dict
        if k.startswith(LDM_EMA_PREFIX) and k[len(LDM_EMA_PREFIX):] not in LDM_EMA_BOOKKEEPING
    }
    out = {k: v for k, v in state_dict.items() if not k.startswith(LDM_EMA_PREFIX)}
    used: set = set()
    missing: List[str] = []
    for key in out:
        if not key.startswith(model_prefix):
            continue
        shadow = ldm_ema_name(key, model_prefix)
        if shadow not in shadows:
            missing.append(key)
            continue
        value = state_dict[shadow]
        if tuple(value.shape) != tuple(out[key].shape):
            raise ConversionError(
                f"EMA weight {shadow} has shape {tuple(value.shape)}, but {key} has {tuple(out[key].shape)}."
            )
        out[key] = value
        used.add(shadow)
    unused = sorted(shadows - used)
    problems = []
    if not shadows:
        problems.append(f"the checkpoint has no EMA weights ({LDM_EMA_PREFIX}*): its raw weights are used")
    elif missing:
        problems.append(f"{len(missing)} of {len(missing) + len(used)} parameters under '{model_prefix}' have "
                        f"no EMA weight and keep their raw values: {_listing(missing)}")
    if unused:
        problems.append(f"{len(unused)} EMA weights match no parameter under '{model_prefix}' and are "
                        f"ignored: {_listing(unused)}")
    if problems:
        message = "EMA: " + "; ".join(problems) + "."
        if strict:
            raise ConversionError(message)
        if report is not None:
            report(f"note: {message}")
    return out, len(used)
