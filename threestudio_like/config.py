"""Configuration: YAML + command-line overrides -> validated, structured configs.

* ``load_config`` reads a recipe (a path, or a bare file name found in ``configs/``), imports the
  files its ``plugins:`` list names, merges ``key=value`` overrides (with the short aliases
  ``prompt=``, ``image=`` and ``references=``), checks every key against the dataclass ``Config``
  of the part it configures (unknown keys fail at once and name the closest valid key), then every
  value: types, the allowed words of ``Literal`` fields and each config's own ``validate`` — all
  before any work — and derives the trial directory.
* ``schedule_value`` (from :mod:`.schedules`) evaluates a scheduled hyper-parameter: a number, or
  ``[start_step, start_value, end_value, end_step]`` (linear in between, constant outside).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ValidationError

from threestudio_like.errors import ConfigError, FieldError, at_least, did_you_mean, unknown_key_error
from threestudio_like.recipes import config_dirs, find_config_file  # noqa: F401  (recipe lookup: path, ./configs/, bundled)
from threestudio_like.resolvers import slugify  # noqa: F401  (registers the ${...} resolvers)
from threestudio_like.sampling.settings import SampleConfig
from threestudio_like.schedules import schedule_value  # noqa: F401  (imported from here by the parts)
from threestudio_like.trainer_args import check_trainer_args

PACKAGE_ROOT = Path(__file__).resolve().parent

# Short command-line aliases -> full config keys.
ALIASES: Dict[str, str] = {
    "prompt": "system.prompt_processor.prompt",
    "image": "data.image_path",
    "references": "data.references",
}
ALIAS_FALLBACKS: Dict[str, Tuple[str, ...]] = {
    "image": ("sample.image_path", "system.guidance.image_path"),
    "depth": ("sample.depth_path",),
    "elevation": ("system.guidance.elevation_deg",),
    "azimuth": ("system.guidance.azimuth_deg",),
}
"""Further keys an alias may set: of its keys (:data:`ALIASES`' first), the first one the recipe
spells out, else the first whose section the recipe has (``image=``: an image-conditioned
recipe's input, the RGBD image a DepthFusion recipe builds its scene from, or HawkI's photo;
``elevation=``/``azimuth=``: HawkI's requested aerial pose)."""


# --------------------------------------------------------------------------------------------
# structured configs with helpful errors


def _field_names(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _field_types(cls: type) -> Dict[str, Any]:
    """Field types with string annotations (``from __future__ import annotations``) resolved."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotation: fall back to the raw ones
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def plain_dict(config: Any) -> Dict[str, Any]:
    """A config mapping (DictConfig or dict) as a plain, resolved ``dict``; ``None`` -> ``{}``."""
    if config is None:
        return {}
    if isinstance(config, DictConfig):
        return dict(OmegaConf.to_container(config, resolve=True))  # type: ignore[arg-type]
    if not isinstance(config, typing.Mapping):
        raise ConfigError(f"Expected a mapping, got {type(config).__name__}.")
    return dict(config)


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
    cfg = _as_mapping(cfg, where)
    names = _field_names(cls)
    types = _field_types(cls)
    for key, value in cfg.items():
        if key not in names:
            raise unknown_key_error(str(key), names, where)
        ftype = types[key]
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            check_keys(ftype, value, _join(where, key))
    for key, part_cls, value in _parts(cls, cfg, where):
        check_keys(part_cls.Config, value, _join(where, key))


def _as_mapping(cfg: Any, where: str) -> Dict[Any, Any]:
    cfg = _to_container(cfg)
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"Config '{where or '<root>'}' must be a mapping, got {type(cfg).__name__}.")
    return cfg


def _parts(cls: type, cfg: Dict[Any, Any], where: str) -> Iterator[Tuple[str, type, Any]]:
    """``(key, part class, part config)`` of every ``<part>_type`` + ``<part>`` pair of ``cfg``.

    Only ``<part>_type`` keys with a sibling ``<part>`` field name registered parts
    (``normal_type: analytic`` is a plain option); an unknown part name is a config error.
    """
    from threestudio_like import find

    names = _field_names(cls)
    for key in names:
        if not (key.endswith("_type") and key[: -len("_type")] in names):
            continue
        part = cfg.get(key, _default_of(cls, key))
        if not part:
            continue
        try:
            part_cls = find(part)
        except KeyError as exc:
            raise ConfigError(f"{_join(where, key)}: {exc.args[0]}") from None
        value = cfg.get(key[: -len("_type")])
        yield key[: -len("_type")], part_cls, value if isinstance(value, dict) else {}


def check_values(cls: type, cfg: Any, where: str = "") -> None:
    """Check the values of a resolved config: types, ``Literal`` choices and every ``validate``
    of ``cls`` and, recursively, of the parts it names (see :func:`parse_structured`)."""
    cfg = _as_mapping(cfg, where)
    parse_structured(cls, _escape_strings(cfg), where)  # resolved: its "${" are literal text
    for key, part_cls, value in _parts(cls, cfg, where):
        check_values(part_cls.Config, value, _join(where, key))


def _literal_choices(ftype: Any) -> Optional[Tuple[Any, ...]]:
    """The allowed values of a ``Literal[...]`` (or ``Optional[Literal[...]]``) type, else None."""
    if typing.get_origin(ftype) is typing.Literal:
        return typing.get_args(ftype)
    if typing.get_origin(ftype) is Union:
        for arg in typing.get_args(ftype):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg)
    return None


def _value_error(cls: type, cfg: Dict[Any, Any], exc: ValidationError, where: str) -> ConfigError:
    """One clear message for a value OmegaConf rejected: the full key, the value and what fits."""
    key = str(getattr(exc, "full_key", "") or "")
    top = key.split(".")[0].split("[")[0]
    value = cfg.get(top) if top else None
    choices = _literal_choices(_field_types(cls).get(top)) if top else None
    if choices is not None and key == top:
        words = [str(c) for c in choices]
        return ConfigError(f"{_join(where, key)}: '{value}' is not one of {', '.join(words)}."
                           f"{did_you_mean(str(value), words, cutoff=0.5)}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = key or next((k for k in cfg if not _merges(cls, {k: cfg[k]})), "")  # OmegaConf named no key
    return ConfigError(f"{_join(where, key) if key else where or cls.__qualname__}: {first}")


def _merges(cls: type, cfg: Dict[Any, Any]) -> bool:
    try:
        OmegaConf.merge(OmegaConf.structured(cls), cfg)
        return True
    except Exception:
        return False


def _default_of(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return None


def parse_structured(cls: type, cfg: Optional[Union[dict, DictConfig]] = None, where: str = "") -> Any:
    """Build a typed, attribute-access config of dataclass ``cls`` from ``cfg``.

    Unknown keys, values of the wrong type and words outside a ``Literal`` field's choices raise
    :class:`ConfigError` naming the key (prefixed by ``where``); then every ``validate`` method
    the dataclass and its bases define runs on the result (a :class:`FieldError` names its field).
    """
    cfg = {} if cfg is None else cfg
    check_keys(cls, cfg, where)
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except ValidationError as exc:
        raise _value_error(cls, _as_mapping(cfg, where), exc, where) from None
    except Exception as exc:  # other omegaconf errors
        raise ConfigError(f"Invalid value in {where or cls.__qualname__}: {exc}") from None
    _validate(cls, merged, where)
    return merged


def _validate(cls: type, node: Any, where: str) -> None:
    """Every ``validate`` along ``cls``'s MRO, then those of its dataclass-typed fields."""
    for klass in reversed(cls.__mro__):
        validate = klass.__dict__.get("validate")
        if validate is not None:
            try:
                validate(node)
            except FieldError as exc:
                raise ConfigError(f"{_join(where, exc.field)} {exc.problem}.") from None
    for name, ftype in _field_types(cls).items():
        if dataclasses.is_dataclass(ftype) and node.get(name) is not None:
            _validate(ftype, node[name], _join(where, name))


# --------------------------------------------------------------------------------------------
# experiment


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500
    """Save ``ckpts/last.ckpt`` every N training steps (also on Ctrl-C and at the end)."""
    keep_step_copies: bool = False
    """Also keep ``ckpts/step=<N>.ckpt`` copies of each periodic checkpoint."""

    def validate(self) -> None:
        at_least("every_n_train_steps", self.every_n_train_steps, 1)


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
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Settings of ``--sample``."""
    plugins: List[str] = field(default_factory=list)
    """Python files with extra parts (a prior, a system ...) imported before the config is checked;
    relative paths are relative to the config file."""


def _expand_aliases(cli_args: Sequence[str], raw: DictConfig) -> List[str]:
    out = []
    for arg in cli_args:
        if "=" not in arg:
            raise ConfigError(f"Override '{arg}' is not of the form key=value.")
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key in ALIASES or key in ALIAS_FALLBACKS:
            if not value.strip():
                raise ConfigError(f"'{key}=' is empty: say what to use, e.g. {key}=" +
                                  ('"a DSLR photo of a corgi"' if key == "prompt" else f"path/to/{key}"))
            target = _alias_target(tuple(filter(None, (ALIASES.get(key),))) + ALIAS_FALLBACKS.get(key, ()), raw)
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


def _alias_target(targets: Tuple[str, ...], raw: DictConfig) -> str:
    """The key an alias sets in this recipe (see :data:`ALIAS_FALLBACKS`)."""

    def spelled_out(key: str) -> bool:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(raw, parent)
        return isinstance(node, DictConfig) and leaf in node

    for target in targets:
        if spelled_out(target):
            return target
    for target in targets:
        if OmegaConf.select(raw, target.rsplit(".", 1)[0]) is not None:
            return target
    return targets[0]


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
    path = _run_config(find_config_file(config), cli_args)
    raw = _read_yaml(path)
    _load_plugins(raw, path)
    overrides = _expand_aliases(cli_args, raw)
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except Exception as exc:
        raise ConfigError(f"Could not parse overrides {list(cli_args)}: {exc}") from None
    merged = OmegaConf.merge(raw, cli)
    check_keys(ExperimentConfig, merged)
    try:  # before resolving: ${...} may use them
        missing = sorted(OmegaConf.missing_keys(merged))
    except Exception as exc:  # a ${...} that refers to itself
        raise ConfigError(f"Could not resolve config {path}: {_omegaconf_problem(exc)}") from None
    if missing:
        hint = "".join(
            f" Pass it as '{a}=...'." for a, t in ALIASES.items() if t in missing
        )
        raise ConfigError(f"Required config value(s) not set: {', '.join(missing)}.{hint}")
    try:  # resolved once; text that must stay literal (prompts with "${") is escaped again after
        resolved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), merged), resolve=True)
    except Exception as exc:
        raise ConfigError(f"Could not resolve config {path}: {_omegaconf_problem(exc)}") from None
    check_values(ExperimentConfig, resolved)
    check_trainer_args(resolved.get("trainer") or {})
    cfg: DictConfig = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), _escape_strings(resolved))
    _derive_trial_dir(cfg)
    if make_trial_dir:
        os.makedirs(cfg.trial_dir, exist_ok=True)
    return cfg


def _run_config(path: Path, cli_args: Sequence[str]) -> Path:
    """The config to start from: the trial's own ``configs/parsed.yaml`` when ``resume=`` points
    into a trial (it holds the run's prompt, image and every value), else ``path``."""
    resume = next((a.split("=", 1)[1] for a in cli_args if a.lstrip("+").startswith("resume=")), None)
    if not resume:
        return path
    trial = Path(resume).expanduser().resolve().parent.parent
    parsed = trial / "configs" / "parsed.yaml"
    if not parsed.is_file() or parsed == path.resolve() or _owns_trial(path, trial):
        return path
    print(f"note: resume= points into a trial: starting from its own config {parsed} "
          f"(not {path.name}); key=value overrides still apply.")
    return parsed


def _owns_trial(path: Path, trial: Path) -> bool:
    """Whether the config at ``path`` names ``trial`` as its ``trial_dir`` (a batch job's config:
    it holds the job's current settings, which may differ from the trial's parsed.yaml)."""
    try:
        own = OmegaConf.load(path).get("trial_dir")
    except Exception:  # an unreadable config is reported when it is read for real
        return False
    return isinstance(own, str) and Path(own).expanduser().resolve() == trial


def _read_yaml(path: Path) -> DictConfig:
    """A config file's mapping; a file that is not YAML, empty or not a mapping is a ConfigError."""
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors, unreadable files, duplicate keys ...
        first = " ".join(str(exc).split())[:300]
        raise ConfigError(f"Config file {path} is not valid YAML ({type(exc).__name__}: {first}); "
                          f"fix the file or start from a recipe in configs/.") from None
    if not isinstance(raw, DictConfig) or not raw:
        what = "empty" if raw is None or not raw else f"a YAML {type(raw).__name__.replace('Config', '').lower()}"
        raise ConfigError(f"Config file {path} is {what}; a config is a mapping of keys like "
                          f"data_type:, data:, system_type:, system: (see configs/demo.yaml).")
    return raw


def _omegaconf_problem(exc: Exception) -> str:
    """``<key>: <first line>`` of an OmegaConf error (its message continues with internals)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    key = str(getattr(exc, "full_key", "") or "")
    first = lines[0] if lines else type(exc).__name__
    return f"{key}: {first}" if key else first


def _load_plugins(raw: DictConfig, path: Path) -> None:
    """Import the files of the config's ``plugins:`` list (paths made absolute in ``raw``)."""
    from threestudio_like import load_plugin_file

    plugins = raw.get("plugins") if isinstance(raw, DictConfig) else None
    if not plugins:
        return
    if not isinstance(plugins, ListConfig):
        raise ConfigError(f"plugins: a list of Python files, got {plugins!r}.")
    absolute = []
    for entry in plugins:
        file = Path(os.path.expanduser(str(entry)))
        file = file if file.is_absolute() else (path.parent / file)
        if not file.is_file():
            raise ConfigError(f"plugins: no such file {file} (paths are relative to {path}).")
        try:
            load_plugin_file(str(file))
        except Exception as exc:
            raise ConfigError(f"plugins: {file} failed to import: {type(exc).__name__}: {exc}") from None
        absolute.append(str(file.resolve()))
    raw.plugins = absolute


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
    cfg.trial_dir = os.path.join(cfg.exp_root_dir, slugify(cfg.name) if cfg.name else "default", tag)


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
