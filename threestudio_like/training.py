"""Running one experiment with Lightning: the trainer, its loggers and the backends in use.

* **One device per run** (checked in :mod:`.trainer_args`, with the other ``trainer.*`` values,
  when the config is loaded). A run trains on one GPU (or the CPU). Data-parallel training would
  need every rank to agree on the trial folder, write checkpoints, turntables and meshes once and
  draw different cameras; instead, several GPUs serve a queue of runs, one job per GPU
  (``--batch jobs.yaml --gpus 0,1``), which needs no synchronisation at all.
  :func:`~threestudio_like.trainer_args.check_one_device` refuses anything else when the config
  loads, with that hint.
* **Config values over our defaults.** ``trainer.*`` keys of the config override the defaults
  of :func:`trainer_arguments` (``trainer.logger=false`` turns our loggers off,
  ``trainer.enable_progress_bar=true`` adds Lightning's bar) instead of clashing with them.
* **Logs that survive resuming.** :class:`AppendingCSVLogger` appends every attempt's rows to
  ``logs/csv/metrics.csv`` (with an ``attempt`` column) where Lightning's CSV logger would delete
  the file of the run it resumes.
* **Backends said out loud.** :func:`active_backends` names the hash-grid and ray-marching
  implementations, the precision and the device actually used, and why a slower fallback runs.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List, Optional

import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from threestudio_like.errors import ConfigError

def trainer_arguments(trainer: Dict[str, Any], use_gpu: bool, callbacks: List[Any], loggers: List[Any]) -> Dict[str, Any]:
    """``pl.Trainer`` arguments: our defaults, then the config's ``trainer.*`` values."""
    args = dict(trainer)
    if "callbacks" in args:
        raise ConfigError("trainer.callbacks cannot be set from a config: the run adds its own "
                          "(checkpoints, progress, status).")
    if args.get("logger") is True:  # "a logger, please": ours
        del args["logger"]
    if not use_gpu and "16" in str(args.get("precision", "32")):
        args["precision"] = "32-true"  # half precision is slow or unsupported on CPU
    if "val_check_interval" in args:
        args.setdefault("check_val_every_n_epoch", None)
    defaults = dict(
        accelerator="gpu" if use_gpu else "cpu",
        devices=1,
        logger=loggers or False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        inference_mode=False,
        num_sanity_val_steps=0,
    )
    return {**defaults, **args, "callbacks": callbacks}


# ------------------------------------------------------------------------------------------
# logs


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, appending to an existing ``metrics.csv`` instead of deleting it."""

    def __init__(self, log_dir: str, attempt: int) -> None:
        self.attempt = attempt
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:  # the parent deletes the file here
        pass

    def log_metrics(self, metrics_dict: Dict[str, float], step: Optional[int] = None) -> None:
        super().log_metrics({**metrics_dict, "attempt": self.attempt}, step)


def next_attempt(metrics_csv: str) -> int:
    """1 + the highest ``attempt`` in a metrics file (1 for none; 2 after a file from before
    attempts were numbered)."""
    try:
        with open(metrics_csv, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return 1
    numbers = [int(float(r["attempt"])) for r in rows if r.get("attempt") not in (None, "")]
    return (max(numbers) if numbers else (1 if rows else 0)) + 1


class AppendingCSVLogger(CSVLogger):
    """A CSV logger that keeps the rows of earlier attempts of a resumed run (``attempt`` column)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            attempt = next_attempt(os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE))
            self._experiment = _AppendingWriter(self.log_dir, attempt)
        return self._experiment


def run_loggers(trial: str) -> List[Any]:
    """CSV (appending) and, when installed, TensorBoard loggers under ``<trial>/logs``."""
    loggers: List[Any] = [AppendingCSVLogger(trial, name="logs", version="csv")]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(trial, name="logs", version="tb"))
    except (ImportError, ModuleNotFoundError):
        pass
    return loggers


# ------------------------------------------------------------------------------------------
# backends


def active_backends(system: Any, device: torch.device, precision: Any) -> Dict[str, str]:
    """What computes the run: hash grid, ray marching, precision and device, with the reason
    for a slower fallback where there is one."""
    from threestudio_like.geometry.hashgrid import HashGridEncoding
    from threestudio_like.renderers.occupancy import nerfacc_cuda_available, use_nerfacc_kernels

    out: Dict[str, str] = {"device": str(device), "precision": str(precision)}
    encoding = getattr(getattr(system, "geometry", None), "encoding", None)
    if isinstance(encoding, HashGridEncoding):
        active = encoding.active_backend(device)
        if active == "tcnn":
            out["hash_grid"] = "tiny-cuda-nn"
        elif active == "triton":
            out["hash_grid"] = "triton kernels" + (
                " (backend: triton)" if encoding.backend == "triton" else " (tiny-cuda-nn is not installed)"
            )
        elif device.type != "cuda":
            out["hash_grid"] = "torch (no CUDA)"
        elif encoding.backend == "torch":
            out["hash_grid"] = "torch (backend: torch)"
        else:
            out["hash_grid"] = "torch (neither tiny-cuda-nn nor triton is available: slower; see the README's GPU install)"
    renderer = getattr(system, "renderer", None)
    backend = getattr(getattr(renderer, "cfg", None), "backend", None)
    if backend is not None:
        if use_nerfacc_kernels(device, backend):
            out["ray_marching"] = "nerfacc CUDA kernels"
        elif device.type != "cuda":
            out["ray_marching"] = "torch (no CUDA)"
        else:
            out["ray_marching"] = "torch (backend: torch)" if backend == "torch" else \
                "torch (nerfacc's CUDA kernels did not load: slower)" if not nerfacc_cuda_available(device) else "torch"
    return out
