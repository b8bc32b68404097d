"""Configuration: YAML + command-line overrides -> validated, structured configs.

* ``load_config`` reads a recipe (a path, or a bare file name found in ``configs/``), merges
  ``key=value`` overrides (with the short aliases ``prompt=`` and ``image=``), checks every key
  against the dataclass ``Config`` of the part it configures (unknown keys fail at once and name
  the closest valid key) and derives the trial directory.
* ``schedule_value`` evaluates a scheduled hyper-parameter: a number, or
  ``[start_step, start_value, end_value, end_step]`` (linear in between, constant outside).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from threestudio_like.errors import ConfigError, did_you_mean

PACKAGE_ROOT = Path(__file__).resolve().parent
# Recipes ship beside the package in a source checkout; an installed copy also looks in the CWD.
CONFIG_DIRS = (Path.cwd() / "configs", PACKAGE_ROOT.parent / "configs")

# Short command-line aliases -> full config keys.
ALIASES: Dict[str, str] = {
    "prompt": "system.prompt_processor.prompt",
    "image": "data.image_path",
    "references": "data.references",
}


# --------------------------------------------------------------------------------------------
# schedules


def schedule_value(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a possibly scheduled hyper-parameter at ``global_step``.

    ``value`` is a number, or ``[start_step, start_value, end_value, end_step]`` (a 3-list means
    ``start_step = 0``). The value is ``start_value`` up to ``start_step``, ``end_value`` from
    ``end_step`` on, and linear in between. Integer steps count global steps, float steps epochs.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple, ListConfig)):
        value = list(value)
        if len(value) == 3:
            value = [0] + value
        if len(value) != 4:
            raise ConfigError(
                f"A schedule must be [start_step, start_value, end_value, end_step], got {value}."
            )
        start_step, start_value, end_value, end_step = value
        current = epoch if isinstance(end_step, float) else global_step
        if end_step <= start_step:
            return end_value if current >= end_step else start_value
        frac = min(max((current - start_step) / (end_step - start_step), 0.0), 1.0)
        return start_value + (end_value - start_value) * frac
    raise ConfigError(f"Expected a number or a schedule list, got {value!r}.")


# --------------------------------------------------------------------------------------------
# structured configs with helpful errors


def _field_names(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def unknown_key_error(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean '{_join(where, close[0])}'?" if close else ""
    return ConfigError(
        f"Unknown config key '{_join(where, key)}'.{hint} "
        f"Valid keys here: {', '.join(sorted(valid))}."
    )


def _field_types(cls: type) -> Dict[str, Any]:
    """Field types with string annotations (``from __future__ import annotations``) resolved."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotation: fall back to the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _to_container(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def check_keys(cls: type, cfg: Any, where: str = "") -> None:
    """Recursively check ``cfg`` against dataclass ``cls``.

    Unknown keys raise :class:`ConfigError` naming the closest valid key. A dict-typed field
    ``foo`` with a sibling ``foo_type`` naming a registered part is checked against that part's
    ``Config``, so one call validates a whole experiment before any work starts.
    """
    from threestudio_like import find

    cfg = _to_container(cfg) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"Config '{where or '<root>'}' must be a mapping, got {type(cfg).__name__}.")
    names = _field_names(cls)
    types = _field_types(cls)
    for key, value in cfg.items():
        if key not in names:
            raise unknown_key_error(str(key), names, where)
        ftype = types[key]
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            check_keys(ftype, value, _join(where, key))
        elif f"{key}_type" in names and isinstance(value, dict):
            part = cfg.get(f"{key}_type", _default_of(cls, f"{key}_type"))
            if part:
                try:
                    part_cls = find(part)
                except KeyError as exc:
                    raise ConfigError(f"{_join(where, key + '_type')}: {exc.args[0]}") from None
                check_keys(part_cls.Config, value, _join(where, key))
    for key in names:
        # Only ``<part>_type`` keys with a sibling ``<part>`` config name registered parts
        # (``normal_type: analytic`` is a plain option).
        if key.endswith("_type") and key[: -len("_type")] in names and key in cfg and cfg[key]:
            try:
                find(cfg[key])
            except KeyError as exc:
                raise ConfigError(f"{_join(where, key)}: {exc.args[0]}") from None


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return None


def parse_structured(cls: type, cfg: Optional[Union[dict, DictConfig]] = None) -> Any:
    """Build a typed, attribute-access config of dataclass ``cls`` from ``cfg``."""
    cfg = {} if cfg is None else cfg
    check_keys(cls, cfg)
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except Exception as exc:  # omegaconf validation errors: wrong types
        raise ConfigError(f"Invalid value in {cls.__qualname__}: {exc}") from None
    return merged


# --------------------------------------------------------------------------------------------
# resolvers


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


# --------------------------------------------------------------------------------------------
# experiment


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500
    """Save ``ckpts/last.ckpt`` every N training steps (also on Ctrl-C and at the end)."""
    keep_step_copies: bool = False
    """Also keep ``ckpts/step=<N>.ckpt`` copies of each periodic checkpoint."""


