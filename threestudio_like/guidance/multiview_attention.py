"""Attention processors for multi-view diffusion priors, on stock diffusers ``Attention`` layers.

Multi-view priors (MVDream, EscherNet) denoise the views of one object jointly: every
self-attention (``attn1``) attends over the tokens of all views of the object, while the layer
norms, residuals, feed-forward and (per-view) cross-attention stay as in Stable Diffusion. The
batch holds ``num_views`` consecutive views per object, ``[(B F), L, C]``; the processor regroups
the tokens to ``[B, F L, C]`` for the attention only, which equals a 3-D transformer block.

Priors that encode cameras *inside* attention (EscherNet's CaPE) subclass
:class:`MultiViewAttnProcessor` and override :meth:`MultiViewAttnProcessor.embed_poses`, which
transforms queries and keys after the projections and before the head split. Both keyword
arguments (``num_views`` and ``poses``) travel through the UNet's ``cross_attention_kwargs``, so
one dict serves every layer.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.config import ConfigError


class MultiViewAttnProcessor:
    """Scaled-dot-product attention that, for self-attention, attends over all views.

    With ``multi_view`` (``attn1``) and ``num_views > 1`` the tokens of the ``num_views``
    consecutive batch rows of an object are attended jointly. Without ``multi_view`` (``attn2``)
    it is plain SDPA attention. ``poses`` is handed to :meth:`embed_poses` (ignored here).
    """

    def __init__(self, multi_view: bool = True) -> None:
        self.multi_view = multi_view

    def embed_poses(
        self, query: Tensor, key: Tensor, poses: Any, self_attention: bool, views_per_row: int
    ) -> Tuple[Tensor, Tensor]:
        """Camera encoding of ``query`` ``[b, Lq, D]`` and ``key`` ``[b, Lk, D]`` (identity here).

        ``views_per_row`` is the number of views whose tokens each row of ``query`` holds
        (``num_views`` for joint self-attention, 1 otherwise).
        """
        return query, key

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        num_views: int = 1,
        poses: Any = None,
    ) -> Tensor:
        if attention_mask is not None or hidden_states.dim() != 3 or attn.spatial_norm is not None:
            raise NotImplementedError(f"{type(self).__name__} supports token attention without masks.")
        residual = hidden_states
        batch_views, tokens, channels = hidden_states.shape
        self_attention = encoder_hidden_states is None
        joint = self.multi_view and self_attention and num_views > 1
        if joint:
            if batch_views % num_views:
                raise ValueError(f"Batch {batch_views} is not a multiple of num_views={num_views}.")
            hidden_states = hidden_states.reshape(batch_views // num_views, num_views * tokens, channels)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if self_attention:
            context = hidden_states
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        if poses is not None:
            query, key = self.embed_poses(query, key, poses, self_attention, num_views if joint else 1)
        batch = query.shape[0]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if joint:
            out = out.reshape(batch_views, tokens, -1)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_attention_processors(
    unet: nn.Module, make: Callable[[bool], MultiViewAttnProcessor] = MultiViewAttnProcessor
) -> nn.Module:
    """``make(multi_view)`` on every attention layer: multi-view on ``attn1``, per view elsewhere."""
    unet.set_attn_processor({name: make(name.endswith("attn1.processor")) for name in unet.attn_processors})
    return unet


def check_view_groups(batch: int, n_views: Any, n_view: int, who: str) -> int:
    """``n_view`` after checking that the data serves groups of ``n_view`` views per object.

    ``n_views`` is the data's ``n_views`` entry (int, tensor or None); ``who`` names the prior.
    """
    if n_views is not None:
        given = int(n_views.reshape(-1)[0]) if torch.is_tensor(n_views) else int(n_views)
        if given != n_view:
            raise ConfigError(
                f"The data gives {given} view(s) per object but {who} expects {n_view}: "
                f"set data.n_view={n_view} (data.random_camera.n_view for image-conditioned recipes)."
            )
    if batch % n_view:
        raise ConfigError(f"The batch of {batch} views is not a multiple of n_view={n_view}: set the batch_size to a multiple.")
    return n_view
