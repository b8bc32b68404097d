"""Text prompts -> CLIP text embeddings for Stable-Diffusion-family priors (SD2.1, MVDream).

``stable-diffusion-prompt-processor`` turns ``prompt`` and ``negative_prompt`` into the token
embeddings the UNet cross-attends to. Each embedding is computed once and cached on disk under
``cache_dir`` keyed by (text encoder, tokenizer, prompt), so later runs never load the text
encoder. The text encoder comes from ``pretrained_model_name_or_path`` (the same values as a
guidance: tiny-random, a diffusers folder, an original ldm checkpoint with an OpenCLIP text tower
such as MVDream's, or a Hugging Face id); the tokenizer from ``tokenizer_name_or_path``, the
weights folder's ``tokenizer/``, or SD2.1's tokenizer in the Hugging Face cache.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.base import BaseObject
from threestudio_like.errors import FieldError, MissingWeightsError
from threestudio_like.models.builders import text_encoder_from_open_clip, tiny_text_encoder
from threestudio_like.models.hub import (SD21_BASE, TINY_RANDOM, WeightsSource, has_component, hf_cache_dir,
                                         hub_alternatives, missing_weights_error, resolve_weights)
from threestudio_like.models.ldm_convert import OPEN_CLIP_PREFIX
from threestudio_like.models.checkpoints import sub_state_dict
from threestudio_like.models.loader import Part, WeightsRecipe, load_model

# Tried in this order when neither the config nor the weights folder names a tokenizer: SD2.1's
# OpenCLIP tokenizer (pad token "!", id 0), from the live mirror of SD2.1-base or the repos it
# replaced (each id also tries its alternatives: models.hub.HUB_ALTERNATIVES). Never CLIP ViT-L's
# tokenizer, which pads with its end-of-text token: MVDream and SD2.1 were trained on "!" padding.
DEFAULT_TOKENIZER_REPOS = (SD21_BASE, "stabilityai/stable-diffusion-2-1")
MAX_LENGTH = 77
_TINY_KEY = "tiny-random-clip-v2"


# ------------------------------------------------------------------------------------------
# tokenizers


def _byte_symbols() -> List[str]:
    """GPT-2/CLIP byte-level BPE alphabet in CLIP's vocabulary order: the printable bytes as
    themselves ("!" first: id 0, SD2.1's pad token), then the others as ``chr(256 + n)``."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def tiny_tokenizer() -> Any:
    """A CLIP tokenizer built in-process (byte alphabet, no merges): no files, no hub; it pads
    like SD2.1's OpenCLIP tokenizer (pad token "!", id 0)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="!", model_max_length=MAX_LENGTH,
    )


def _tokenizer_from_folder(folder: str) -> Any:
    from transformers import CLIPTokenizer

    sub = "tokenizer" if has_component(folder, "tokenizer") else None
    path = os.path.join(folder, sub) if sub else folder
    return CLIPTokenizer.from_pretrained(path)


def load_tokenizer(source: WeightsSource, tokenizer_name_or_path: Optional[str] = None) -> Tuple[Any, str]:
    """``(tokenizer, key)`` for the text encoder of ``source`` (see the module doc)."""
    if tokenizer_name_or_path == TINY_RANDOM or (tokenizer_name_or_path is None and source.kind == TINY_RANDOM):
        return tiny_tokenizer(), _TINY_KEY
    if tokenizer_name_or_path:
        candidates: Sequence[str] = [tokenizer_name_or_path]
    elif source.kind == "diffusers" and has_component(source.path, "tokenizer"):
        return _tokenizer_from_folder(source.path), os.path.abspath(os.path.join(source.path, "tokenizer"))
    else:
        candidates = DEFAULT_TOKENIZER_REPOS
    looked_for: List[str] = []
    for name in candidates:
        local = Path(os.path.expanduser(name))
        if local.is_dir():
            try:
                return _tokenizer_from_folder(str(local)), str(local.resolve())
            except (OSError, ValueError, TypeError) as exc:
                looked_for.append(f"a tokenizer in the folder {local} ({str(exc).splitlines()[0]})")
                continue
        repos = " or ".join(repr(r) for r in hub_alternatives(name))
        looked_for.append(f"the tokenizer/ folder of the Hugging Face repo {repos} in the cache {hf_cache_dir()}")
        try:
            found = resolve_weights(name, "the CLIP tokenizer", subfolders=("tokenizer",),
                                    key="system.prompt_processor.tokenizer_name_or_path")
            return _tokenizer_from_folder(found.path), name
        except (MissingWeightsError, OSError, ValueError):
            continue
    raise missing_weights_error(
        candidates[0], looked_for, "the SD2.1 CLIP tokenizer (vocab.json + merges.txt)",
        key="system.prompt_processor.tokenizer_name_or_path",
        repo=f"{DEFAULT_TOKENIZER_REPOS[0]} --include 'tokenizer/*'",
        extra_hints=["or point system.prompt_processor.tokenizer_name_or_path at a folder with "
                     "vocab.json and merges.txt (any CLIP BPE tokenizer saved by transformers)"],
    )


# ------------------------------------------------------------------------------------------
# text encoders


def _text_encoder_from_ldm(state: Dict[str, Tensor], options: Dict[str, Any]) -> Dict[str, Any]:
    text_sd = sub_state_dict(state, OPEN_CLIP_PREFIX)
    if not text_sd:
        raise MissingWeightsError(
            f"the checkpoint has no OpenCLIP text tower ('{OPEN_CLIP_PREFIX}*' keys). Point "
            f"system.prompt_processor.pretrained_model_name_or_path at weights with a text encoder "
            f"(e.g. {SD21_BASE} or a folder written by --convert)."
        )
    return {"text_encoder": text_encoder_from_open_clip({k: v.float() for k, v in text_sd.items()})}


TEXT_ENCODER_WEIGHTS = WeightsRecipe(
    name="clip-text-encoder",
    what="the text encoder",
    parts=(Part("text_encoder", "transformers.CLIPTextModel", lambda o: tiny_text_encoder(o["vocab_size"])),),
    from_checkpoint=_text_encoder_from_ldm,
)
"""The CLIP text encoder of SD-family weights: a diffusers ``text_encoder/``, the OpenCLIP tower of
an original checkpoint (SD2.x, MVDream), or a toy one (fp32, CPU)."""


def load_text_encoder(name_or_path: str, vocab_size: int) -> Any:
    """The text encoder of ``name_or_path`` (fp32, CPU); ``vocab_size`` sizes a toy one."""
    return load_model(TEXT_ENCODER_WEIGHTS, name_or_path, key="system.prompt_processor.pretrained_model_name_or_path",
                      vocab_size=vocab_size)["text_encoder"]


# ------------------------------------------------------------------------------------------
# the condition handed to guidances


@dataclass
class PromptEmbeddings:
    """Conditional and unconditional (negative-prompt) text embeddings of one prompt."""

    prompt: str
    negative_prompt: str
    text_embeddings: Tensor
    """``[L, D]`` embedding of the prompt."""
    uncond_text_embeddings: Tensor
    """``[L, D]`` embedding of the negative prompt."""

    def get_text_embeddings(
        self, batch_size: int, device: Any = None, dtype: Optional[torch.dtype] = None
    ) -> Tensor:
        """``[2B, L, D]``: B copies of the conditional embedding, then B unconditional ones."""
        cond = self.text_embeddings[None].expand(batch_size, -1, -1)
        uncond = self.uncond_text_embeddings[None].expand(batch_size, -1, -1)
        return torch.cat([cond, uncond], dim=0).to(device=device, dtype=dtype)


@register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(BaseObject):
    """Prompt + negative prompt -> :class:`PromptEmbeddings`, cached on disk."""

    @dataclass
    class Config(BaseObject.Config):
        prompt: str = "a hamburger"
        """The text prompt."""
        negative_prompt: str = ""
        """Text for the unconditional branch of classifier-free guidance."""
        pretrained_model_name_or_path: str = SD21_BASE
        """Where the text encoder comes from (same forms as a guidance's weights)."""
        tokenizer_name_or_path: Optional[str] = None
        """CLIP tokenizer folder or Hugging Face id; None: the weights' tokenizer/ or SD2.1's."""
        use_cache: bool = True
        """Read/write embeddings in cache_dir, keyed by text encoder, tokenizer and prompt."""
        cache_dir: str = ".threestudio_like_cache/text_embeddings"
        """Folder of cached embeddings (relative to the working directory)."""

        def validate(self) -> None:
            if not str(self.prompt or "").strip():
                raise FieldError("prompt", 'is empty: say what to make, e.g. prompt="a DSLR photo of a corgi"')

    cfg: Config

    def configure(self) -> None:
        self._source: Optional[WeightsSource] = None
        self._tokenizer: Any = None
        self._tokenizer_key: Optional[str] = None

    @property
    def source(self) -> WeightsSource:
        if self._source is None:
            self._source = resolve_weights(
                self.cfg.pretrained_model_name_or_path, "the text encoder", subfolders=("text_encoder",),
                key="system.prompt_processor.pretrained_model_name_or_path",
                extra_patterns=("tokenizer/*",),  # a diffusers repo's own tokenizer (SD1.x pads with its end token)
            )
        return self._source

    def _model_key(self) -> str:
        """Text encoder + tokenizer identity, without loading anything heavy."""
        name = self.cfg.pretrained_model_name_or_path
        if name == TINY_RANDOM:
            return _TINY_KEY
        local = Path(os.path.expanduser(name))
        model = str(local.resolve()) if local.exists() else name
        tok = self.cfg.tokenizer_name_or_path or ""
        return f"{model}|{tok}"

    def cache_path(self, prompt: str) -> Path:
        digest = hashlib.md5(f"{self._model_key()}\n{prompt}".encode("utf-8")).hexdigest()
        return Path(self.cfg.cache_dir) / f"{digest}.pt"

    def _read_cache(self, prompt: str) -> Optional[Tensor]:
        path = self.cache_path(prompt)
        if not (self.cfg.use_cache and path.is_file()):
            return None
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: recompute
            return None
        if data.get("prompt") != prompt or data.get("model") != self._model_key():
            return None
        return data["embedding"]

    def _write_cache(self, prompt: str, embedding: Tensor) -> None:
        path = self.cache_path(prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"prompt": prompt, "model": self._model_key(), "embedding": embedding.cpu()}, str(tmp))
        os.replace(tmp, path)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Embeddings ``[N, L, D]`` (fp32, CPU) of ``prompts``, computed with the text encoder."""
        source = self.source
        tokenizer, _ = load_tokenizer(source, self.cfg.tokenizer_name_or_path)
        encoder = load_text_encoder(self.cfg.pretrained_model_name_or_path, len(tokenizer))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        encoder.to(device).eval()
        tokens = tokenizer(
            list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        out = encoder(input_ids=tokens.input_ids.to(device))[0].float().cpu()
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    def embeddings_for(self, prompts: Sequence[str]) -> List[Tensor]:
        """Embeddings ``[L, D]`` per prompt, from the cache where possible."""
        found: Dict[str, Tensor] = {}
        for prompt in prompts:
            cached = self._read_cache(prompt)
            if cached is not None:
                found[prompt] = cached
        todo = [p for p in dict.fromkeys(prompts) if p not in found]
        if todo:
            for prompt, emb in zip(todo, self.encode(todo)):
                found[prompt] = emb
                if self.cfg.use_cache:
                    self._write_cache(prompt, emb)
        return [found[p] for p in prompts]

    def __call__(self) -> PromptEmbeddings:
        cond, uncond = self.embeddings_for([self.cfg.prompt, self.cfg.negative_prompt])
        return PromptEmbeddings(self.cfg.prompt, self.cfg.negative_prompt, cond, uncond)
