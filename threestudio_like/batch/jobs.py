"""Job files: parse, expand and validate a whole batch before anything runs.

A job file is YAML (``.yaml``/``.yml``/``.json``)::

    name: tonight                   # batch name (default: the file name)
    output_dir: outputs/batches     # the batch folder is <output_dir>/<name>
    defaults:                       # any job setting below, for every job
      config: mvdream-sd21.yaml
      overrides: [trainer.max_steps=5000]
      retries: 2
    jobs:
      - prompt: a DSLR photo of a corgi
        seeds: [0, 1]
      - image: data/images/teapot.png
        config: zero123-sjc.yaml
      - a bare string is a prompt

or a plain text file: one prompt per line (``#`` comments and blank lines skipped; a line
``image: <path>`` is an image job) run with ``--config <recipe>``.

Job settings: ``name``, ``prompt``, ``image`` (a path or a list), ``config``, ``overrides`` (a list
of ``key=value`` or a mapping), ``seed`` / ``seeds``, ``export`` (obj/glb/ply), ``retries``,
``retry_delay`` (seconds, doubled per failure), ``timeout`` (seconds per attempt), ``oom_halve``
(keys halved after each out-of-memory failure) and ``env`` (extra environment variables).
Relative paths are looked up in the current directory, then next to the job file.

Every problem is reported at once, each naming the job and the field, and each job's config is
composed and checked with :func:`threestudio_like.config.load_config` (unknown keys, missing
values, trainer arguments), so a typo fails the batch before the first job starts.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from threestudio_like.config import ALIASES, ConfigError, find_config_file, load_config, slugify
from threestudio_like.errors import JobFileError

TOP_KEYS = ("name", "output_dir", "defaults", "jobs")
SETTING_KEYS = ("config", "overrides", "seed", "seeds", "export", "retries", "retry_delay",
                "timeout", "oom_halve", "env")
JOB_KEYS = ("name", "prompt", "image") + SETTING_KEYS
# Config keys the runner sets itself (each job gets a fixed trial directory and its seed field).
RUNNER_KEYS = ("trial_dir", "exp_root_dir", "resume", "use_timestamp", "timestamp", "seed")
EXPORT_FORMATS = ("obj", "glb", "ply")
YAML_SUFFIXES = (".yaml", ".yml", ".json")

BUILTIN_SETTINGS: Dict[str, Any] = {
    "config": None,
    "overrides": [],
    "seeds": None,
    "export": None,
    "retries": 2,
    "retry_delay": 60.0,
    "timeout": None,
    "oom_halve": ["data.batch_size", "system.renderer.eval_chunk_size"],
    "env": {},
}

Override = Tuple[str, Any, str]
"""(dotted key, value, the text as written)."""


@dataclass
class Job:
    """One asset to produce: a recipe, its condition (prompt/image), overrides and a seed."""

    id: str
    index: int
    """1-based position of the entry in the job file (seeds of one entry share it)."""
    config: str
    """Resolved recipe path."""
    config_name: str
    """The recipe as written in the job file."""
    seed: Optional[int] = None
    name: Optional[str] = None
    prompt: Optional[str] = None
    image: Optional[Union[str, List[str]]] = None
    overrides: List[Override] = field(default_factory=list)
    export: Optional[List[str]] = None
    retries: int = 2
    retry_delay: float = 60.0
    timeout: Optional[float] = None
    oom_halve: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    composed: Optional[DictConfig] = None
    """The job's full config (recipe + overrides + condition + seed), set by validation."""

    @property
    def label(self) -> str:
        """How messages name this job: ``job 3 ("a corgi")``."""
        return f'job {self.index} ("{self.id}")'

    def describe(self) -> Dict[str, Any]:
        """The job's settings as plain data (for the state file and the gallery)."""
        return {
            "prompt": self.prompt,
            "image": self.image,
            "config": self.config_name,
            "seed": self.seed,
            "overrides": [text for _, _, text in self.overrides],
            "export": self.export,
        }

    def config_yaml(self) -> str:
        """The composed config as YAML (without the trial directory)."""
        if self.composed is None:
            raise RuntimeError(f"{self.label} has not been validated.")
        return OmegaConf.to_yaml(self.composed)

    def spec_hash(self) -> str:
        """Fingerprint of what the job computes: changes when its config changes."""
        return hashlib.sha256(self.config_yaml().encode()).hexdigest()[:16]


