"""Durable batch state: ``state.json`` in the batch folder, written atomically, and a lock.

The state is the single source of truth for a batch: each job's status (``pending``,
``running``, ``done``, ``failed``), its attempts (start, end, seconds, outcome, error, the step
it resumed from, the overrides a back-off added), its result (final loss, steps, output files)
and its spec fingerprint. Every change is written to a temporary file, flushed and moved over
``state.json`` (``os.replace``), so a crash or a kill at any moment leaves either the old or
the new state, never a torn one. Paths inside are relative to the batch folder.

A second runner on the same batch is refused by an exclusive ``flock`` on ``.lock`` (released
by the kernel even when the runner is killed).
"""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from threestudio_like.errors import BatchLockedError
from threestudio_like.utils.files import atomic_write_text

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
STATE_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")


class BatchLock:
    """Exclusive, non-blocking lock on a batch folder (``with BatchLock(dir): ...``)."""

    def __init__(self, batch_dir: Union[str, Path]) -> None:
        self.path = Path(batch_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`BatchLockedError` naming the holder."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text().strip() or "unknown"
                raise BatchLockedError(
                    f"another runner ({holder}) is working on {self.path.parent}; wait for it or stop it first"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "BatchLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def now() -> float:
    """Wall-clock time in seconds (ms precision), as stored in the state."""
    return round(time.time(), 3)


def new_job_record(job_id: str, index: int) -> Dict[str, Any]:
    """A fresh, pending job entry."""
    return {
        "id": job_id,
        "index": index,
        "status": "pending",
        "spec": {},
        "spec_hash": "",
        "config_file": "",
        "trial_dir": "",
        "log": "",
        "retries": 0,
        "failures": 0,
        "oom_count": 0,
        "not_before": None,
        "error": None,
        "seconds": 0.0,
        "first_started": None,
        "finished": None,
        "attempts": [],
        "result": {},
    }


class BatchState:
    """The jobs of one batch and their progress, persisted in ``<batch>/state.json``."""

    def __init__(self, batch_dir: Union[str, Path], data: Optional[Dict[str, Any]] = None) -> None:
        self.batch_dir = Path(batch_dir)
        self.data: Dict[str, Any] = data or {
            "version": STATE_VERSION,
            "batch": self.batch_dir.name,
            "created": now(),
            "updated": now(),
            "runs": [],
            "order": [],
            "jobs": {},
        }

    @property
    def path(self) -> Path:
        return self.batch_dir / STATE_FILE

    @classmethod
    def load(cls, batch_dir: Union[str, Path]) -> "BatchState":
        """The saved state, or an empty one for a new batch."""
        path = Path(batch_dir) / STATE_FILE
        if not path.is_file():
            return cls(batch_dir)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot read the batch state {path}: {exc}") from None
        if data.get("version") != STATE_VERSION:
            raise RuntimeError(f"{path} has state version {data.get('version')}, expected {STATE_VERSION}")
        return cls(batch_dir, data)

    def save(self) -> None:
        """Write the state atomically."""
        self.data["updated"] = now()
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=False) + "\n")

    # ------------------------------------------------------------------ access
    @property
    def jobs(self) -> Dict[str, Dict[str, Any]]:
        return self.data["jobs"]

    def ordered(self) -> Iterator[Dict[str, Any]]:
        """Jobs in job-file order, then any left from earlier versions of the file."""
        seen = set()
        for job_id in self.data.get("order", []):
            if job_id in self.jobs:
                seen.add(job_id)
                yield self.jobs[job_id]
        for job_id, rec in self.jobs.items():
            if job_id not in seen:
                yield rec

    def with_status(self, *statuses: str) -> List[Dict[str, Any]]:
        """Jobs with one of ``statuses``, in order."""
        return [rec for rec in self.ordered() if rec["status"] in statuses]

    def counts(self) -> Dict[str, int]:
        """Number of jobs per status."""
        out = {s: 0 for s in STATUSES}
        for rec in self.jobs.values():
            out[rec["status"]] = out.get(rec["status"], 0) + 1
        return out
