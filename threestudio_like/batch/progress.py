"""What the runner shows while it works: a live table on a terminal, plain lines otherwise.

A running job's progress is read from its ``status.json`` (:func:`status_progress`): the
training step while it trains, then the phase and its count (``test 12/48``), never from its
printed output. The view asks the runner (anything shaped like :class:`RunnerView`) for the
overview line, the running jobs and each job's progress.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Protocol, TextIO

from threestudio_like.batch.gallery import format_seconds


def status_progress(status: Optional[Dict[str, Any]]) -> str:
    """``57/600`` while training, ``test 12/48`` (or the phase alone) later on, ``-`` unknown."""
    if not status:
        return "-"
    phase = status.get("phase") or "-"
    if phase == "train" and status.get("step") is not None:
        total = status.get("max_steps")
        return f"{status['step']}/{total}" if total else str(status["step"])
    progress = status.get("progress")
    if isinstance(progress, dict) and progress.get("done") is not None:
        total = progress.get("total")
        return f"{phase} {progress['done']}/{total}" if total else f"{phase} {progress['done']}"
    return phase


class RunningJob(Protocol):
    """What the view reads of a running attempt."""

    job_id: str
    attempt_no: int
    started: float


class RunnerView(Protocol):
    """What the view reads of the runner."""

    running: Mapping[str, RunningJob]

    def overview(self) -> str: ...

    def job_step(self, job_id: str) -> str: ...


class ProgressView:
    """Overall progress: a live rich table on a terminal, plain periodic lines otherwise."""

    def __init__(self, runner: RunnerView, stream: TextIO, every: float = 30.0) -> None:
        self.runner = runner
        self.stream = stream
        self.every = every
        self.last_line = 0.0
        self.live = None
        if stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=stream), refresh_per_second=2, transient=False,
                             get_renderable=self._renderable)
            self.live.start()

    def event(self, message: str) -> None:
        """Print a timestamped event line (above the live table on a terminal)."""
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def tick(self, force: bool = False) -> None:
        """Print the overview line when it is due (off a terminal)."""
        if self.live is not None:
            return  # the live view refreshes itself
        if force or time.time() - self.last_line >= self.every:
            self.last_line = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] {self.runner.overview()}", file=self.stream, flush=True)

    def _renderable(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("worker", "job", "attempt", "step", "elapsed"):
            table.add_column(col)
        try:  # this runs in rich's refresh thread while the runner updates ``running``
            running = sorted(list(self.runner.running.items()))
        except RuntimeError:
            running = []
        for slot, run in running:
            table.add_row(slot, run.job_id, str(run.attempt_no), self.runner.job_step(run.job_id),
                          format_seconds(time.time() - run.started))
        return Group(Text(self.runner.overview(), style="bold"), table)

    def close(self) -> None:
        """Stop the live view."""
        if self.live is not None:
            self.live.stop()
            self.live = None