@dataclass
class BatchSpec:
    """A parsed, validated job file."""

    name: str
    source: Path
    output_dir: Path
    """The batch folder: state, logs, trial directories, gallery."""
    jobs: List[Job]


# ------------------------------------------------------------------------------------------
# parsing


class _Problems:
    """Collects problems so that a job file reports all of them at once."""

    def __init__(self) -> None:
        self._items: List[Tuple[int, str]] = []

    def add(self, where: str, fieldname: Optional[str], message: str) -> None:
        m = re.match(r"job (\d+)", where)
        text = f"{where}, field '{fieldname}': {message}" if fieldname else f"{where}: {message}"
        self._items.append((int(m.group(1)) if m else 0, text))

    @property
    def items(self) -> List[str]:
        """Problems in job-file order (file-level ones first)."""
        return [text for _, text in sorted(self._items, key=lambda item: item[0])]


def _entry_label(index: int, entry: Any) -> str:
    hint = ""
    if isinstance(entry, dict):
        hint = entry.get("name") or entry.get("prompt") or entry.get("image") or ""
        if isinstance(hint, list):
            hint = hint[0] if hint else ""
    elif isinstance(entry, str):
        hint = entry
    hint = str(hint)
    if len(hint) > 40:
        hint = hint[:37] + "..."
    return f'job {index} ("{hint}")' if hint else f"job {index}"


def _unknown(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown field '{key}'.{hint} Valid fields: {', '.join(valid)}."


def _flatten(mapping: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, full))
        else:
            out.append((full, value))
    return out


def parse_override(text: str) -> Tuple[str, Any]:
    """``key=value`` as on the command line (the value is parsed the same way)."""
    if "=" not in text:
        raise ValueError(f"'{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("+")
    if not key:
        raise ValueError(f"'{text}' has an empty key")
    try:
        parsed = OmegaConf.from_dotlist([f"{key}={raw}"])
    except Exception as exc:  # omegaconf grammar errors
        raise ValueError(f"could not parse '{text}': {exc}") from None
    value = OmegaConf.select(parsed, key)
    return key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _normalize_overrides(value: Any, where: str, problems: _Problems) -> List[Override]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        pairs = [(k, v, f"{k}={v}") for k, v in _flatten(value)]
    elif isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, str):
                problems.add(where, "overrides", f"items must be 'key=value' strings, got {item!r}")
                continue
            try:
                key, parsed = parse_override(item)
            except ValueError as exc:
                problems.add(where, "overrides", str(exc))
                continue
            pairs.append((key, parsed, item))
    else:
        problems.add(where, "overrides", f"expected a list of key=value or a mapping, got {type(value).__name__}")
        return []
    out: List[Override] = []
    for key, val, text in pairs:
        if key in ALIASES:
            problems.add(where, "overrides", f"'{key}=' belongs in the job's own '{key}' field")
        elif key in RUNNER_KEYS:
            hint = " (use the 'seed'/'seeds' field)" if key == "seed" else ""
            problems.add(where, "overrides", f"'{key}' is set by the batch runner{hint}")
        else:
            out.append((key, val, text))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_settings(entry: Dict[str, Any], where: str, problems: _Problems) -> Dict[str, Any]:
    """Type-check the shared settings of a job or of ``defaults``; returns the given ones."""
    out: Dict[str, Any] = {}
    if "config" in entry:
        if isinstance(entry["config"], str) and entry["config"].strip():
            out["config"] = entry["config"].strip()
        else:
            problems.add(where, "config", f"expected a recipe name or path, got {entry['config']!r}")
    if "overrides" in entry:
        out["overrides"] = _normalize_overrides(entry["overrides"], where, problems)
    if "seed" in entry and "seeds" in entry:
        problems.add(where, "seeds", "give either 'seed' or 'seeds', not both")
    elif "seed" in entry or "seeds" in entry:
        key = "seed" if "seed" in entry else "seeds"
        seeds = entry[key] if isinstance(entry[key], list) else [entry[key]]
        if not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
            problems.add(where, key, f"expected non-negative integer(s), got {entry[key]!r}")
        elif len(set(seeds)) != len(seeds):
            problems.add(where, key, f"repeated seeds in {seeds}")
        else:
            out["seeds"] = seeds
    if "export" in entry:
        fmts = entry["export"] if isinstance(entry["export"], list) else [entry["export"]]
        bad = [f for f in fmts if f not in EXPORT_FORMATS]
        if not fmts or bad:
            problems.add(where, "export", f"formats must be among {', '.join(EXPORT_FORMATS)}, got {entry['export']!r}")
        else:
            out["export"] = list(dict.fromkeys(fmts))
    if "retries" in entry:
        if _is_int(entry["retries"]) and entry["retries"] >= 0:
            out["retries"] = entry["retries"]
        else:
            problems.add(where, "retries", f"expected an integer >= 0, got {entry['retries']!r}")
    if "retry_delay" in entry:
        if _is_number(entry["retry_delay"]) and entry["retry_delay"] >= 0:
            out["retry_delay"] = float(entry["retry_delay"])
        else:
            problems.add(where, "retry_delay", f"expected seconds >= 0, got {entry['retry_delay']!r}")
    if "timeout" in entry:
        t = entry["timeout"]
        if t is None or (_is_number(t) and t > 0):
            out["timeout"] = None if t is None else float(t)
        else:
            problems.add(where, "timeout", f"expected seconds > 0 (or null), got {t!r}")
    if "oom_halve" in entry:
        keys = entry["oom_halve"]
        if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
            out["oom_halve"] = list(keys)
        else:
            problems.add(where, "oom_halve", f"expected a list of config keys, got {keys!r}")
    if "env" in entry:
        env = entry["env"]
        if isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in env.items()):
            out["env"] = {k: str(v) for k, v in env.items()}
        else:
            problems.add(where, "env", f"expected a mapping of NAME: value, got {env!r}")
    return out


