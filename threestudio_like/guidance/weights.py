"""Finding and loading guidance weights: one resolver for every prior.

``pretrained_model_name_or_path`` may be

* ``tiny-random``: no weights; the guidance builds a toy model of the same architecture;
* a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` ... with ``config.json``);
* an original checkpoint file (``.pt``/``.ckpt``/``.pth``/``.bin``/``.safetensors``), converted
  on load (and once, for good, by ``python launch.py --convert KIND SRC DST``);
* a Hugging Face id, resolved through the normal cache (offline when ``HF_HUB_OFFLINE=1``):
  a repo of an original checkpoint listed in :data:`ORIGINAL_CHECKPOINTS` (``MVDream/MVDream``),
  ``owner/repo/path/to/file.ckpt`` for any single file, or else a diffusers repo.

Anything that cannot be found raises :class:`MissingWeightsError` with one message that names
what was looked for and how to provide it. Pickled checkpoints are read with
``weights_only=True`` and, when they also hold training state (Lightning checkpoints), with a
reader that rebuilds only tensors and never runs code (:func:`load_state_dict_file`).
:func:`rerandomize_parameters` gives test models weights with no
zero-initialised layers.
"""
from __future__ import annotations

import _compat_pickle
import copyreg
import math
import os
import pickle
import re
import types
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

TINY_RANDOM = "tiny-random"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class OriginalCheckpoint:
    """An original (non-diffusers) checkpoint published as one file of a Hugging Face repo."""

    filename: str
    """File inside the repo."""
    description: str
    """What it is, for messages."""
    convert_kind: str
    """``--convert`` kind that turns it into a diffusers folder."""


# Hugging Face repos whose id alone means "this one file" (extend for new priors).
ORIGINAL_CHECKPOINTS: Dict[str, OriginalCheckpoint] = {
    "MVDream/MVDream": OriginalCheckpoint(
        "sd-v2.1-base-4view.pt", "MVDream (SD2.1-base, 4 views)", "mvdream"
    ),
}


class MissingWeightsError(FileNotFoundError):
    """Weights could not be found (locally, in the Hugging Face cache, or online)."""


