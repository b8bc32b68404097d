"""The recipes (``configs/*.yaml``) from the command line: list them, print one fully resolved.

``threestudio-like --recipes`` lists every recipe found where ``--config`` looks for bare names
(``./configs/`` first, then the recipes bundled with the package; a name found in both is shown
once, from the first) with the first line of its leading comment. ``threestudio-like
--show-config demo.yaml [key=value ...]`` prints the resolved YAML that ``--config demo.yaml
[key=value ...]`` would run, after the same checks (exit 2 and the message of a
:class:`~threestudio_like.errors.ConfigError` otherwise).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from threestudio_like.config import config_dirs, find_config_file
from threestudio_like.errors import ThreestudioLikeError, exit_code_of


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
    """The recipes of ``dirs`` (default :func:`~threestudio_like.config.config_dirs`), by name."""
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


def resolved_yaml(name: str, overrides: Sequence[str] = ()) -> str:
    """The YAML that ``--config name [overrides]`` runs (validated and resolved)."""
    from omegaconf import OmegaConf

    from threestudio_like.config import load_config

    cfg = load_config(name, list(overrides))
    return f"# {find_config_file(name)}\n" + OmegaConf.to_yaml(cfg)


def recipes_main(argv: Sequence[str]) -> int:
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
        text = resolved_yaml(args.show_config, args.overrides)
    except ThreestudioLikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    sys.stdout.write(text)
    return 0
