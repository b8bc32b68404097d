"""Training callbacks: atomic checkpoints (periodic, on Ctrl-C, at the end), per-step seeds,
progress lines and the run's ``status.json``."""
from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any, Callable, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from threestudio_like.errors import DiskFullError
from threestudio_like.run_status import RunStatus
from threestudio_like.utils.progress import Progress, format_duration
from threestudio_like.utils.rng import seed_global_generators


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpoint(Callback):
    """Writes ``ckpts/last.ckpt`` every N steps, on Ctrl-C/SIGTERM and at the end of training.

    Each save goes to a temporary file first and replaces ``last.ckpt`` only when complete, so
    an interrupted or failed save (a full disk) never leaves a broken checkpoint behind.
    A NaN/Inf loss stops training *without* saving: ``last.ckpt`` stays the last good state.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500, keep_step_copies: bool = False) -> None:
        self.dirpath = dirpath
        self.every = max(int(every_n_train_steps), 0)
        self.keep_step_copies = keep_step_copies
        self.last_saved_step: Optional[int] = None

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, "last.ckpt")

    def save(self, trainer: pl.Trainer) -> str:
        module = getattr(trainer, "lightning_module", None)
        if module is not None and hasattr(module, "check_finite_parameters"):
            module.check_finite_parameters()  # never write a NaN state as the last good one
        os.makedirs(self.dirpath, exist_ok=True)
        tmp = self.last_path + ".tmp"
        try:
            trainer.save_checkpoint(tmp)
            _fsync_file(tmp)
            os.replace(tmp, self.last_path)
            _fsync_dir(self.dirpath)  # the rename survives a power loss too
        except OSError as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    exc.errno,
                    f"No space left to save a checkpoint in {self.dirpath}. The previous "
                    f"checkpoint is intact; free some space and resume with "
                    f"resume={self.last_path}",
                ) from None
            raise
        if self.keep_step_copies:
            step_path = os.path.join(self.dirpath, f"step={trainer.global_step}.ckpt")
            try:
                with open(self.last_path, "rb") as src, open(step_path + ".tmp", "wb") as dst:
                    dst.write(src.read())
                os.replace(step_path + ".tmp", step_path)
            finally:
                if os.path.exists(step_path + ".tmp"):  # a failed copy leaves nothing behind
                    os.remove(step_path + ".tmp")
        self.last_saved_step = trainer.global_step
        return self.last_path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self.last_saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.global_step != self.last_saved_step:
            self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        if pl_module is not None and hasattr(pl_module, "check_finite_parameters"):
            try:
                pl_module.check_finite_parameters()
            except Exception:  # a non-finite state is not saved on the way out either
                return
        interrupted = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException"
        if interrupted and trainer.training and trainer.global_step != self.last_saved_step:
            path = self.save(trainer)
            print(f"\nInterrupted at step {trainer.global_step}: saved {path}. "
                  f"Continue with resume={path}", file=sys.stderr)


class StepSeeds(Callback):
    """Re-seeds the global random generators from ``(seed, step)`` before each training step.

    Everything random in a step (ray jitter, diffusion timesteps and noise, material and
    background choices, the occupancy-grid refresh) then depends on the step alone, not on what
    ran before it, so a run resumed at step ``s`` continues exactly as the uninterrupted run did
    (:mod:`threestudio_like.utils.rng`). Callback hooks run before the system's, so the seeds
    are set before the system's own step start (where the occupancy grid is refreshed).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        seed_global_generators(self.seed, trainer.global_step)


