"""Shared pieces of the benchmarks: a step timer, one timed ``fit`` and the ``--weights full-random`` helper."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, List, Tuple

import pytorch_lightning as pl
import torch

from threestudio_like import find


class StepTimer(pl.Callback):
    """Wall time of every training step (CUDA-synchronised) and the peak memory."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self._start = 0.0

    def on_train_start(self, trainer, module) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def time_training(cfg: Any, steps: int, warmup: int = 3) -> Tuple[float, float, str]:
    """Train the recipe ``cfg`` for ``steps`` steps (no validation, no checkpoints); returns the
    median step time after ``warmup`` steps (s), the peak GPU memory (GiB; NaN on CPU) and the
    device name."""
    pl.seed_everything(0, verbose=False)
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system)
    timer = StepTimer()
    gpu = torch.cuda.is_available()
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=1, max_steps=steps, callbacks=[timer],
        precision=cfg.trainer.precision if gpu else "32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        inference_mode=False,
    )
    trainer.fit(system, dm)
    steady = timer.times[min(warmup, len(timer.times) - 1):]
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
    device = torch.cuda.get_device_name() if gpu else "CPU"
    return statistics.median(steady), peak, device


def bench_weights(weights: str, root: str, what: str, write_full_random: Callable[[str], str]) -> str:
    """``--weights`` of a prior benchmark: ``full-random`` writes a full-size random copy of the
    prior (``what``) under ``root`` with ``write_full_random(folder)`` and returns its folder;
    anything else is returned as given (an id, a folder, ``tiny-random``)."""
    if weights != "full-random":
        return weights
    print(f"Writing a full-size random {what} ...")
    start = time.perf_counter()
    folder = write_full_random(os.path.join(root, what.lower().replace("+", "p") + "-full-random"))
    print(f"  written in {time.perf_counter() - start:.0f} s")
    return folder
