"""``trainer.*`` of a config: Lightning ``Trainer`` arguments, checked when the config is loaded.

:func:`check_trainer_args` refuses unknown keys (naming the closest), values of the common keys
that Lightning would reject mid-run or misread (``max_steps=-5``, ``precision=8``,
``val_check_interval=0`` ...) and runs over several devices (:func:`check_one_device`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List, Optional

from threestudio_like.errors import ConfigError, unknown_key_error

BATCH_HINT = ("one run trains on one device; to use several GPUs run a queue with one job per GPU: "
              "python launch.py --batch jobs.yaml --gpus 0,1 (see docs/batch.md)")


def _count_devices(devices: Any) -> Optional[int]:
    """How many devices a ``devices`` setting asks for (None: all there are)."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # lists, ListConfig
        return len(devices)
    if isinstance(devices, str):
        if devices.strip() in ("-1", "auto"):
            return None
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    return None if devices == -1 else int(devices)


def check_one_device(trainer: Dict[str, Any], gpu_ids: str = "") -> None:
    """Refuse a run over several devices or nodes (``--gpu 0,1``, ``trainer.devices=2`` ...)."""
    ids = [g for g in str(gpu_ids or "").split(",") if g.strip()]
    if len(ids) > 1:
        raise ConfigError(f"--gpu {gpu_ids}: {BATCH_HINT}.")
    devices = trainer.get("devices", 1)
    try:
        count = _count_devices(devices)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.devices={devices!r}: expected a device count like 1.") from None
    if count is None or count > 1:
        raise ConfigError(f"trainer.devices={devices}: {BATCH_HINT}.")
    if int(trainer.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(f"trainer.num_nodes={trainer['num_nodes']}: {BATCH_HINT}.")


def _precisions() -> List[str]:
    """Every ``precision`` Lightning accepts, as text (read off its ``_PRECISION_INPUT`` type)."""
    import typing

    from pytorch_lightning.trainer.connectors import accelerator_connector

    def values(tp: Any) -> List[Any]:
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Literal:
            return list(args)
        return [v for arg in args for v in values(arg)]

    return list(dict.fromkeys(str(v) for v in values(getattr(accelerator_connector, "_PRECISION_INPUT", None))))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# trainer key -> (test of a good value, what a good value is)
TRAINER_VALUES = {
    "max_steps": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
    "max_epochs": (lambda v: v is None or (_is_int(v) and (v >= 1 or v == -1)), "an integer >= 1 (or -1: no limit)"),
    "min_steps": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0"),
    "val_check_interval": (lambda v: v is None or (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
                           "an integer number of steps >= 1, or a fraction of an epoch in (0, 1]"),
    "check_val_every_n_epoch": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "accelerator": (lambda v: v in ("auto", "cpu", "gpu", "cuda", "mps"), "auto, cpu, gpu, cuda or mps"),
    "num_nodes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (and 1 here)"),
    "log_every_n_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "gradient_clip_val": (lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "num_sanity_val_steps": (lambda v: _is_int(v) and v >= -1, "an integer >= 0 (or -1: all)"),
    **{f"limit_{k}_batches": (lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
                              "a number of batches >= 0, or a fraction in [0, 1]") for k in ("train", "val", "test", "predict")},
    **{k: (lambda v: isinstance(v, bool), "true or false") for k in (
        "enable_progress_bar", "enable_model_summary", "deterministic", "benchmark", "detect_anomaly")},
}


def check_trainer_args(trainer: Dict[str, Any]) -> None:
    """``trainer`` keys must be arguments of Lightning's ``Trainer``; the common ones (steps,
    intervals, precision ...) must have values it can use. Run when the config is loaded."""
    if not trainer:
        return
    import inspect

    import pytorch_lightning as pl

    valid = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key, value in trainer.items():
        if key not in valid:
            raise unknown_key_error(str(key), valid, "trainer")
        test, good = TRAINER_VALUES.get(key, (None, ""))
        if test is not None and not test(value):
            raise ConfigError(f"trainer.{key}={value!r}: expected {good}.")
    if "precision" in trainer and str(trainer["precision"]) not in _precisions():
        raise ConfigError(f"trainer.precision={trainer['precision']!r}: Lightning accepts "
                          f"{', '.join(_precisions())}.")
    check_one_device(trainer)
