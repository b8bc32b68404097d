"""Scheduled hyper-parameters: a number, or ``[start_step, start_value, end_value, end_step]``."""
from __future__ import annotations

from typing import Any

from omegaconf import ListConfig

from threestudio_like.errors import ConfigError


def schedule_value(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a possibly scheduled hyper-parameter at ``global_step``.

    ``value`` is a number, or ``[start_step, start_value, end_value, end_step]`` (a 3-list means
    ``start_step = 0``). The value is ``start_value`` up to ``start_step``, ``end_value`` from
    ``end_step`` on, and linear in between. Integer steps count global steps, float steps epochs.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple, ListConfig)):
        value = list(value)
        if len(value) == 3:
            value = [0] + value
        if len(value) != 4:
            raise ConfigError(
                f"A schedule must be [start_step, start_value, end_value, end_step], got {value}."
            )
        start_step, start_value, end_value, end_step = value
        current = epoch if isinstance(end_step, float) else global_step
        if end_step <= start_step:
            return end_value if current >= end_step else start_value
        frac = min(max((current - start_step) / (end_step - start_step), 0.0), 1.0)
        return start_value + (end_value - start_value) * frac
    raise ConfigError(f"Expected a number or a schedule list, got {value!r}.")