class StepProgress(Callback):
    """A progress bar over training *steps* with step/s, ETA and the loss, then progress lines for
    validation, the turntable and the export (:mod:`threestudio_like.utils.progress`).

    On a terminal training is a live rich bar; otherwise (logs, CI) it prints one line every
    ``print_every`` steps. The training ETA adds the turntable that follows, estimated from the
    time validation took per view (the same renderer at the same size).
    """

    def __init__(self, print_every: int = 50) -> None:
        self.print_every = print_every
        self.progress = None
        self.task = None
        self.start_time = 0.0
        self.start_step = 0
        self.phase: Optional[Progress] = None
        self._view_started = 0.0
        self._view_seconds: list = []

    def _loss(self, trainer: pl.Trainer) -> str:
        value = trainer.callback_metrics.get("train/loss")
        return f"{float(value):.4g}" if value is not None else "-"

    def turntable_estimate(self, trainer: pl.Trainer) -> Optional[float]:
        """Seconds the turntable will take: views times the mean seconds per validation view."""
        views = getattr(getattr(trainer.datamodule, "cfg", None), "n_test_views", None) if trainer.datamodule else None
        if not views or not self._view_seconds:
            return None
        return float(views) * sum(self._view_seconds) / len(self._view_seconds)

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.start_time = time.time()
        self.start_step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if sys.stdout.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} step/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, completed=trainer.global_step,
                                               rate="-", loss="-")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        elapsed = max(time.time() - self.start_time, 1e-9)
        rate = (step - self.start_step) / elapsed
        if self.progress is not None:
            self.progress.update(self.task, completed=step, rate=f"{rate:.2f}", loss=self._loss(trainer))
        elif step % self.print_every == 0 or step == trainer.max_steps:
            remaining = (trainer.max_steps - step) / rate if rate > 0 and trainer.max_steps > 0 else float("nan")
            after = self.turntable_estimate(trainer)
            then = f" (then turntable ~{format_duration(after)} and export)" if after is not None else ""
            print(f"step {step}/{trainer.max_steps}  {rate:.2f} step/s  ETA {remaining:.0f}s{then}  "
                  f"loss {self._loss(trainer)}", flush=True)

    # -- evaluation passes: timed per view, reported as progress lines -----------------------
    def _open(self, label: str, totals: Any) -> None:
        self._close()
        self.phase = Progress(label, int(sum(totals)) if totals else None)

    def _close(self) -> None:
        if self.phase is not None:
            self.phase.close()
            self.phase = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.training:
            self._open("validate: view", trainer.num_val_batches)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._view_started = time.time()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._view_seconds = (self._view_seconds + [time.time() - self._view_started])[-16:]
        if self.phase is not None:
            self.phase.update()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.training:
            self._close()

    def on_test_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._open("turntable: frame", trainer.num_test_batches)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.phase is not None:
            self.phase.update()

    def on_test_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._close()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._stop()
        self.phase = None


class TrialRecord(Callback):
    """Writes the trial's ``configs/parsed.yaml`` and appends the command to ``cmd.txt`` once
    training starts, i.e. after a ``resume=`` checkpoint has loaded: a resume that fails (another
    recipe's checkpoint) leaves the trial's own record untouched."""

    def __init__(self, write_config: Callable[[], None], cmd_file: str, command: str) -> None:
        self.write_config = write_config
        self.cmd_file = cmd_file
        self.command = command

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.write_config()
        with open(self.cmd_file, "a") as f:
            f.write(self.command + "\n")


class RunStatusCallback(Callback):
    """Keeps ``status.json`` current: the phase (train, validate, test, export), the training step
    and loss, and the progress of evaluation passes (see :mod:`threestudio_like.run_status`)."""

    def __init__(self, status: RunStatus) -> None:
        self.status = status

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.status.set(phase="train", step=trainer.global_step, max_steps=max_steps, progress=None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        self.status.tick(step=trainer.global_step, loss=float(loss) if loss is not None else None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.status.set(step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # a resume from a checkpoint that already has every step trains nothing (Lightning then
        # calls no train hooks): the status still says where training stands
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.status.set(step=trainer.global_step, max_steps=max_steps)

    def _start(self, phase: str, totals: Any) -> None:
        self.status.phase(phase, int(sum(totals)) if totals else None)

    def _advance(self, batch_idx: int) -> None:
        progress = self.status.data.get("progress") or {}
        self.status.tick(progress={**progress, "done": batch_idx + 1})

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.training:  # periodic validation during training stays in the train phase
            self._start("validate", trainer.num_val_batches)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.training:
            self._advance(batch_idx)

    def on_test_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._start("test", trainer.num_test_batches)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._advance(batch_idx)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._start("export", None)
