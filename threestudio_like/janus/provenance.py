"""Where a benchmark's numbers come from: weights, settings, code and machine.

A Janus report made with tiny random weights must never pass for a comparison of real priors.
Every run's own ``configs/parsed.yaml`` says which weights it loaded (each ``*_name_or_path``
value of the guidance and prompt processor), its steps, seed and the overrides; the report adds
the code version and the machine. Weights are identified by what can be checked without reading
gigabytes: a Hugging Face snapshot's revision, or for a local folder/file a fingerprint (SHA-256
over each weights file's name, size and first MiB). ``tiny-random`` marks test weights; a run
whose weights are all real has ``real_weights: true``.
"""
from __future__ import annotations

import glob
import hashlib
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
TEST_WEIGHTS = ("tiny-random",)
"""Weights ids that build random test models (no checkpoint is read)."""
NO_WEIGHTS_PRIORS = ("reference-object-guidance",)
"""Priors that load no weights at all (the known-answer reference object)."""


def _weight_keys(node: Any, prefix: str = "") -> Dict[str, str]:
    """Every ``*_name_or_path`` string under ``node`` by dotted key."""
    out: Dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, str) and key.endswith("name_or_path") and value:
                out[path] = value
            elif isinstance(value, dict):
                out.update(_weight_keys(value, path))
    return out


def _local_fingerprint(path: str) -> Optional[str]:
    """SHA-256 over (name, size, first MiB) of each weights file under ``path`` (16 hex digits)."""
    files = [path] if os.path.isfile(path) else sorted(
        f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(os.path.relpath(f, path if os.path.isdir(path) else os.path.dirname(path)).encode())
        digest.update(str(os.path.getsize(f)).encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def _hub_revision(repo_id: str) -> Optional[str]:
    """The cached snapshot revision of a hub id, without any download; None if not cached."""
    try:
        from huggingface_hub import snapshot_download

        return os.path.basename(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a repo id, or no hub library: nothing to record
        return None


def describe_weights(value: str) -> Dict[str, Any]:
    """``{id, kind, revision|fingerprint}`` of one weights setting; kind is test, local or hub."""
    if value in TEST_WEIGHTS:
        return {"id": value, "kind": "test"}
    expanded = os.path.expanduser(value)
    if os.path.exists(expanded):
        return {"id": os.path.basename(os.path.normpath(expanded)), "kind": "local",
                "fingerprint": _local_fingerprint(expanded)}
    return {"id": value, "kind": "hub", "revision": _hub_revision(value)}


def run_provenance(parsed: Dict[str, Any]) -> Dict[str, Any]:
    """Weights, prior, steps and seed of one run from its parsed config (a plain dict)."""
    system = parsed.get("system") or {}
    weights = {key: describe_weights(value) for key, value in _weight_keys(system, "system").items()}
    guidance = system.get("guidance_type")
    real = bool(weights) and all(w["kind"] != "test" for w in weights.values())
    return {
        "guidance": guidance,
        "weights": weights,
        "real_weights": real and guidance not in NO_WEIGHTS_PRIORS,
        "max_steps": (parsed.get("trainer") or {}).get("max_steps"),
        "seed": parsed.get("seed"),
    }


def read_run_provenance(run_dir: str) -> Optional[Dict[str, Any]]:
    """:func:`run_provenance` of the newest trial under a benchmark run folder; None without one."""
    import yaml

    found = sorted(glob.glob(os.path.join(run_dir, "*", "*", "configs", "parsed.yaml")), key=os.path.getmtime)
    if not found:
        return None
    with open(found[-1], encoding="utf-8") as f:
        return run_provenance(yaml.safe_load(f) or {})


def code_version() -> str:
    """``<package version>+<git describe>`` from a checkout, else the package version."""
    from threestudio_like import __version__

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        described = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True,
                                   text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{__version__}+{described}" if described else str(__version__)


def machine() -> Dict[str, Any]:
    """The platform, Python, torch and the accelerator the numbers were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "gpu": gpu}


def bench_provenance(configs: Sequence[str], seeds: Sequence[int], overrides: Sequence[str],
                     runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The report-wide record: command settings, code, machine, and how many runs had test weights."""
    test_runs = [r for r in runs if not (r.get("provenance") or {}).get("real_weights")]
    return {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "configs": [os.path.basename(c) for c in configs],
        "seeds": list(seeds),
        "overrides": list(overrides),
        "code_version": code_version(),
        "machine": machine(),
        "runs": len(runs),
        "runs_without_real_weights": len(test_runs),
    }
