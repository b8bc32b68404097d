"""CLIP towers of original checkpoints -> ``transformers`` models.

* OpenCLIP text tower (``cond_stage_model.model``, SD2.x and MVDream) -> ``CLIPTextModel``.
  SD2 reads the penultimate layer's output followed by ``ln_final``, which is a
  ``CLIPTextModel`` with the last residual block dropped (``num_layers``).
* OpenAI CLIP image tower (``clip.load('ViT-L/14')``, Zero-1-to-3's image embedder) ->
  ``CLIPVisionModelWithProjection``.

Both towers store residual blocks the same way (fused ``in_proj`` attention weights, ``ln_1/2``,
``mlp.c_fc/c_proj``), converted once by :func:`_resblock_entries`. Keys a converter does not
understand fail loudly (:func:`~threestudio_like.models.ldm_convert.check_all_used`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional

from torch import Tensor

from threestudio_like.errors import ConversionError
from threestudio_like.models.ldm_convert import StateDict, check_all_used, key_indices

OPENAI_CLIP_VISUAL_PREFIX = "visual."
_OPEN_CLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")
_RESBLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_BLOCK_PARAM = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


def _resblock_entries(key: str, value: Tensor, layers_prefix: str,
                      num_layers: Optional[int] = None) -> Optional[StateDict]:
    """The ``transformers`` entries of one residual-block tensor of a CLIP tower.

    ``None``: ``key`` is not a block tensor this converter knows; ``{}``: a block at or beyond
    ``num_layers`` (dropped). The fused attention projection is split into q, k and v.
    """
    if m := _IN_PROJ.match(key):
        layer, kind = int(m.group(1)), m.group(2)
        if num_layers is not None and layer >= num_layers:
            return {}
        prefix = f"{layers_prefix}{layer}.self_attn"
        return {f"{prefix}.{name}.{kind}": part.clone()
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0))}
    if m := _BLOCK_PARAM.match(key):
        layer, name, kind = int(m.group(1)), m.group(2), m.group(3)
        if name not in _RESBLOCK:
            return None
        if num_layers is not None and layer >= num_layers:
            return {}
        return {f"{layers_prefix}{layer}.{_RESBLOCK[name]}.{kind}": value}
    return None


def _convert_tower(state: StateDict, own: Callable[[str, Tensor], Optional[StateDict]], layers_prefix: str,
                   what: str, num_layers: Optional[int] = None) -> StateDict:
    """Convert every key of a CLIP tower: ``own(key, value)`` maps the tower's own tensors
    (``None``: not one of them), :func:`_resblock_entries` the residual blocks; any key left
    unmapped is an error."""
    out: StateDict = {}
    used: set = set()
    for key, value in state.items():
        entries = own(key, value)
        if entries is None:
            entries = _resblock_entries(key, value, layers_prefix, num_layers)
        if entries is None:
            continue
        out.update(entries)
        used.add(key)
    check_all_used(state, used, what)
    return out


# ------------------------------------------------------------------------------------------
# OpenCLIP text tower


def infer_open_clip_text_config(
    text: StateDict, penultimate: bool = True, head_width: int = 64
) -> Dict[str, Any]:
    """``CLIPTextConfig`` keyword arguments for an OpenCLIP text tower (SD2: penultimate)."""
    if "token_embedding.weight" not in text:
        raise ConversionError("Not an OpenCLIP text tower: 'token_embedding.weight' is missing.")
    vocab, width = text["token_embedding.weight"].shape
    layers = len(key_indices(list(text), r"transformer\.resblocks\.(\d+)\."))
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": text["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": layers - 1 if penultimate else layers,
        "num_attention_heads": max(width // head_width, 1),
        "max_position_embeddings": text["positional_embedding"].shape[0],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": text["text_projection"].shape[1] if "text_projection" in text else width,
        # OpenCLIP's tokenizer: <start_of_text> 49406, <end_of_text> 49407, padding with id 0
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": 0,
    }


def convert_open_clip_text(text: StateDict, num_layers: Optional[int] = None) -> StateDict:
    """OpenCLIP text keys (prefix stripped) -> ``CLIPTextModel`` keys relative to its text
    transformer (``embeddings.*``, ``encoder.layers.*``, ``final_layer_norm.*``; transformers 4
    nests them under ``text_model.``).

    Residual blocks from ``num_layers`` on are dropped (SD2 reads the penultimate layer).
    """
    def own(key: str, value: Tensor) -> Optional[StateDict]:
        if key in _OPEN_CLIP_IGNORED:
            return {}
        if key == "token_embedding.weight":
            return {"embeddings.token_embedding.weight": value}
        if key == "positional_embedding":
            return {"embeddings.position_embedding.weight": value}
        if key.startswith("ln_final."):
            return {"final_layer_norm." + key.split(".", 1)[1]: value}
        return None

    return _convert_tower(text, own, "encoder.layers.", "OpenCLIP text", num_layers)


# ------------------------------------------------------------------------------------------
# OpenAI CLIP image tower


def infer_openai_clip_visual_config(visual: StateDict, head_width: int = 64) -> Dict[str, Any]:
    """``CLIPVisionConfig`` keyword arguments for an OpenAI CLIP ViT image tower (``visual.``
    prefix stripped); OpenAI's ViTs use QuickGELU and 64-wide heads."""
    if "conv1.weight" not in visual or "proj" not in visual:
        raise ConversionError("Not an OpenAI CLIP image tower: 'conv1.weight' or 'proj' is missing.")
    width, _, patch, _ = visual["conv1.weight"].shape
    grid = int(round((visual["positional_embedding"].shape[0] - 1) ** 0.5))
    return {
        "hidden_size": width,
        "intermediate_size": visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": len(key_indices(list(visual), r"transformer\.resblocks\.(\d+)\.")),
        "num_attention_heads": max(width // head_width, 1),
        "image_size": grid * patch,
        "patch_size": patch,
        "projection_dim": visual["proj"].shape[1],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


_VISUAL_SIMPLE = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}


def convert_openai_clip_visual(visual: StateDict) -> StateDict:
    """OpenAI CLIP image-tower keys (``visual.`` stripped) -> ``CLIPVisionModelWithProjection``
    keys. The projection ``proj`` ``[width, dim]`` becomes ``visual_projection.weight`` (its
    transpose)."""
    def own(key: str, value: Tensor) -> Optional[StateDict]:
        if key in _VISUAL_SIMPLE:
            return {_VISUAL_SIMPLE[key]: value}
        if key == "proj":
            return {"visual_projection.weight": value.t().contiguous()}
        return None

    return _convert_tower(visual, own, "vision_model.encoder.layers.", "OpenAI CLIP image tower")
