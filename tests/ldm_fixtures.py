"""Random state dicts in the original ldm layout (MVDream's sd-v2.1-base-4view.pt key names
and shapes) at toy channel counts, written from the ldm model definitions
(``openaimodel.MultiViewUNetModel``, ``autoencoder.AutoencoderKL``, OpenCLIP's text tower),
independently of the converters under test."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

Shapes = Dict[str, Tuple[int, ...]]


def _norm(out: Shapes, p: str, ch: int) -> None:
    out[p + ".weight"], out[p + ".bias"] = (ch,), (ch,)


def _linear(out: Shapes, p: str, cin: int, cout: int, bias: bool = True) -> None:
    out[p + ".weight"] = (cout, cin)
    if bias:
        out[p + ".bias"] = (cout,)


def _conv(out: Shapes, p: str, cin: int, cout: int, k: int = 3) -> None:
    out[p + ".weight"], out[p + ".bias"] = (cout, cin, k, k), (cout,)


def _resblock(out: Shapes, p: str, cin: int, cout: int, temb: int) -> None:
    _norm(out, p + ".in_layers.0", cin)
    _conv(out, p + ".in_layers.2", cin, cout)
    _linear(out, p + ".emb_layers.1", temb, cout)
    _norm(out, p + ".out_layers.0", cout)
    _conv(out, p + ".out_layers.3", cout, cout)
    if cin != cout:
        _conv(out, p + ".skip_connection", cin, cout, 1)


def _transformer(out: Shapes, p: str, ch: int, context: int) -> None:
    _norm(out, p + ".norm", ch)
    _linear(out, p + ".proj_in", ch, ch)
    b = p + ".transformer_blocks.0"
    for attn, kv in (("attn1", ch), ("attn2", context)):
        _linear(out, f"{b}.{attn}.to_q", ch, ch, bias=False)
        _linear(out, f"{b}.{attn}.to_k", kv, ch, bias=False)
        _linear(out, f"{b}.{attn}.to_v", kv, ch, bias=False)
        _linear(out, f"{b}.{attn}.to_out.0", ch, ch)
    _linear(out, b + ".ff.net.0.proj", ch, 8 * ch)  # GEGLU: 2 x 4ch
    _linear(out, b + ".ff.net.2", 4 * ch, ch)
    for n in ("norm1", "norm2", "norm3"):
        _norm(out, f"{b}.{n}", ch)
    _linear(out, p + ".proj_out", ch, ch)


def mvdream_unet_shapes(mc: int = 32, mult=(1, 2, 2), nrb: int = 2, attn_levels=(True, True, False),
                        context: int = 32, camera: int = 16) -> Shapes:
    """``MultiViewUNetModel`` parameter shapes (ldm names, no prefix)."""
    out: Shapes = {}
    temb = 4 * mc
    _linear(out, "time_embed.0", mc, temb)
    _linear(out, "time_embed.2", temb, temb)
    _linear(out, "camera_embed.0", camera, temb)
    _linear(out, "camera_embed.2", temb, temb)
    _conv(out, "input_blocks.0.0", 4, mc)
    chans: List[int] = [mc]
    ch, idx = mc, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            _resblock(out, f"input_blocks.{idx}.0", ch, m * mc, temb)
            ch = m * mc
            if attn_levels[level]:
                _transformer(out, f"input_blocks.{idx}.1", ch, context)
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:
            _conv(out, f"input_blocks.{idx}.0.op", ch, ch)
            chans.append(ch)
            idx += 1
    _resblock(out, "middle_block.0", ch, ch, temb)
    _transformer(out, "middle_block.1", ch, context)
    _resblock(out, "middle_block.2", ch, ch, temb)
    idx = 0
    for level in reversed(range(len(mult))):
        for i in range(nrb + 1):
            skip = chans.pop()
            _resblock(out, f"output_blocks.{idx}.0", ch + skip, mc * mult[level], temb)
            ch = mc * mult[level]
            n = 1
            if attn_levels[level]:
                _transformer(out, f"output_blocks.{idx}.1", ch, context)
                n = 2
            if level and i == nrb:
                _conv(out, f"output_blocks.{idx}.{n}.conv", ch, ch)
            idx += 1
    _norm(out, "out.0", mc)
    _conv(out, "out.2", mc, 4)
    return out


def _vae_resnet(out: Shapes, p: str, cin: int, cout: int) -> None:
    _norm(out, p + ".norm1", cin)
    _conv(out, p + ".conv1", cin, cout)
    _norm(out, p + ".norm2", cout)
    _conv(out, p + ".conv2", cout, cout)
    if cin != cout:
        _conv(out, p + ".nin_shortcut", cin, cout, 1)


def _vae_mid(out: Shapes, p: str, ch: int) -> None:
    _vae_resnet(out, p + ".mid.block_1", ch, ch)
    _norm(out, p + ".mid.attn_1.norm", ch)
    for n in ("q", "k", "v", "proj_out"):
        _conv(out, f"{p}.mid.attn_1.{n}", ch, ch, 1)
    _vae_resnet(out, p + ".mid.block_2", ch, ch)


def kl_vae_shapes(ch: int = 32, mult=(1, 2, 2, 2), nrb: int = 1, z: int = 4) -> Shapes:
    """ldm ``AutoencoderKL`` (KL-f8) parameter shapes."""
    out: Shapes = {}
    _conv(out, "encoder.conv_in", 3, ch)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            _vae_resnet(out, f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            _conv(out, f"encoder.down.{i}.downsample.conv", cin, cin)
    _vae_mid(out, "encoder", cin)
    _norm(out, "encoder.norm_out", cin)
    _conv(out, "encoder.conv_out", cin, 2 * z)
    _conv(out, "quant_conv", 2 * z, 2 * z, 1)
    _conv(out, "post_quant_conv", z, z, 1)
    block_in = ch * mult[-1]
    _conv(out, "decoder.conv_in", z, block_in)
    _vae_mid(out, "decoder", block_in)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            _vae_resnet(out, f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            _conv(out, f"decoder.up.{i}.upsample.conv", block_in, block_in)
    _norm(out, "decoder.norm_out", block_in)
    _conv(out, "decoder.conv_out", block_in, 3)
    return out


def open_clip_text_shapes(width: int = 32, layers: int = 3, vocab: int = 514, ctx: int = 77) -> Shapes:
    out: Shapes = {"token_embedding.weight": (vocab, width), "positional_embedding": (ctx, width),
                   "text_projection": (width, width), "logit_scale": ()}
    _norm(out, "ln_final", width)
    for i in range(layers):
        p = f"transformer.resblocks.{i}"
        _norm(out, p + ".ln_1", width)
        out[p + ".attn.in_proj_weight"], out[p + ".attn.in_proj_bias"] = (3 * width, width), (3 * width,)
        _linear(out, p + ".attn.out_proj", width, width)
        _norm(out, p + ".ln_2", width)
        _linear(out, p + ".mlp.c_fc", width, 4 * width)
        _linear(out, p + ".mlp.c_proj", 4 * width, width)
    return out


def random_tensors(shapes: Shapes, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random values: norm scales near 1, weights ~ N(0, 1/fan_in), the rest N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if len(shape) >= 2:
            x = x / (torch.tensor(shape[1:]).prod().float().sqrt())
        elif name.endswith(".weight"):  # 1-D weights are norm scales
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        out[name] = x
    return out


def mvdream_ldm_checkpoint(seed: int = 0) -> Dict[str, torch.Tensor]:
    """A full toy ``sd-v2.1-base-4view.pt``: UNet, VAE and OpenCLIP text keys with prefixes."""
    sd = {}
    for prefix, shapes in (("model.diffusion_model.", mvdream_unet_shapes()),
                           ("first_stage_model.", kl_vae_shapes()),
                           ("cond_stage_model.model.", open_clip_text_shapes())):
        sd.update({prefix + k: v for k, v in random_tensors(shapes, seed).items()})
        seed += 1
    return sd
