"""The ``${...}`` resolvers of configs (``slug``, ``add``/``sub``/``mul``/``div``, ``basename``),
registered on import."""
from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import OmegaConf


def slugify(text: Any, max_len: int = 64) -> str:
    """Turn a prompt into a directory-safe tag: no separators, bounded length."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")
    return slug[:max_len].rstrip("._-") or "untitled"


def _basename(path: Any) -> str:
    """File name without folder and extension; "" for an unset (None or empty) value."""
    if path is None or (hasattr(path, "__len__") and len(path) == 0):
        return ""
    return os.path.splitext(os.path.basename(str(path)))[0]


def _register_resolvers() -> None:
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    resolvers = {
        "slug": slugify,
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "basename": _basename,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            register(name, fn)


_register_resolvers()
