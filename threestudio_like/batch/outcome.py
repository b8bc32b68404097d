"""How an attempt ended: its outcome, the retry back-off and the command of the next attempt.

:func:`classify` maps an attempt's exit status and log to an outcome (ok, interrupted, timeout,
oom, nan, config, crash); the table of the rules and of what each outcome leads to is in
:mod:`.runner`'s docstring. Also here: the retry back-off, the overrides an out-of-memory
back-off adds, and the ``resume=`` argument of an attempt (shared by the local and the SLURM
launchers).
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

DONE_MARK = "Done. Outputs in"
OOM_PATTERNS = ("out of memory", "outofmemoryerror", "memoryerror", "cudnn_status_alloc_failed")
MAX_DELAY_S = 3600.0


@dataclass
class AttemptResult:
    """How an attempt's process ended: the exit status (None if the launcher lost it) and a reason."""

    rc: Optional[int]
    error: Optional[str] = None


def error_line(text: str) -> str:
    """The most telling line of a failed job's log: ``error: ...``, an exception, or the last line."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            idx = lines.index(ln)
            return "\n".join(lines[idx: idx + 3])[:800]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b:?", ln):
            return ln[:800]
    return lines[-1][:800] if lines else "no output"


def classify(rc: Optional[int], text: str, *, timed_out: bool = False, stopping: bool = False,
             launcher_error: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """``(outcome, error)`` of a finished attempt from its exit status and log text."""
    finished = DONE_MARK in text
    if rc == 0 and finished:
        return "ok", None
    if stopping:
        return "interrupted", None
    if timed_out:
        return "timeout", "ran past its timeout; " + error_line(text)
    if launcher_error and rc is None:
        return "crash", launcher_error
    low = text.lower()
    if any(p in low for p in OOM_PATTERNS):
        return "oom", error_line(text)
    if rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "oom", "killed by SIGKILL (most likely the system's out-of-memory killer)"
    if "non-finite loss" in text:
        return "nan", error_line(text)
    if rc == 2:
        return "config", error_line(text)
    if rc is not None and rc < 0:
        return "crash", f"killed by {signal.Signals(-rc).name}; " + error_line(text)
    if rc == 0:
        return "crash", "exited before finishing (was it terminated?)"
    return "crash", error_line(text)


def retry_delay(base: float, failures: int) -> float:
    """Seconds to wait before the next attempt after ``failures`` failures."""
    return min(base * 2 ** max(failures - 1, 0), MAX_DELAY_S)


def oom_overrides(config_file: str, keys: Sequence[str], count: int) -> List[str]:
    """``key=value`` overrides halving each of ``keys`` ``count`` times (at least 1).

    ``data.batch_size`` stays a multiple of ``data.n_view`` (multi-view priors); keys the
    recipe does not have are skipped; lists (per-resolution batch sizes) are halved per item.
    """
    if count <= 0 or not keys:
        return []
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_file)
    n_view = OmegaConf.select(cfg, "data.n_view", default=1, throw_on_resolution_failure=False) or 1
    out = []
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is None:
            continue
        unit = int(n_view) if key == "data.batch_size" else 1

        def halve(v: Any) -> Any:
            if not isinstance(v, int) or isinstance(v, bool):
                return v
            return max(unit, (v // 2 ** count) // unit * unit)

        if OmegaConf.is_list(value):
            items = OmegaConf.to_container(value)
            new = [halve(v) for v in items]
            if new != items:
                out.append(f"{key}=[{','.join(str(v) for v in new)}]")
        else:
            new = halve(value)
            if new != value:
                out.append(f"{key}={new}")
    return out


def checkpoint_step(path: str) -> Optional[int]:
    """The global step stored in a Lightning checkpoint (None if unreadable)."""
    try:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt.get("global_step"))
    except Exception:
        return None


def with_resume(cmd: Sequence[str], ckpt: str) -> List[str]:
    """The attempt's command, resuming from ``ckpt`` if it exists when the attempt starts."""
    return list(cmd) + ([f"resume={ckpt}"] if os.path.isfile(ckpt) else [])
