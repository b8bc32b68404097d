"""Progress lines for long phases: sampling, turntable, export, benchmarks.

Every long loop reports through :class:`Progress` (or :func:`track` for a plain loop). It prints
one line when the phase starts, then at most every ``every`` seconds (default 10, or
``$THREESTUDIO_LIKE_PROGRESS_EVERY``), and one when it ends::

    turntable 12/48  25%  9s  ETA 27s

The ETA is the mean time per item so far times the items left. When a run's status is active
(:func:`use_status`, set by the command line), each report also updates ``progress`` in
``status.json`` so that the batch runner and scripts see the phase advance without reading text.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
ENV_EVERY = "THREESTUDIO_LIKE_PROGRESS_EVERY"
DEFAULT_EVERY_S = 10.0
_status: Any = None


def default_every() -> float:
    """Seconds between progress lines: ``$THREESTUDIO_LIKE_PROGRESS_EVERY`` or 10."""
    try:
        return max(float(os.environ.get(ENV_EVERY, DEFAULT_EVERY_S)), 0.0)
    except ValueError:
        return DEFAULT_EVERY_S


@contextlib.contextmanager
def use_status(status: Any) -> Iterator[None]:
    """Within the block, progress reports also tick ``status`` (a :class:`RunStatus`)."""
    global _status
    previous, _status = _status, status
    try:
        yield
    finally:
        _status = previous


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Time-throttled progress lines with an ETA for one phase of ``total`` items."""

    def __init__(self, label: str, total: Optional[int], every: Optional[float] = None,
                 stream: Optional[TextIO] = None) -> None:
        self.label = label
        self.total = int(total) if total else None
        self.every = default_every() if every is None else every
        self.stream = stream
        self.done = 0
        self.started = time.time()
        self._last = self.started
        self._closed = False
        self._print(f"{label} ...")
        if _status is not None:
            _status.tick(progress={"done": 0, "total": self.total})

    def eta(self) -> Optional[float]:
        """Seconds left at the mean rate so far; None before the first item or without a total."""
        if not self.total or self.done <= 0:
            return None
        return (time.time() - self.started) / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        """The progress line as it is printed now."""
        elapsed = time.time() - self.started
        parts = [self.label, f"{self.done}/{self.total}" if self.total else str(self.done)]
        if self.total:
            parts.append(f"{100 * self.done / self.total:3.0f}%")
        parts.append(format_duration(elapsed))
        eta = self.eta()
        if eta is not None and self.done < (self.total or 0):
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def update(self, advance: int = 1, done: Optional[int] = None) -> None:
        """Count ``advance`` more items (or set ``done``); print when ``every`` seconds passed."""
        self.done = self.done + advance if done is None else int(done)
        now = time.time()
        if _status is not None:
            _status.tick(progress={"done": self.done, "total": self.total})
        if now - self._last >= self.every:
            self._last = now
            self._print(self.line())

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._print(self.line())

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()


def track(items: Iterable[T], label: str, total: Optional[int] = None, every: Optional[float] = None) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (``total``: ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress = Progress(label, total, every=every)
    for item in items:
        yield item
        progress.update()
    progress.close()
