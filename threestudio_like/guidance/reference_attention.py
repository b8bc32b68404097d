"""Reference attention ("reference-only" control) as attention processors on a stock UNet.

Zero123++ conditions its UNet on an input image *locally* by letting every self-attention layer
see the image's tokens. Two passes of the same UNet at the same timestep:

1. **write**: the UNet runs on the noised latent of the conditioning image; every ``attn1``
   stores its input tokens ``h_ref`` (the block's layer-normed hidden states);
2. **read**: the UNet runs on the noisy latent being denoised; every ``attn1`` attends with
   queries from its own tokens ``h`` and keys/values from ``cat([h, h_ref])`` along the sequence:
   ``softmax(q(h) k([h, h_ref])^T / sqrt(d)) v([h, h_ref])``.

The write pass's own outputs are discarded; its attention is plain self-attention, so the stored
tokens do not depend on the read pass. The two passes may have different spatial sizes (the
reference is one 320 px image, the target a 960 x 640 grid): only token counts differ.

Both passes get one :class:`ReferenceBank` through ``cross_attention_kwargs={"reference": bank}``;
layers are keyed by their processor name (as upstream's ``ref_dict``). Other attention layers
(``attn2``) run unchanged. The attention maths is :class:`MultiViewAttnProcessor`'s (single-view
SDPA), so reference attention adds no second copy of it.
"""
from __future__ import annotations

from typing import Dict, Literal, Optional

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like.guidance.multiview_attention import MultiViewAttnProcessor

BankMode = Literal["write", "read"]


class ReferenceBank:
    """The tokens the write pass stores for the read pass, by layer name."""

    def __init__(self) -> None:
        self.mode: BankMode = "write"
        self.tokens: Dict[str, Tensor] = {}

    def read(self) -> "ReferenceBank":
        """Switch to the read pass (after the write pass filled the bank)."""
        if not self.tokens:
            raise RuntimeError("The reference bank is empty: run the write pass first.")
        self.mode = "read"
        return self


class ReferenceAttnProcessor:
    """SDPA attention; on enabled layers (``attn1``) it writes or reads reference tokens."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self.inner = MultiViewAttnProcessor(multi_view=False)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        reference: Optional[ReferenceBank] = None,
    ) -> Tensor:
        if self.enabled and reference is not None:
            if reference.mode == "write":
                reference.tokens[self.name] = hidden_states
            else:
                stored = reference.tokens.pop(self.name)
                if stored.shape[0] != hidden_states.shape[0]:
                    raise ValueError(f"{self.name}: {stored.shape[0]} reference rows for "
                                     f"{hidden_states.shape[0]} rows being denoised.")
                context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
                encoder_hidden_states = torch.cat([context, stored.to(context.dtype)], dim=1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_reference_attention(unet: nn.Module) -> nn.Module:
    """:class:`ReferenceAttnProcessor` on every attention layer, enabled on the ``attn1`` ones."""
    unet.set_attn_processor({name: ReferenceAttnProcessor(name, name.endswith("attn1.processor"))
                             for name in unet.attn_processors})
    return unet


def reference_unet_call(unet: nn.Module, reference_input: Tensor, sample: Tensor, t: Tensor,
                        encoder_hidden_states: Tensor) -> Tensor:
    """The UNet's output on ``sample`` ``[R, C, h, w]`` with reference attention to the noised
    reference latents ``reference_input`` ``[R, C, h', w']`` (row ``i`` reads row ``i``): the
    write pass, then the read pass, at timesteps ``t`` ``[R]`` and context ``[R, L, D]``."""
    bank = ReferenceBank()
    unet(reference_input, t, encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs={"reference": bank})
    return unet(sample, t, encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs={"reference": bank.read()}).sample