class UnsafeCheckpointError(RuntimeError):
    """A pickled checkpoint holds Python objects besides tensors and was not loaded."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from once resolved."""

    kind: str
    """``tiny-random`` | ``diffusers`` (a folder) | ``checkpoint`` (an original file)."""
    name: str
    """The value the user gave."""
    path: Optional[str] = None
    """Local folder or file (None for tiny-random)."""

    @property
    def cache_key(self) -> str:
        """A stable identifier of the weights (for caches keyed by model)."""
        return self.name if self.kind == TINY_RANDOM or self.path is None else os.path.abspath(self.path)


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` and friends)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.environ["HUGGINGFACE_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


_HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_parts(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(repo_id, file or None)`` if ``name`` reads as a Hugging Face id, else None.

    ``owner/repo`` is a repo; ``owner/repo/path/file.ckpt`` one checkpoint file in it.
    """
    if name.startswith(("/", ".", "~")) or "\\" in name:
        return None
    parts = name.split("/")
    if len(parts) < 2 or not all(parts):
        return None
    repo = "/".join(parts[:2])
    if not _HUB_REPO.match(repo):
        return None
    if len(parts) == 2:
        return repo, None
    filename = "/".join(parts[2:])
    return (repo, filename) if filename.lower().endswith(CHECKPOINT_SUFFIXES) else None


def _how_to_get(
    repo: Optional[str], filename: Optional[str], convert_kind: Optional[str], key: str
) -> List[str]:
    lines = []
    if repo is not None and filename is not None:
        lines.append(
            f"download it where there is internet: hf download {repo} {filename} "
            f"(then copy the Hugging Face cache here, or pass the file's path)"
        )
        lines.append(f"pass a local file: {key}=/path/to/{os.path.basename(filename)}")
        if convert_kind:
            lines.append(
                f"convert it once to a diffusers folder, then pass {key}=/path/to/out-folder: "
                f"python launch.py --convert {convert_kind} /path/to/{os.path.basename(filename)} /path/to/out-folder"
            )
    elif repo is not None:
        lines.append(
            f"download it where there is internet: hf download {repo} "
            f"(then copy the Hugging Face cache here), or pass a local diffusers folder"
        )
    else:
        lines.append("check the path, or pass a Hugging Face id or a local diffusers folder")
    lines.append(f"for a dry run without weights: {key}=tiny-random")
    return lines


def missing_weights_error(
    name: str,
    looked_for: Sequence[str],
    what: str = "the model",
    repo: Optional[str] = None,
    filename: Optional[str] = None,
    convert_kind: Optional[str] = None,
    cause: Optional[BaseException] = None,
    extra_hints: Sequence[str] = (),
    key: str = "pretrained_model_name_or_path",
) -> MissingWeightsError:
    """The one message for missing weights: what was looked for and how to provide it."""
    msg = [f"Weights for {what} not found ({key}={name!r})."]
    msg.append("Looked for: " + "; ".join(looked_for) + ".")
    if is_offline():
        msg.append("Offline mode (HF_HUB_OFFLINE=1): nothing was downloaded.")
    elif cause is not None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        msg.append(f"Download failed: {type(cause).__name__}: {first}")
    msg.append("To provide them:")
    msg += [f"  - {line}" for line in list(extra_hints) + _how_to_get(repo, filename, convert_kind, key)]
    return MissingWeightsError("\n".join(msg))


_COMPONENT_FILES = ("config.json", "tokenizer_config.json", "vocab.json", "scheduler_config.json")


def has_component(path: str | Path, subfolder: str) -> bool:
    """Whether ``path/subfolder`` is a saved diffusers/transformers component."""
    folder = Path(path) / subfolder
    return folder.is_dir() and any((folder / f).is_file() for f in _COMPONENT_FILES)


def _is_diffusers_dir(path: Path, subfolders: Sequence[str]) -> bool:
    if subfolders:
        return all(has_component(path, sub) for sub in subfolders)
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def _check_subfolders(path: str, name: str, what: str, subfolders: Sequence[str], key: str) -> None:
    missing = [s for s in subfolders if not has_component(path, s)]
    if missing:
        raise missing_weights_error(
            name,
            [f"the diffusers sub-folder(s) {', '.join(s + '/' for s in missing)} in {path}"],
            what,
            key=key,
        )


def resolve_weights(
    name_or_path: str,
    what: str = "the model",
    subfolders: Sequence[str] = (),
    key: str = "pretrained_model_name_or_path",
    extra_patterns: Sequence[str] = (),
) -> WeightsSource:
    """Resolve ``pretrained_model_name_or_path`` to a local folder or file (see module doc).

    ``subfolders`` are the diffusers components the caller needs (``unet``, ``vae`` ...): a
    folder must contain them, and a Hugging Face diffusers repo is fetched only for them.
    ``key`` is the config key named in error messages. ``extra_patterns`` are further files a
    Hugging Face diffusers repo is fetched for (optional components, ``.bin`` weights).
    """
    name = str(name_or_path).strip()
    if name == TINY_RANDOM:
        return WeightsSource(TINY_RANDOM, name)
    if not name:
        raise missing_weights_error(name, ["an empty name"], what, key=key)
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        if _is_diffusers_dir(local, subfolders):
            return WeightsSource("diffusers", name, str(local))
        raise missing_weights_error(
            name,
            [f"a diffusers folder at {local} with "
             + (", ".join(f"{s}/" for s in subfolders) or "model_index.json")],
            what,
            key=key,
        )
    if local.is_file():
        if local.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise missing_weights_error(
                name, [f"a checkpoint file ({'/'.join(CHECKPOINT_SUFFIXES)}); {local} is neither"], what, key=key
            )
        return WeightsSource("checkpoint", name, str(local))
    hub = _hub_parts(name)
    if hub is None:
        raise missing_weights_error(name, [f"a local file or folder at {os.path.abspath(local)}"], what, key=key)
    return _resolve_hub(name, hub[0], hub[1], what, subfolders, key, extra_patterns)


def _resolve_hub(
    name: str, repo: str, filename: Optional[str], what: str, subfolders: Sequence[str], key: str,
    extra_patterns: Sequence[str] = (),
) -> WeightsSource:
    from huggingface_hub import hf_hub_download, snapshot_download

    offline = is_offline()
    cache = hf_cache_dir()
    known = ORIGINAL_CHECKPOINTS.get(repo)
    if filename is None and known is not None:
        filename = known.filename
    if filename is not None:
        try:
            path = hf_hub_download(repo, filename, cache_dir=cache, local_files_only=offline)
        except Exception as exc:  # offline cache miss, unknown repo, network errors
            raise missing_weights_error(
                name,
                [f"the file {filename!r} of the Hugging Face repo {repo!r} in the cache {cache}",
                 f"a local file or folder named {name!r}"],
                known.description if known is not None else what,
                repo=repo,
                filename=filename,
                convert_kind=known.convert_kind if known is not None else None,
                cause=exc,
                key=key,
            ) from None
        return WeightsSource("checkpoint", name, str(path))
    # configs, tokenizer files and the default safetensors weights of the needed components only
    folders = [f"{s}/" for s in subfolders] or [""]
    patterns = ["model_index.json"] + [f"{f}*.{ext}" for f in folders for ext in ("json", "txt", "safetensors")]
    patterns += list(extra_patterns)
    ignore = ["*.fp16.*", "*.non_ema.*", "*.ema.*", "*.fp16_ema.*"]
    try:
        path = snapshot_download(
            repo, cache_dir=cache, local_files_only=offline, allow_patterns=patterns, ignore_patterns=ignore
        )
    except Exception as exc:
        raise missing_weights_error(
            name,
            [f"the diffusers repo {repo!r} ({', '.join(subfolders) or 'all files'}) in the cache {cache}",
             f"a local file or folder named {name!r}"],
            what,
            repo=repo,
            cause=exc,
            key=key,
        ) from None
    _check_subfolders(str(path), name, what, subfolders, key)
    return WeightsSource("diffusers", name, str(path))


# ------------------------------------------------------------------------------------------
# reading checkpoint files


class UnloadedObject:
    """Stands for an object of a checkpoint that was not rebuilt (see :func:`load_state_dict_file`).

    A checkpoint's global that is not needed for tensors (a Lightning callback class, an
    ``argparse.Namespace``, a numpy scalar, ``os.system`` ...) becomes one of these, and so does
    every "call" of it: the constructor arguments, the ``__setstate__`` state and the appended or
    set items are only recorded. Nothing is imported, looked up or executed.
    """

    __slots__ = ("name", "args", "kwargs", "state", "items", "entries")

    def __init__(self, name: str, args: Optional[tuple] = None, kwargs: Optional[dict] = None):
        self.name = name
        """``module.qualname`` of the global it stands for."""
        self.args = args
        """Arguments it was "called" with (None for the bare global)."""
        self.kwargs = dict(kwargs or {})
        self.state = None
        self.items: list = []
        self.entries: list = []

    def __repr__(self) -> str:
        return f"<not loaded: {self.name}{'' if self.args is None else '(...)'}>"


def _latin1_encode(text, encoding="latin1", *rest):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if isinstance(text, str) and not rest and str(encoding).lower().replace("_", "-") in ("latin1", "latin-1", "iso-8859-1"):
        return text.encode("latin-1")
    return UnloadedObject("_codecs.encode", (text, encoding) + tuple(rest))


def _rebuild_from_type(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors and parameters only.

    A tensor of an unknown subclass is kept as a plain tensor (its Python attributes dropped).
    """
    ret = _call_trusted(func, args)
    if not isinstance(ret, torch.Tensor):
        return ret
    if new_type is torch.Tensor or new_type is nn.Parameter:
        if type(ret) is not new_type:
            ret = ret.as_subclass(new_type)
        if state:
            ret = torch._utils._set_obj_state(ret, state)
    return ret


_TENSOR_GLOBALS: Dict[str, object] = {}
_TRUSTED_CALLS: Dict[int, object] = {}
_TRUSTED_NEW = (OrderedDict, Counter, torch.Size, torch.Tensor, nn.Parameter)


def _tensor_globals() -> Dict[str, object]:
    """The globals a tensor state dict needs: torch's rebuild functions, storages, dtypes,
    ``torch.Size``/``torch.device``/layouts and ``collections.OrderedDict`` (what
    ``torch.load(weights_only=True)`` allows by default, minus numpy and generic builtins)."""
    if _TENSOR_GLOBALS:
        return _TENSOR_GLOBALS
    found: Dict[str, object] = {
        "collections.OrderedDict": OrderedDict,
        "collections.Counter": Counter,
        "torch.nn.parameter.Parameter": nn.Parameter,
        "torch.Tensor": torch.Tensor,
        "torch._tensor.Tensor": torch.Tensor,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
        "_codecs.encode": _latin1_encode,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                 "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
                 "_rebuild_device_tensor_from_cpu_tensor"):
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            found[f"torch._utils.{name}"] = fn
    callables = [v for v in found.values() if callable(v) and v is not torch.Tensor]
    # data only (never called): dtypes, layouts, memory formats, quantisation schemes, storages
    constants = tuple(t for t in (torch.dtype, torch.layout, torch.memory_format, getattr(torch, "qscheme", None)) if t)
    for attr, value in vars(torch).items():
        if isinstance(value, constants):
            found[f"torch.{attr}"] = value
    for storage in (torch.UntypedStorage, torch.storage.TypedStorage):
        found[f"{storage.__module__}.{storage.__name__}"] = storage
    _TRUSTED_CALLS.update({id(fn): fn for fn in callables})
    _TENSOR_GLOBALS.update(found)
    return _TENSOR_GLOBALS


def _call_trusted(func, args, kwargs=None):
    """``func(*args)`` for the trusted tensor functions; a placeholder for an untrusted global."""
    if isinstance(func, UnloadedObject):
        return UnloadedObject(func.name, tuple(args), kwargs)
    _tensor_globals()
    if _TRUSTED_CALLS.get(id(func)) is not func:
        raise pickle.UnpicklingError(f"refused to call {type(func).__name__} {func!r}")
    return func(*args, **(kwargs or {}))


class _TensorOnlyUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pickle reader that rebuilds tensors and turns every other global into an
    :class:`UnloadedObject`.

    ``find_class`` never imports or looks anything up: it answers from a fixed table of tensor
    globals. Every opcode that could call or mutate an object (REDUCE, NEWOBJ, INST/OBJ, BUILD,
    APPEND(S), SETITEM(S), ADDITEMS, EXT*) is re-implemented to accept only the trusted tensor
    functions, containers and placeholders. ``torch.load`` supplies ``persistent_load`` (storages).
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str):
        if self.proto < 3 and self.fix_imports:  # Python 2 names
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        known = _tensor_globals().get(full)
        return known if known is not None else UnloadedObject(full)

    def get_extension(self, code: int) -> None:  # no shared extension cache
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    def _instantiate(self, klass, args) -> None:  # INST / OBJ
        self.append(_call_trusted(klass, args))

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = _call_trusted(self.stack[-1], args)

    def _new(self, cls, args, kwargs) -> object:
        if isinstance(cls, UnloadedObject):
            return UnloadedObject(cls.name, tuple(args), kwargs)
        if cls is nn.Parameter:
            return nn.Parameter(*args, **kwargs)
        if any(cls is allowed for allowed in _TRUSTED_NEW):
            return cls.__new__(cls, *args, **kwargs)
        raise pickle.UnpicklingError(f"refused to create an object of {cls!r}")

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, UnloadedObject):
            inst.state = state
        elif type(inst) is torch.Tensor:  # legacy tensors: (storage, offset, size, stride)
            inst.set_(*state)
        elif type(inst) is nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) in (OrderedDict, Counter) and isinstance(state, dict):
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"refused to set the state of {type(inst).__name__} {inst!r}")

    def _target(self, kinds: tuple, what: str):
        target = self.stack[-1]
        if not (isinstance(target, UnloadedObject) or type(target) in kinds):
            raise pickle.UnpicklingError(f"refused to {what} {type(target).__name__}")
        return target

    def _load_append(self) -> None:
        item = self.stack.pop()
        target = self._target((list,), "append to")
        (target.items if isinstance(target, UnloadedObject) else target).append(item)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        target = self._target((list,), "extend")
        (target.items if isinstance(target, UnloadedObject) else target).extend(items)

    def _set_items(self, items: list) -> None:
        target = self._target((dict, OrderedDict, Counter), "set items of")
        for i in range(0, len(items) - 1, 2):
            if isinstance(target, UnloadedObject):
                target.entries.append((items[i], items[i + 1]))
            else:
                target[items[i]] = items[i + 1]

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    def _load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "add items to")
        if isinstance(target, UnloadedObject):
            target.items.extend(items)
        else:
            target.update(items)

    for _opcode, _handler in (
        (pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj), (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build), (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
        (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems), (pickle.ADDITEMS, _load_additems),
    ):
        dispatch[_opcode[0]] = _handler
    del _opcode, _handler


def _tensor_only_load(file, **kwargs):
    return _TensorOnlyUnpickler(file, **kwargs).load()


TENSOR_ONLY_PICKLE = types.ModuleType("threestudio_like_tensor_only_pickle")
"""A ``pickle_module`` for ``torch.load(weights_only=False)`` that rebuilds only tensors."""
TENSOR_ONLY_PICKLE.Unpickler = _TensorOnlyUnpickler  # type: ignore[attr-defined]
TENSOR_ONLY_PICKLE.load = _tensor_only_load  # type: ignore[attr-defined]
TENSOR_ONLY_PICKLE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def _torch_load(path: str, **kwargs):
    """``torch.load`` memory-mapped when the format allows (zip format), else read whole."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, **kwargs)
    except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", **kwargs)


def _tensors_of(obj, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__}).")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _refusal_reason(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that names the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line[len("WeightsUnpickler error:"):].split(". Please use")[0].strip()
    return lines[0] if lines else type(exc).__name__


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors or a torch pickle), read without running code.

    A ``{"state_dict": ...}`` wrapper (Lightning/ldm training checkpoints) is unwrapped and only
    tensor values are returned. Pickles are read with ``weights_only=True``; one that holds other
    objects (a Lightning training checkpoint's callbacks, optimizer state, hyper-parameters,
    numpy scalars ...) is read again with :data:`TENSOR_ONLY_PICKLE`, which rebuilds its tensors
    and replaces every other object by an inert :class:`UnloadedObject`. Pickles are
    memory-mapped when their format allows, so reading one part (or skipping the optimizer
    state) is cheap. :class:`UnsafeCheckpointError`: a pickle that cannot be read that way.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return _tensors_of(_torch_load(str(path), weights_only=True), path)
    except pickle.UnpicklingError as exc:
        refusal = _refusal_reason(exc)
    try:
        obj = _torch_load(str(path), weights_only=False, pickle_module=TENSOR_ONLY_PICKLE)
        tensors = _tensors_of(obj, path)
        if not tensors:
            raise ValueError("no tensors found where the state dict should be")
    except Exception as exc:  # refused opcodes, placeholders where tensors were expected ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsafeCheckpointError(
            f"{path} holds Python objects besides tensors and could not be read safely "
            f"({type(exc).__name__}: {first}; torch.load(weights_only=True): {refusal}). "
            f"If you trust the file, re-save only its tensors: "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pt'), "
            f"or use a .safetensors file."
        ) from None
    del obj
    print(f"note: {path} holds non-tensor objects (Lightning training state); loaded only its tensors "
          f"({len(tensors)}).")
    return tensors


def sub_state_dict(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------
# converters (``python launch.py --convert KIND SRC DST``)

_CONVERTERS: Dict[str, Callable[..., str]] = {}


def register_converter(kind: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register ``fn(src, dst, **options) -> dst`` as the converter ``kind``."""

    def decorator(fn: Callable[..., str]) -> Callable[..., str]:
        _CONVERTERS[kind] = fn
        return fn

    return decorator


def find_converter(kind: str) -> Callable[..., str]:
    """The converter registered as ``kind`` (imports the guidance modules first)."""
    import threestudio_like.guidance  # noqa: F401  (registers converters)

    if kind not in _CONVERTERS:
        known = ", ".join(sorted(_CONVERTERS)) or "none"
        raise KeyError(f"No converter named '{kind}'. Available: {known}.")
    return _CONVERTERS[kind]


def converter_names() -> List[str]:
    import threestudio_like.guidance  # noqa: F401

    return sorted(_CONVERTERS)


# ------------------------------------------------------------------------------------------
# test helpers


def rerandomize_parameters(modules: nn.Module | Iterable[nn.Module], seed: int = 0, gain: float = 1.0) -> None:
    """Overwrite every parameter with random values (no zero-initialised layer survives).

    Weights of linear/conv layers get ``N(0, gain^2 / fan_in)`` (activations keep their scale
    through deep nets), norm-layer scales ``1 + N(0, 0.1^2)``, and every other tensor
    (biases, embeddings) ``N(0, 0.1^2)``. Deterministic for a given ``seed``.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    generator = torch.Generator().manual_seed(seed)
    norm_types = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)
    with torch.no_grad():
        for root in modules:
            for module in root.modules():
                for pname, param in module.named_parameters(recurse=False):
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                    if isinstance(module, norm_types) and pname == "weight":
                        value = 1.0 + 0.1 * noise
                    elif param.dim() >= 2 and not isinstance(module, nn.Embedding):
                        fan_in = param[0].numel()
                        value = noise * gain / math.sqrt(fan_in)
                    else:
                        value = 0.1 * noise
                    param.copy_(value.to(param.dtype))