def _read_entries(path: Path, problems: _Problems) -> Tuple[Dict[str, Any], List[Any]]:
    """The top-level mapping (name, defaults, ...) and the raw job entries."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in YAML_SUFFIXES:
        entries: List[Any] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("image:"):
                entries.append({"image": line.split(":", 1)[1].strip()})
            else:
                entries.append({"prompt": line})
        return {}, entries
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.add(str(path.name), None, f"not valid YAML: {exc}")
        return {}, []
    if data is None:
        data = {}
    if isinstance(data, list):
        data = {"jobs": data}
    if not isinstance(data, dict):
        problems.add("top level", None, f"expected a mapping with 'jobs' (or a list of jobs), got {type(data).__name__}")
        return {}, []
    for key in data:
        if key not in TOP_KEYS:
            problems.add("top level", None, _unknown(key, TOP_KEYS))
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        problems.add("top level", "jobs", "expected a list of jobs" if jobs is not None else "missing: list the jobs under 'jobs:'")
        jobs = []
    return data, jobs


def _resolve_file(name: str, base: Path) -> Optional[Path]:
    for cand in (Path(name), base / name):
        if cand.is_file():
            return cand.resolve()
    return None


def _resolve_config(name: str, base: Path) -> Path:
    try:
        return find_config_file(name).resolve()
    except ConfigError:
        local = _resolve_file(name, base)
        if local is not None:
            return local
        raise


def load_job_file(
    path: Union[str, Path],
    *,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    output_dir: Optional[Union[str, Path]] = None,
    validate: bool = True,
) -> BatchSpec:
    """Parse and validate a job file; raises :class:`JobFileError` listing every problem.

    ``config`` and ``overrides`` come from the command line: the default recipe (needed by a
    plain-text file) and ``key=value`` overrides applied to every job, after the job's own.
    ``output_dir`` replaces the batch folder (default ``<output_dir>/<name>`` from the file).
    """
    path = Path(path)
    problems = _Problems()
    if not path.is_file():
        raise JobFileError(path, [f"job file not found: {path}"])
    base = path.resolve().parent
    top, entries = _read_entries(path, problems)

    settings = dict(BUILTIN_SETTINGS)
    defaults = top.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.add("defaults", None, f"expected a mapping, got {type(defaults).__name__}")
        defaults = {}
    for key in defaults:
        if key not in SETTING_KEYS:
            problems.add("defaults", None, _unknown(key, SETTING_KEYS))
    settings.update(_parse_settings(defaults, "defaults", problems))
    if config:
        settings["config"] = config
    cli_overrides = _normalize_overrides(list(overrides), "command line", problems)

    name = top.get("name") if top.get("name") is not None else path.stem
    if not isinstance(name, str) or not name.strip():
        problems.add("top level", "name", f"expected a batch name, got {name!r}")
        name = path.stem
    name = slugify(name)
    root = top.get("output_dir") or os.path.join("outputs", "batches")
    if not isinstance(root, str):
        problems.add("top level", "output_dir", f"expected a folder path, got {root!r}")
        root = os.path.join("outputs", "batches")
    out = Path(output_dir) if output_dir else Path(root) / name
    if not entries and not problems.items:
        problems.add("top level", "jobs", "the job file lists no jobs")

    jobs: List[Job] = []
    for index, entry in enumerate(entries, start=1):
        where = _entry_label(index, entry)
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict):
            problems.add(where, None, f"expected a mapping (or a prompt string), got {type(entry).__name__}")
            continue
        for key in entry:
            if key not in JOB_KEYS:
                problems.add(where, None, _unknown(key, JOB_KEYS))
        job_settings = dict(settings)
        given = _parse_settings(entry, where, problems)
        job_settings.update({k: v for k, v in given.items() if k != "overrides"})
        job_settings["overrides"] = list(settings["overrides"]) + given.get("overrides", []) + cli_overrides
        jobs.extend(_expand_entry(entry, index, where, job_settings, base, problems))
    _assign_ids(jobs, problems)
    if validate:  # also for the well-formed jobs of a file with other problems: report all
        for job in jobs:
            _validate_config(job, problems)
    if problems.items:
        raise JobFileError(path, problems.items)
    return BatchSpec(name=name, source=path.resolve(), output_dir=out, jobs=jobs)


def _expand_entry(entry: Dict[str, Any], index: int, where: str, settings: Dict[str, Any],
                  base: Path, problems: _Problems) -> List[Job]:
    """One job per seed, with the prompt/image/config checked and resolved."""
    ok = True
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or slugify(name) != name.strip() or len(name) > 64):
        problems.add(where, "name", f"use letters, digits, '.', '_' or '-' (at most 64), got {name!r}; e.g. '{slugify(str(name))}'")
        ok = False
    prompt = entry.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        problems.add(where, "prompt", f"expected non-empty text, got {prompt!r}")
        ok = False
    elif isinstance(prompt, str) and "${" in prompt:
        problems.add(where, "prompt", "'${' would be read as a config interpolation; rephrase the prompt")
        ok = False
    image = entry.get("image")
    if image is not None:
        paths = image if isinstance(image, list) else [image]
        resolved = []
        for p in paths:
            if not isinstance(p, str) or not p.strip():
                problems.add(where, "image", f"expected a file path, got {p!r}")
                ok = False
                continue
            found = _resolve_file(p, base)
            if found is None:
                problems.add(where, "image", f"file not found: '{p}' (looked in the current directory and next to the job file)")
                ok = False
            else:
                resolved.append(str(found))
        image = resolved if isinstance(entry["image"], list) else (resolved[0] if resolved else None)
    config_name = settings.get("config")
    config_path = None
    if not config_name:
        problems.add(where, "config", "no recipe: set 'config' in the job or in 'defaults' (or pass --config)")
        ok = False
    else:
        try:
            config_path = _resolve_config(config_name, base)
        except ConfigError as exc:
            problems.add(where, "config", str(exc))
            ok = False
    if not ok:
        return []
    seeds = settings.get("seeds") or [None]
    jobs = []
    for seed in seeds:
        jobs.append(Job(
            id="", index=index, config=str(config_path), config_name=config_name, seed=seed,
            name=name, prompt=prompt.strip() if prompt else None, image=image,
            overrides=list(settings["overrides"]), export=settings.get("export"),
            retries=settings["retries"], retry_delay=settings["retry_delay"],
            timeout=settings.get("timeout"), oom_halve=list(settings["oom_halve"]),
            env=dict(settings["env"]),
        ))
    return jobs


def _base_id(job: Job) -> str:
    if job.name:
        return job.name
    if job.prompt:
        return slugify(job.prompt, 48)
    if job.image:
        first = job.image if isinstance(job.image, str) else job.image[0]
        return slugify(Path(first).stem, 48)
    return slugify(Path(job.config_name).stem, 48)


def _assign_ids(jobs: List[Job], problems: _Problems) -> None:
    """Stable, unique, directory-safe ids: the name (or prompt slug), ``-s<seed>`` per seed.

    Explicit names are reserved first, so adding an unnamed job never renames a named one.
    """
    per_entry: Dict[int, int] = {}
    for job in jobs:
        per_entry[job.index] = per_entry.get(job.index, 0) + 1

    def base(job: Job) -> str:
        stem = _base_id(job)
        return f"{stem}-s{job.seed}" if per_entry[job.index] > 1 else stem

    taken: Dict[str, int] = {}
    for job in jobs:
        if not job.name:
            continue
        cand = base(job)
        first = taken.setdefault(cand, job.index)
        if first != job.index:
            problems.add(f'job {job.index} ("{job.name}")', "name", f"'{job.name}' is already the name of job {first}")
        job.id = cand
    for job in jobs:
        if job.name:
            continue
        stem = base(job)
        cand, k = stem, 2
        while cand in taken:
            cand, k = f"{stem}-{k}", k + 1
        taken[cand] = job.index
        job.id = cand


# ------------------------------------------------------------------------------------------
# config composition and validation


def compose_job_config(job: Job) -> DictConfig:
    """Recipe + overrides + prompt/image + seed + export formats (not yet resolved).

    Raises ``ConfigError`` with a ``field`` attribute naming the job-file field at fault.
    """
    raw = OmegaConf.load(job.config)
    for key, value, _ in job.overrides:
        try:
            OmegaConf.update(raw, key, copy.deepcopy(value), merge=True, force_add=True)
        except Exception as exc:
            err = ConfigError(f"cannot set '{key}': {exc}")
            err.field = "overrides"  # type: ignore[attr-defined]
            raise err from None
    for fieldname, value in (("prompt", job.prompt), ("image", job.image)):
        if value is None:
            continue
        target = ALIASES[fieldname]
        parent = target.rsplit(".", 1)[0]
        if OmegaConf.select(raw, parent) is None:
            err = ConfigError(f"recipe '{job.config_name}' does not take a {fieldname} (it has no '{parent}')")
            err.field = fieldname  # type: ignore[attr-defined]
            raise err
        OmegaConf.update(raw, target, value if isinstance(value, str) else list(value), merge=False, force_add=True)
    if job.seed is not None:
        raw.seed = job.seed
    if job.export:
        OmegaConf.update(raw, "system.exporter.formats", list(job.export), merge=False, force_add=True)
    raw.use_timestamp = False
    return raw


def _field_of(job: Job, message: str) -> str:
    """Which job-file field a config error points at."""
    if ALIASES["prompt"] in message or "prompt_processor" in message:
        return "prompt"
    if ALIASES["image"] in message:
        return "image"
    if "exporter" in message and job.export:
        return "export"
    quoted = re.findall(r"'([^'\s]+)'", message)
    for key, _, _ in job.overrides:
        if any(key == q or key.startswith(q + ".") for q in quoted):
            return "overrides"
    return "config"


def _validate_config(job: Job, problems: _Problems) -> None:
    try:
        composed = compose_job_config(job)
        resolved = validate_composed(composed)
    except ConfigError as exc:
        fieldname = getattr(exc, "field", None) or _field_of(job, str(exc))
        problems.add(job.label, fieldname, str(exc))
        return
    except Exception as exc:  # omegaconf errors the config loader does not translate
        message = " ".join(str(exc).split())
        problems.add(job.label, _field_of(job, message), f"{type(exc).__name__}: {message}")
        return
    job.composed = composed
    if job.seed is None:
        job.seed = int(resolved.seed)


def validate_composed(composed: DictConfig) -> DictConfig:
    """Check a composed job config exactly as ``launch.py`` will (returns it resolved)."""
    with tempfile.TemporaryDirectory(prefix="tsl-job-") as tmp:
        path = os.path.join(tmp, "job.yaml")
        OmegaConf.save(composed, path)
        return load_config(path, [f"exp_root_dir={tmp}"])
