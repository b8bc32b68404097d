"""The recipes (``configs/*.yaml``): where ``--config NAME`` finds them, and the command line.

:func:`find_config_file` resolves ``--config``: a path, else a recipe name (``.yaml`` may be
left off) in ``./configs/``, then in the recipes bundled with the package. An installed wheel
carries them as package data (setup.py maps the repository's ``configs/`` to
``threestudio_like/_recipes/``); a source checkout, plain or editable, reads its ``configs/``.

``threestudio-like --recipes`` lists every recipe found there (a name in both places once, from
the first) with the first line of its leading comment. ``threestudio-like --show-config demo.yaml
[key=value ...]`` prints the resolved YAML that ``--config demo.yaml [key=value ...]`` would run,
after the same checks (exit 2 and the message of a
:class:`~threestudio_like.errors.ConfigError` otherwise).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from threestudio_like.errors import ConfigError, ThreestudioLikeError, did_you_mean, exit_code_of

PACKAGE_ROOT = Path(__file__).resolve().parent
BUNDLED_RECIPES = PACKAGE_ROOT / "_recipes"
"""The recipes of an installed wheel."""
SOURCE_RECIPES = PACKAGE_ROOT.parent / "configs"
"""The recipes of a source checkout."""


def config_dirs() -> Tuple[Path, ...]:
    """Where recipe names are looked up, in order: ``./configs/``, then the bundled recipes."""
    bundled = BUNDLED_RECIPES if BUNDLED_RECIPES.is_dir() else SOURCE_RECIPES
    dirs = [Path.cwd() / "configs", bundled]
    return tuple(d for i, d in enumerate(dirs) if d.resolve() not in {e.resolve() for e in dirs[:i]})


def find_config_file(name: str) -> Path:
    """A path, or a recipe name looked up in :func:`config_dirs` (``.yaml`` may be left off).

    ``configs/<file>`` also finds a bundled recipe when there is no ``./configs/`` folder.
    """
    path = Path(name)
    if path.is_file():
        return path
    dirs = config_dirs()
    names = [name, f"{name}.yaml"]
    if not path.is_absolute() and len(path.parts) == 2 and path.parts[0] == "configs":
        names += [path.name, f"{path.name}.yaml"]
    for cand in (d / n for n in names for d in dirs):
        if cand.is_file():
            return cand
    known = sorted({p.name for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
    hint = did_you_mean(path.name, known)
    raise ConfigError(
        f"Config file '{name}' not found (looked at the path, in ./configs/ and in the bundled "
        f"recipes).{hint} Available recipes: {', '.join(known) or 'none'} "
        f"(threestudio-like --recipes lists them)."
    )


@dataclass(frozen=True)
class Recipe:
    """One recipe file and what its leading comment says it is."""

    name: str
    path: Path
    summary: str


def summary_of(path: Path) -> str:
    """The first line of the comment block a recipe starts with ('' when it has none)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                return text.lstrip("#").strip() if text.startswith("#") else ""
    except OSError:
        return ""
    return ""


def list_recipes(dirs: Optional[Sequence[Path]] = None) -> List[Recipe]:
    """The recipes of ``dirs`` (default :func:`config_dirs`), by name."""
    found = {}
    for folder in config_dirs() if dirs is None else dirs:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).glob("*.yaml")):
            found.setdefault(path.name, Recipe(path.name, path, summary_of(path)))
    return [found[name] for name in sorted(found)]


def format_recipes(recipes: Sequence[Recipe]) -> str:
    """One line per recipe: name, then its summary; the folders they came from at the end."""
    if not recipes:
        return "No recipes found (looked in " + ", ".join(str(d) for d in config_dirs()) + ")."
    width = max(len(r.name) for r in recipes)
    lines = [f"{r.name:<{width}}  {r.summary}".rstrip() for r in recipes]
    folders = list(dict.fromkeys(str(r.path.parent) for r in recipes))
    lines.append("")
    lines.append("from " + ", ".join(folders) + "; run one with --config NAME --train [key=value ...],")
    lines.append("see its full config with --show-config NAME [key=value ...].")
    return "\n".join(lines)


def resolved_yaml(name: str, overrides: Sequence[str], load_config: Callable[..., Any]) -> str:
    """The YAML that ``--config name [overrides]`` runs, validated and resolved by ``load_config``
    (:func:`threestudio_like.config.load_config`, handed in: that module imports this one)."""
    from omegaconf import OmegaConf

    cfg = load_config(name, list(overrides))
    return f"# {find_config_file(name)}\n" + OmegaConf.to_yaml(cfg)


def recipes_main(argv: Sequence[str], load_config: Callable[..., Any]) -> int:
    """``--recipes`` | ``--show-config NAME [key=value ...]``; the exit status."""
    parser = argparse.ArgumentParser(
        prog="threestudio-like", description="List the recipes, or print one's resolved config."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipes", action="store_true", help="list the recipes with a one-line summary")
    what.add_argument("--show-config", metavar="RECIPE", help="print the resolved config of RECIPE")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (with --show-config)")
    args = parser.parse_args(list(argv))
    if args.recipes:
        if args.overrides:
            parser.error("--recipes takes no key=value overrides")
        print(format_recipes(list_recipes()))
        return 0
    try:
        text = resolved_yaml(args.show_config, args.overrides, load_config)
    except ThreestudioLikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    sys.stdout.write(text)
    return 0
