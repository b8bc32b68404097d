"""A run's outcome as data: ``<trial>/status.json``.

The command line and the training callbacks keep this file up to date; the batch runner, the
gallery and scripts read it instead of parsing printed text. It is rewritten atomically, so a
reader sees a whole file at any moment. Fields:

* ``version``, ``run_id`` (``$THREESTUDIO_LIKE_RUN_ID`` when a supervisor sets it, else random),
  ``mode`` (train | validate | test | export | sample), ``pid``, ``host``;
* ``state``: ``running`` while the command works, then ``finished``, ``failed`` or
  ``interrupted``; ``phase``: setup | train | validate | test | export | sample;
* ``step`` / ``max_steps`` (training), ``progress`` ``{done, total}`` of the current phase,
  ``loss`` (the last logged training loss);
* ``started``, ``updated``, ``ended`` (seconds since the epoch);
* ``error``: ``null`` or ``{type, category, message, exit_code, repeats, phase}`` (see
  :mod:`.errors`); the message is what the command printed after ``error:``; ``repeats``: the
  same command would fail the same way; ``phase``: where it failed;
  ``exit_code`` once the command has ended;
* ``outputs``: files the run wrote, relative to the trial folder (``checkpoint``, ``video``,
  ``meshes`` by format, ``validation`` images, ``samples``, ``preview``: the 3D preview page);
* ``notes``: what the user should know although the run succeeded (e.g. the isosurface level
  was chosen automatically because the configured one was never crossed);
* ``export``: the last mesh export's report (isosurface level, faces and components before and
  after clean-up, whether textured, files per format, seconds per phase).

A supervisor that needs the status of a run that may fail before its trial folder is known (a
config that does not load) sets ``$THREESTUDIO_LIKE_STATUS_FILE``; the command line writes there
too.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Union

from threestudio_like.errors import ThreestudioLikeError, category_of, exit_code_of, will_repeat
from threestudio_like.utils.files import atomic_write_text

STATUS_FILE = "status.json"
STATUS_VERSION = 1
ENV_RUN_ID = "THREESTUDIO_LIKE_RUN_ID"
ENV_STATUS_FILE = "THREESTUDIO_LIKE_STATUS_FILE"
FINAL_STATES = ("finished", "failed", "interrupted")


def describe(exc: BaseException) -> str:
    """What a failure says: the message of the product's errors, ``Type: message`` otherwise."""
    text = str(exc).strip()
    if isinstance(exc, ThreestudioLikeError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunStatus:
    """The live ``status.json`` of one command; every change is written at once, except
    progress ticks, which are written at most every ``min_interval`` seconds. Outputs recorded
    by an earlier command in the same trial (training, then ``--export``) are kept."""

    def __init__(self, path: Union[str, Path], mode: str, min_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.min_interval = min_interval
        self._last_write = 0.0
        self._warned = False
        now = round(time.time(), 3)
        self.data: Dict[str, Any] = {
            "version": STATUS_VERSION,
            "run_id": os.environ.get(ENV_RUN_ID) or uuid.uuid4().hex[:12],
            "mode": mode,
            "state": "running",
            "phase": "setup",
            "step": None,
            "max_steps": None,
            "progress": None,
            "loss": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now,
            "updated": now,
            "ended": None,
            "error": None,
            "exit_code": None,
            "outputs": {},
            "notes": [],
        }

        previous = read_status(self.path)  # a resumed or re-exported trial keeps its outputs
        if previous and isinstance(previous.get("outputs"), dict):
            self.data["outputs"] = previous["outputs"]

    # ------------------------------------------------------------------ writing
    def write(self) -> None:
        """Write the file now. A failed write (a full disk) never stops the run: it is said once."""
        self.data["updated"] = round(time.time(), 3)
        try:
            atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")
            self._last_write = time.time()
        except OSError as exc:
            if not self._warned:
                self._warned = True
                print(f"warning: could not write {self.path} ({exc.strerror or exc}); the run goes on",
                      file=sys.stderr)

    def set(self, **fields: Any) -> None:
        """Change fields and write."""
        self.data.update(fields)
        self.write()

    def tick(self, **fields: Any) -> None:
        """Change progress fields; written when ``min_interval`` has passed since the last write."""
        self.data.update(fields)
        if time.time() - self._last_write >= self.min_interval:
            self.write()

    def phase(self, name: str, total: Optional[int] = None) -> None:
        """Enter a phase (train, test, export ...) with ``total`` work items if known."""
        self.set(phase=name, progress={"done": 0, "total": total} if total is not None else None)

    def add_output(self, kind: str, path: Union[str, Path], key: Optional[str] = None) -> None:
        """Record an output file (``key``: e.g. the mesh format within ``kind``)."""
        rel = self.relative(path)
        outputs = self.data["outputs"]
        if key is None:
            outputs[kind] = rel
        else:
            outputs.setdefault(kind, {})[key] = rel
        self.write()

    def add_note(self, text: str) -> None:
        """Record something the user should know about an otherwise successful run."""
        self.data.setdefault("notes", []).append(str(text))
        self.write()

    def record_export(self, report: Dict[str, Any]) -> None:
        """Record a mesh export's report (its file paths made relative to the trial folder) and
        its notes."""
        report = dict(report)
        files = report.get("files") or {}
        report["files"] = {fmt: [self.relative(p) for p in paths] for fmt, paths in files.items()}
        self.data["export"] = report
        self.data.setdefault("notes", []).extend(report.get("notes") or [])
        self.write()

    def relative(self, path: Union[str, Path]) -> str:
        """``path`` relative to the trial folder when inside it, else as given."""
        try:
            return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.path.parent))).as_posix()
        except ValueError:  # another drive
            return str(path)

    # ------------------------------------------------------------------ endings
    def finish(self) -> None:
        """The command did all it was asked to."""
        self.set(state="finished", ended=round(time.time(), 3), exit_code=0, error=None)

    def fail(self, exc: BaseException, message: Optional[str] = None) -> int:
        """Record why the command stopped (``message``: as the command words it, by default
        :func:`describe`); returns its exit status."""
        code = exit_code_of(exc)
        category = category_of(exc)
        self.set(
            state="interrupted" if category == "interrupted" else "failed",
            ended=round(time.time(), 3),
            exit_code=code,
            error={"type": type(exc).__name__, "category": category, "message": message or describe(exc),
                   "exit_code": code, "repeats": will_repeat(exc), "phase": self.data.get("phase")},
        )
        return code


def read_status(path: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The status in ``path`` (a ``status.json`` or a trial folder); None if absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == STATUS_VERSION else None
