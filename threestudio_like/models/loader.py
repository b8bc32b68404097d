"""The one model loader: every prior (and the prompt processor) describes its networks once, as a
:class:`WeightsRecipe`, and gets them from any source through :func:`load_model`.

A recipe lists the model's :class:`Part` s (``unet``, ``vae``, ``image_encoder`` ...): for each,
its class in a diffusers folder (the sub-folder of the same name), and a toy builder for
``tiny-random``. Original checkpoints go through the recipe's ``from_checkpoint`` (an ldm state
dict -> parts); the recipe's ``check`` rejects weights of another model with a clear message and
``prepare`` installs attention processors. Sources are resolved by
:func:`~threestudio_like.models.hub.resolve_weights` and files read by
:func:`~threestudio_like.models.checkpoints.load_state_dict_file` (never running code).

``python launch.py --convert KIND SRC DST`` is :func:`convert_checkpoint`: the recipe registered
as ``KIND-weights`` turns an original checkpoint into a diffusers folder (safetensors, a DDIM
scheduler and ``model_index.json``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from threestudio_like import find, register, registered
from threestudio_like.errors import ConfigError, ConversionError, did_you_mean
from threestudio_like.models.builders import library_class, make_ddim_scheduler, move, quiet_progress_bars
from threestudio_like.models.checkpoints import load_state_dict_file
from threestudio_like.models.hub import (ORIGINAL_CHECKPOINTS, TINY_RANDOM, OriginalCheckpoint, WeightsSource,
                                         resolve_weights)

Options = Dict[str, Any]
Parts = Dict[str, nn.Module]
WEIGHTS_SUFFIX = "-weights"
DEFAULT_KEY = "system.guidance.pretrained_model_name_or_path"


@dataclass(frozen=True)
class Part:
    """One network of a model."""

    name: str
    """Attribute name on the guidance (and the diffusers sub-folder, unless ``folder`` says otherwise)."""
    cls: str
    """Its class in a diffusers folder, e.g. ``diffusers.UNet2DConditionModel``."""
    tiny: Callable[[Options], nn.Module]
    """Builds it at toy size for ``tiny-random`` (from the load options)."""
    load_folder: Optional[Callable[[WeightsSource, torch.dtype], nn.Module]] = None
    """A custom reader for folders whose layout is not ``<name>/config.json`` + weights."""
    save: Optional[Callable[[nn.Module, Path], List[str]]] = None
    """A custom writer for ``--convert`` (returns the ``model_index.json`` entry)."""
    folder: Optional[str] = None
    """The sub-folder ``--convert`` writes it to, when it differs from ``name``."""

    @property
    def subfolder(self) -> str:
        return self.folder or self.name

    @property
    def standard(self) -> bool:
        """Saved as a stock diffusers/transformers component in ``<name>/``."""
        return self.load_folder is None


@dataclass(frozen=True)
class WeightsRecipe:
    """How to get a prior's networks from every kind of weights source."""

    name: str
    """Short name: ``--convert <name>`` and the registry name ``<name>-weights``."""
    what: str
    """What the weights are, for messages (``MVDream``)."""
    parts: Tuple[Part, ...]
    from_checkpoint: Optional[Callable[[Dict[str, Tensor], Options], Parts]] = None
    """Original checkpoint state dict -> parts (may return extra parts, e.g. a text encoder,
    which ``--convert`` saves too); None: the model is published as diffusers folders only."""
    check: Optional[Callable[[Parts, str], None]] = None
    """Raise a clear error when the parts are another model's (``where``: the weights' name)."""
    prepare: Optional[Callable[[Parts], None]] = None
    """Final touches after loading (attention processors)."""
    hub_files: Mapping[str, OriginalCheckpoint] = field(default_factory=dict)
    """Hugging Face repos whose id alone means one original checkpoint file."""
    extra_patterns: Tuple[str, ...] = ()
    """More files to fetch from a Hugging Face diffusers repo (``.bin`` weights, custom parts)."""
    default_options: Mapping[str, Any] = field(default_factory=dict)
    """Options of ``from_checkpoint`` and the toy builders, overridable per call."""
    pipeline_class: str = ""
    """``_class_name`` written to ``model_index.json`` by ``--convert``."""
    after_convert: Optional[Callable[[Path, WeightsSource, Options, Dict[str, Any]], None]] = None
    """Extra files for ``--convert`` (a tokenizer ...); may add entries to the model index."""

    @property
    def subfolders(self) -> Tuple[str, ...]:
        """The standard diffusers sub-folders a folder must hold."""
        return tuple(p.subfolder for p in self.parts if p.standard)

    @property
    def part_names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.parts)


def register_weights(recipe: WeightsRecipe) -> WeightsRecipe:
    """Make ``recipe`` findable (``--convert``) and its hub files resolvable; returns it."""
    register(recipe.name + WEIGHTS_SUFFIX)(recipe)
    for repo, entry in recipe.hub_files.items():
        ORIGINAL_CHECKPOINTS.setdefault(repo, entry)
    return recipe


