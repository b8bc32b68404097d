"""How an attempt ended, decided from data: the attempt's ``status.json`` and its exit status.

Every attempt runs with ``$THREESTUDIO_LIKE_RUN_ID`` (unique per attempt) and
``$THREESTUDIO_LIKE_STATUS_FILE`` (``<trial>/status.json``) set, so the command line records its
state, phase, step, error category and outputs there (:mod:`threestudio_like.run_status`). A
status that carries another run id was left by an earlier attempt: this one died before writing
its own, and only the exit status is known. The job's printed output is never read to decide
anything; it is for people.

:func:`classify` maps the two to an outcome (ok, interrupted, timeout, oom, nan, config, repeats,
crash);
the table of the rules and of what each outcome leads to is in :mod:`.runner`'s docstring.

Also here: the retry back-off, the overrides an out-of-memory back-off adds, and the
``resume=`` argument of an attempt (shared by the local and the SLURM launchers).
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from threestudio_like.run_status import read_status

MAX_DELAY_S = 3600.0
INPUT_ERROR_EXIT = 2
"""Exit status of input problems (config, weights, checkpoint): the same command fails the same way."""
SIGKILL_RCS = (-signal.SIGKILL, 128 + signal.SIGKILL)
"""A SIGKILL as a child's return code (Popen) or as a shell's exit status."""


@dataclass
class AttemptResult:
    """How an attempt's process ended: the exit status (None if the launcher lost it) and a reason."""

    rc: Optional[int]
    error: Optional[str] = None


# ------------------------------------------------------------------------------------------
# reading an attempt's status


def attempt_status(path: Union[str, Path], run_id: Optional[str]) -> Optional[Dict[str, Any]]:
    """The status in ``path`` if this attempt (``run_id``) wrote it; None otherwise.

    A status with another run id is an earlier attempt's: the current one never wrote its own.
    """
    status = read_status(path)
    if status is None or not run_id or status.get("run_id") != run_id:
        return None
    return status


def error_text(error: Optional[Dict[str, Any]]) -> Optional[str]:
    """The message of a status ``error`` entry (what the job printed after ``error:``)."""
    if not isinstance(error, dict):
        return None
    return str(error.get("message") or error.get("type") or "").strip() or None


def _exit_text(rc: Optional[int]) -> str:
    if rc is None:
        return "ended with an unknown exit status"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


def _where(status: Dict[str, Any]) -> str:
    """``phase train, step 57/600`` for a status that stopped while running."""
    parts = [f"phase {status.get('phase') or '?'}"]
    if status.get("step") is not None:
        parts.append(f"step {status['step']}" + (f"/{status['max_steps']}" if status.get("max_steps") else ""))
    return ", ".join(parts)


def _failure_text(rc: Optional[int], status: Optional[Dict[str, Any]]) -> str:
    """Why an attempt failed, from its status error or else from its exit status."""
    if status is None:
        if rc is not None and rc < 0:
            return _exit_text(rc)
        return f"{_exit_text(rc)} without a status"
    text = error_text(status.get("error"))
    if text:
        return text
    if status.get("state") == "finished":
        return f"{_exit_text(rc)} after its status said finished"
    return f"{_exit_text(rc)} before finishing ({_where(status)})"


# ------------------------------------------------------------------------------------------
# classification


def classify(rc: Optional[int], status: Optional[Dict[str, Any]], *, timed_out: bool = False,
             stopping: bool = False, launcher_error: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """``(outcome, error)`` of a finished attempt; see the module's table.

    ``status``: the attempt's own ``status.json`` (:func:`attempt_status`), None if it wrote
    none; ``rc``: its exit status (negative: killed by that signal).
    """
    if rc == 0 and status is not None and status.get("state") == "finished":
        return "ok", None
    if stopping:
        return "interrupted", None
    error = (status or {}).get("error")
    error = error if isinstance(error, dict) else {}
    if timed_out:
        why = error_text(error)
        return "timeout", "ran past its timeout" + (f"; {why}" if why else "")
    if launcher_error and rc is None:
        return "crash", launcher_error
    if error.get("category") == "oom":
        return "oom", _failure_text(rc, status)
    if rc in SIGKILL_RCS:
        return "oom", "killed by SIGKILL (most likely the system's out-of-memory killer)"
    if error.get("category") == "nonfinite":
        return "nan", _failure_text(rc, status)
    if error.get("exit_code") == INPUT_ERROR_EXIT:
        return "config", _failure_text(rc, status)
    if error.get("repeats"):
        return "repeats", _failure_text(rc, status)
    return "crash", _failure_text(rc, status)


def failed_phase(status: Optional[Dict[str, Any]]) -> Optional[str]:
    """The phase (train, test, export ...) an attempt failed in, from its own status."""
    error = (status or {}).get("error")
    if isinstance(error, dict) and error.get("phase"):
        return str(error["phase"])
    return (status or {}).get("phase") if (status or {}).get("state") == "failed" else None


def export_only(attempts: Sequence[Dict[str, Any]], max_steps: Optional[int], resumed: Optional[int]) -> bool:
    """Whether a job's training is complete (checkpoint at ``max_steps``) and its last attempt
    failed in the export: then the next attempt exports from the checkpoint instead of running the
    whole command again."""
    last = attempts[-1] if attempts else {}
    return (last.get("failed_phase") == "export" and resumed is not None
            and isinstance(max_steps, int) and resumed >= max_steps)


# ------------------------------------------------------------------------------------------
# back-off


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


def with_resume(cmd: Sequence[str], ckpt: str) -> List[str]:
    """The attempt's command, resuming from ``ckpt`` if it exists when the attempt starts.

    The checkpoint is handed on as it is: the command line reads it safely and refuses a damaged
    or unsafe one with an input error (exit 2), which the runner does not retry.
    """
    return list(cmd) + ([f"resume={ckpt}"] if os.path.isfile(ckpt) else [])
