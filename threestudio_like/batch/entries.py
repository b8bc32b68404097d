"""Reading a job file's entries and checking each field, before any config is composed.

:func:`read_entries` turns a YAML or plain-text job file into its top-level mapping and raw job
entries; :func:`parse_settings` type-checks the settings shared by jobs and ``defaults``
(config, overrides, seeds, export, retries, ...), and :func:`normalize_overrides` turns
overrides written as ``key=value`` strings or as a mapping into one form. Every problem goes
to a :class:`Problems` list, naming the job and the field, so that a job file reports all of
them at once. Expanding entries into jobs and checking their composed configs is
:mod:`.jobs`' part.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from threestudio_like.config import ALIASES
from threestudio_like.errors import did_you_mean
from threestudio_like.export.formats import FORMATS

TOP_KEYS = ("name", "output_dir", "defaults", "jobs")
SETTING_KEYS = ("config", "overrides", "seed", "seeds", "export", "retries", "retry_delay",
                "timeout", "oom_halve", "env")
JOB_KEYS = ("name", "prompt", "image") + SETTING_KEYS
# Config keys the runner sets itself (each job gets a fixed trial directory and its seed field).
RUNNER_KEYS = ("trial_dir", "exp_root_dir", "resume", "use_timestamp", "timestamp", "seed")
EXPORT_FORMATS = ("all",) + FORMATS
YAML_SUFFIXES = (".yaml", ".yml", ".json")


Override = Tuple[str, Any, str]
"""(dotted key, value, the text as written)."""



class Problems:
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


def entry_label(index: int, entry: Any) -> str:
    """How problems name a raw entry: ``job 3 ("a corgi")`` (its name, prompt or image)."""
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


def unknown_field(key: str, valid: Sequence[str]) -> str:
    """``unknown field 'colour'. Did you mean ...? Valid fields: ...``"""
    return f"unknown field '{key}'.{did_you_mean(key, valid, cutoff=0.5)} Valid fields: {', '.join(valid)}."


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


def normalize_overrides(value: Any, where: str, problems: Problems) -> List[Override]:
    """Overrides as given (a list of ``key=value``, or a mapping) as ``(key, value, text)``;
    keys the job's own fields or the runner set are refused."""
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


def parse_settings(entry: Dict[str, Any], where: str, problems: Problems) -> Dict[str, Any]:
    """Type-check the shared settings of a job or of ``defaults``; returns the given ones."""
    out: Dict[str, Any] = {}
    if "config" in entry:
        if isinstance(entry["config"], str) and entry["config"].strip():
            out["config"] = entry["config"].strip()
        else:
            problems.add(where, "config", f"expected a recipe name or path, got {entry['config']!r}")
    if "overrides" in entry:
        out["overrides"] = normalize_overrides(entry["overrides"], where, problems)
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


def read_entries(path: Path, problems: Problems) -> Tuple[Dict[str, Any], List[Any]]:
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
            problems.add("top level", None, unknown_field(key, TOP_KEYS))
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        problems.add("top level", "jobs", "expected a list of jobs" if jobs is not None else "missing: list the jobs under 'jobs:'")
        jobs = []
    return data, jobs