@dataclass
class ExperimentConfig:
    name: str = "default"
    """Experiment name: first level below ``exp_root_dir``."""
    description: str = ""
    tag: str = ""
    """Trial tag (derived from the prompt in most recipes); slugged."""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: str = ""
    exp_root_dir: str = "outputs"
    trial_dir: str = ""
    """Derived: ``<exp_root_dir>/<name>/<tag>@<timestamp>``; resuming reuses the checkpoint's trial."""
    resume: Optional[str] = None
    """Checkpoint to continue from (optimiser, step and schedules intact)."""
    data_type: str = ""
    data: dict = field(default_factory=dict)
    system_type: str = ""
    system: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    """Lightning ``Trainer`` arguments (max_steps, val_check_interval, ...)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def find_config_file(name: str) -> Path:
    """A path, or a bare file name looked up in ``configs/``."""
    path = Path(name)
    if path.is_file():
        return path
    candidates = [d / name for d in CONFIG_DIRS] + [d / f"{name}.yaml" for d in CONFIG_DIRS]
    for cand in candidates:
        if cand.is_file():
            return cand
    known = sorted({p.name for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    close = difflib.get_close_matches(path.name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Config file '{name}' not found (looked at the path and in configs/).{hint} "
        f"Available recipes: {', '.join(known) or 'none'}."
    )


def _expand_aliases(cli_args: Sequence[str], raw: DictConfig) -> List[str]:
    out = []
    for arg in cli_args:
        if "=" not in arg:
            raise ConfigError(f"Override '{arg}' is not of the form key=value.")
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key in ALIASES:
            target = ALIASES[key]
            parent = target.rsplit(".", 1)[0]
            if OmegaConf.select(raw, parent) is None:
                raise ConfigError(
                    f"'{key}=' sets {target}, but this recipe has no '{parent}'; "
                    f"it does not take a {key}."
                )
            key = target
        if key.rsplit(".", 1)[-1].endswith("prompt"):
            value = escape_interpolations(value)  # prompts are free text, never ${...} references
        out.append(f"{key}={value}")
    return out


def escape_interpolations(text: str) -> str:
    """``text`` with every ``${`` escaped, so OmegaConf keeps it literally."""
    return re.sub(r"(?<!\\)\$\{", r"\\${", text)


def _escape_strings(node: Any) -> Any:
    """A plain container with every string's ``${`` escaped (for writing resolved configs)."""
    if isinstance(node, dict):
        return {k: _escape_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_strings(v) for v in node]
    return escape_interpolations(node) if isinstance(node, str) else node


def load_config(
    config: str,
    cli_args: Sequence[str] = (),
    *,
    make_trial_dir: bool = False,
) -> DictConfig:
    """Load, override, validate and resolve an experiment config."""
    path = find_config_file(config)
    raw = OmegaConf.load(path)
    overrides = _expand_aliases(cli_args, raw)
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"Could not parse overrides {list(cli_args)}: {exc}") from None
    merged = OmegaConf.merge(raw, cli)
    check_keys(ExperimentConfig, merged)
    check_trainer_args(merged.get("trainer") or {})
    missing = sorted(OmegaConf.missing_keys(merged))  # before resolving: ${...} may use them
    if missing:
        hint = "".join(
            f" Pass it as '{a}=...'." for a, t in ALIASES.items() if t in missing
        )
        raise ConfigError(f"Required config value(s) not set: {', '.join(missing)}.{hint}")
    try:  # resolved once; text that must stay literal (prompts with "${") is escaped again after
        resolved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), merged), resolve=True)
    except Exception as exc:
        raise ConfigError(f"Could not resolve config {path}: {exc}") from None
    cfg: DictConfig = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), _escape_strings(resolved))
    _derive_trial_dir(cfg)
    if make_trial_dir:
        os.makedirs(cfg.trial_dir, exist_ok=True)
    return cfg


def check_trainer_args(trainer: Any) -> None:
    """``trainer`` keys must be arguments of Lightning's ``Trainer``."""
    keys = list(_to_container(trainer).keys())
    if not keys:
        return
    import inspect

    import pytorch_lightning as pl

    valid = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in keys:
        if key not in valid:
            raise unknown_key_error(str(key), valid, "trainer")


def _derive_trial_dir(cfg: DictConfig) -> None:
    if cfg.resume:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise ConfigError(
                f"resume={cfg.resume}: no such checkpoint file. Point it at a trial's "
                f"ckpts/last.ckpt."
            )
        trial = ckpt.resolve().parent.parent
        if not cfg.trial_dir and (trial / "configs" / "parsed.yaml").is_file():
            cfg.trial_dir = str(trial)
    if cfg.trial_dir:
        return
    tag = slugify(cfg.tag) if cfg.tag else "run"
    if cfg.use_timestamp:
        if not cfg.timestamp:
            cfg.timestamp = time.strftime("@%Y%m%d-%H%M%S")
        tag += cfg.timestamp
    cfg.trial_dir = os.path.join(cfg.exp_root_dir, cfg.name, tag)


def dump_parsed(cfg: DictConfig, path: Union[str, Path]) -> None:
    """Write the resolved config so that ``--config <path>`` reproduces the run.

    The derived trial directory and timestamp are dropped: a rerun gets a fresh trial.
    """
    out = _escape_strings(OmegaConf.to_container(cfg, resolve=True))
    out["trial_dir"] = ""
    out["timestamp"] = ""
    out["resume"] = None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(out), path)
