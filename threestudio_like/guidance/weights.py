"""(Being replaced by :mod:`threestudio_like.models`.) Converter registry only."""
from __future__ import annotations

from typing import Callable, Dict, List

from threestudio_like.errors import MissingWeightsError, UnsafeCheckpointError  # noqa: F401
from threestudio_like.models.checkpoints import load_state_dict_file, sub_state_dict  # noqa: F401
from threestudio_like.models.hub import (  # noqa: F401
    CHECKPOINT_SUFFIXES, ORIGINAL_CHECKPOINTS, TINY_RANDOM, OriginalCheckpoint, WeightsSource, has_component,
    hf_cache_dir, is_offline, missing_weights_error, resolve_weights,
)
from threestudio_like.models.safe_pickle import TENSOR_ONLY_PICKLE, UnloadedObject  # noqa: F401
from threestudio_like.models.tiny import rerandomize_parameters  # noqa: F401

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