def load_model(
    recipe: WeightsRecipe,
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    key: str = DEFAULT_KEY,
    **options: Any,
) -> Parts:
    """The parts of ``recipe`` from ``name_or_path`` (tiny-random | diffusers folder or repo |
    original checkpoint | Hugging Face id), checked, prepared and cast to ``dtype`` (on CPU).

    ``key`` is the config key named in error messages; ``options`` override the recipe's
    ``default_options``.
    """
    quiet_progress_bars()
    opts = {**recipe.default_options, **options}
    source = resolve_weights(name_or_path, recipe.what, subfolders=recipe.subfolders, key=key,
                             extra_patterns=recipe.extra_patterns)
    if source.kind == TINY_RANDOM:
        parts = {p.name: p.tiny(opts) for p in recipe.parts}
    elif source.kind == "diffusers":
        parts = {p.name: _load_part(p, source, dtype) for p in recipe.parts}
    else:
        parts = _from_checkpoint(recipe, source, opts)
        parts = {name: parts[name] for name in recipe.part_names}
    if recipe.check is not None:
        recipe.check(parts, source.path or source.name)
    if recipe.prepare is not None:
        recipe.prepare(parts)
    return {name: move(net, dtype=dtype) for name, net in parts.items()}


def _load_part(part: Part, source: WeightsSource, dtype: torch.dtype) -> nn.Module:
    if part.load_folder is not None:
        return part.load_folder(source, dtype)
    return library_class(part.cls).from_pretrained(source.path, subfolder=part.subfolder, torch_dtype=dtype)


def _from_checkpoint(recipe: WeightsRecipe, source: WeightsSource, opts: Options) -> Parts:
    if recipe.from_checkpoint is None:
        raise ConfigError(
            f"{recipe.what} is published as a diffusers folder (with {', '.join(s + '/' for s in recipe.subfolders)}), "
            f"not as one checkpoint file: got {source.path}."
        )
    parts = recipe.from_checkpoint(load_state_dict_file(source.path), opts)
    missing = [name for name in recipe.part_names if name not in parts]
    if missing:
        raise ConversionError(f"{source.path}: no {', '.join(missing)} weights in this {recipe.what} checkpoint.")
    return parts


# ------------------------------------------------------------------------------------------
# --convert


def converter_kinds() -> List[str]:
    """Names of the recipes that convert original checkpoints (``--convert KIND``)."""
    names = [n[: -len(WEIGHTS_SUFFIX)] for n in registered(WEIGHTS_SUFFIX)]
    return [n for n in names if find(n + WEIGHTS_SUFFIX).from_checkpoint is not None]


def find_weights_recipe(kind: str) -> WeightsRecipe:
    """The recipe ``--convert KIND`` uses; a clear error naming the valid kinds otherwise."""
    kinds = converter_kinds()
    if kind not in kinds:
        raise ConfigError(f"--convert: no converter named '{kind}'.{did_you_mean(kind, kinds)} "
                          f"Available: {', '.join(kinds) or 'none'}.")
    return find(kind + WEIGHTS_SUFFIX)


def _save_part(folder: Path, model: nn.Module, part: Optional[Part]) -> List[str]:
    if part is not None and part.save is not None:
        return part.save(model, folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    return [type(model).__module__.split(".")[0], type(model).__name__]


def convert_checkpoint(kind: str, src: str, dst: str, tokenizer: Optional[str] = None, **options: Any) -> str:
    """An original checkpoint (file or Hugging Face id) -> a diffusers folder ``dst``; returns it.

    Writes every part the checkpoint holds (safetensors), ``scheduler/`` (DDIM) and
    ``model_index.json``, plus what the recipe adds (a tokenizer).
    """
    recipe = find_weights_recipe(kind)
    quiet_progress_bars()
    source = resolve_weights(src, recipe.what)
    if source.kind != "checkpoint":
        raise ConversionError(f"--convert {kind} takes an original {recipe.what} checkpoint file, got {src!r}.")
    opts = {**recipe.default_options, **options, "tokenizer": tokenizer}
    parts = _from_checkpoint(recipe, source, opts)
    if recipe.check is not None:
        recipe.check(parts, source.path)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in recipe.parts}
    index: Dict[str, Any] = {"_class_name": recipe.pipeline_class}
    for name, model in parts.items():
        part = by_name.get(name)
        folder = part.subfolder if part is not None else name
        index[folder] = _save_part(out / folder, model, part)
        print(f"  wrote {out / folder}")
    make_ddim_scheduler().save_pretrained(str(out / "scheduler"))
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    if recipe.after_convert is not None:
        recipe.after_convert(out, source, opts, index)
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return str(out)

