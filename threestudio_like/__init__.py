"""threestudio_like: text/image-to-3D by distilling diffusion priors into a NeRF.

The package keeps a registry of swappable parts. Every geometry, renderer, guidance, system,
data module ... registers itself under a kebab-case name whose suffix says its kind
(``hashgrid-implicit-volume``, ``nerf-volume-renderer``, ``reference-object-guidance``), and
configs refer to parts by those names (``geometry_type: hashgrid-implicit-volume``).
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, TypeVar

__version__ = "0.1.0"

_REGISTRY: Dict[str, Any] = {}
T = TypeVar("T")

# Subpackages whose modules register classes; imported lazily by ``find`` so that
# ``import threestudio_like`` stays cheap (no torch import just to read a config).
_PLUGIN_PACKAGES = (
    "threestudio_like.data",
    "threestudio_like.geometry",
    "threestudio_like.renderers",
    "threestudio_like.guidance",
    "threestudio_like.prompt",
    "threestudio_like.systems",
    "threestudio_like.export",
)
_loaded = False


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` findable by ``name`` (names must be unique)."""

    def decorator(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"A module named '{name}' is already registered ({_REGISTRY[name]!r}).")
        _REGISTRY[name] = cls
        return cls

    return decorator


def load_all_modules() -> None:
    """Import every subpackage so that their ``@register`` decorators run."""
    global _loaded
    if _loaded:
        return
    for pkg in _PLUGIN_PACKAGES:
        importlib.import_module(pkg)
    _loaded = True


def registered_names() -> list:
    load_all_modules()
    return sorted(_REGISTRY)


def find(name: str) -> Any:
    """Return the class registered as ``name``; unknown names suggest the closest match."""
    if name not in _REGISTRY:
        load_all_modules()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY.keys(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(
            f"No module registered as '{name}'.{hint} Registered: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]
