"""threestudio_like: text/image-to-3D by distilling diffusion priors into a NeRF.

The package keeps a registry of swappable parts. Every geometry, renderer, guidance, system,
data module ... registers itself under a kebab-case name whose suffix says its kind
(``hashgrid-implicit-volume``, ``nerf-volume-renderer``, ``reference-object-guidance``), and
configs refer to parts by those names (``geometry_type: hashgrid-implicit-volume``).

Parts are found, not listed: :func:`load_all_modules` imports every module of the plugin
packages below (so a new prior is one new file in ``guidance/``), and :func:`load_plugin_file`
imports a file named by a config's ``plugins:`` list (so a prior can also live outside the
package, next to its YAML).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Any, Callable, Dict, List, TypeVar

from threestudio_like.errors import did_you_mean

__version__ = "0.1.0"

_REGISTRY: Dict[str, Any] = {}
T = TypeVar("T")

# Subpackages whose modules register parts; imported lazily by ``find`` so that
# ``import threestudio_like`` stays cheap (no torch import just to read a config).
_PLUGIN_PACKAGES = (
    "threestudio_like.data",
    "threestudio_like.geometry",
    "threestudio_like.renderers",
    "threestudio_like.reference",
    "threestudio_like.guidance",
    "threestudio_like.prompt",
    "threestudio_like.systems",
    "threestudio_like.export",
)
_loaded = False


def register(name: str) -> Callable[[T], T]:
    """Decorator: make a class (or a recipe object) findable by ``name`` (names are unique)."""

    def decorator(obj: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not obj:
            raise ValueError(f"A module named '{name}' is already registered ({_REGISTRY[name]!r}).")
        _REGISTRY[name] = obj
        return obj

    return decorator


def load_all_modules() -> None:
    """Import every module of the plugin packages so that their ``@register`` decorators run."""
    global _loaded
    if _loaded:
        return
    for pkg_name in _PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=pkg_name + "."):
            importlib.import_module(info.name)
    _loaded = True


def load_plugin_file(path: str) -> None:
    """Import a Python file that registers extra parts (a config's ``plugins:`` entry), once."""
    path = os.path.abspath(path)
    name = "threestudio_like_plugins." + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def registered(suffix: str = "") -> List[str]:
    """Registered names ending in ``suffix`` (every plugin package imported first)."""
    load_all_modules()
    return sorted(n for n in _REGISTRY if n.endswith(suffix))


def find(name: str) -> Any:
    """Return the part registered as ``name``; unknown names suggest the closest match."""
    if name not in _REGISTRY:
        load_all_modules()
    if name not in _REGISTRY:
        kind = name.rsplit("-", 1)[-1]
        same_kind = sorted(n for n in _REGISTRY if n.endswith("-" + kind)) or sorted(_REGISTRY)
        raise KeyError(
            f"No module registered as '{name}'.{did_you_mean(name, _REGISTRY)} Registered: {', '.join(same_kind)}"
        )
    return _REGISTRY[name]
