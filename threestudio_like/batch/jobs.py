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

Every problem is reported at once, each naming the job and the field: the fields of each entry
are checked by :mod:`.entries`; here entries become jobs (one per seed, with unique ids) and each
job's config is composed and checked with :func:`threestudio_like.config.load_config` (unknown
keys, missing values, trainer arguments), so a typo fails the batch before the first job starts.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf

from threestudio_like.batch.entries import (JOB_KEYS, SETTING_KEYS, Override, Problems, entry_label,
                                            normalize_overrides, parse_settings, read_entries, unknown_field)
from threestudio_like.config import ALIASES, ConfigError, find_config_file, load_config, slugify
from threestudio_like.errors import JobFileError

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

FINISH_KEYS = (
    "system.exporter_type",
    "system.exporter",
    "system.geometry.isosurface_threshold",
    "system.geometry.isosurface_resolution",
    "system.test_formats",
    "system.test_fps",
)
"""Config keys read only after training (turntable and export): changing them needs no retraining."""


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

    def train_hash(self) -> str:
        """Fingerprint of what training computes: the config without the settings used only after
        training (:data:`FINISH_KEYS`), so that a changed export setting keeps the trained model."""
        if self.composed is None:
            raise RuntimeError(f"{self.label} has not been validated.")
        data = OmegaConf.to_container(self.composed, resolve=False)
        for key in FINISH_KEYS:
            *parents, leaf = key.split(".")
            node = data
            for name in parents:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        return hashlib.sha256(OmegaConf.to_yaml(data).encode()).hexdigest()[:16]


@dataclass
class BatchSpec:
    """A parsed, validated job file."""

    name: str
    source: Path
    output_dir: Path
    """The batch folder: state, logs, trial directories, gallery."""
    jobs: List[Job]


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
    problems = Problems()
    if not path.is_file():
        raise JobFileError(path, [f"job file not found: {path}"])
    base = path.resolve().parent
    top, entries = read_entries(path, problems)

    settings = dict(BUILTIN_SETTINGS)
    defaults = top.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.add("defaults", None, f"expected a mapping, got {type(defaults).__name__}")
        defaults = {}
    for key in defaults:
        if key not in SETTING_KEYS:
            problems.add("defaults", None, unknown_field(key, SETTING_KEYS))
    settings.update(parse_settings(defaults, "defaults", problems))
    if config:
        settings["config"] = config
    cli_overrides = normalize_overrides(list(overrides), "command line", problems)

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
        where = entry_label(index, entry)
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, dict):
            problems.add(where, None, f"expected a mapping (or a prompt string), got {type(entry).__name__}")
            continue
        for key in entry:
            if key not in JOB_KEYS:
                problems.add(where, None, unknown_field(key, JOB_KEYS))
        job_settings = dict(settings)
        given = parse_settings(entry, where, problems)
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
                  base: Path, problems: Problems) -> List[Job]:
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


def _assign_ids(jobs: List[Job], problems: Problems) -> None:
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


def _validate_config(job: Job, problems: Problems) -> None:
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
