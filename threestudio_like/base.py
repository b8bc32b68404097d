"""Base classes: configurable objects/modules with nested ``Config`` dataclasses and schedules.

Every swappable part subclasses :class:`BaseObject` (plain objects such as guidances and
exporters) or :class:`BaseModule` (``nn.Module`` parts such as geometry and renderers). A part
declares ``@dataclass class Config(Parent.Config)``, receives its config as a dict or DictConfig,
and builds itself in :meth:`configure`. Schedules tick through :class:`Updateable`:
``do_update_step`` visits every ``Updateable`` attribute, so a system only has to call it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from threestudio_like.config import parse_structured, schedule_value


class Updateable:
    """Something whose state follows the training step (schedules, progressive resolution)."""

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        for child in self._updateable_children():
            child.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int) -> None:
        for child in self._updateable_children():
            child.do_update_step_end(epoch, global_step)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Override to update schedules; called before every training step."""

    def update_step_end(self, epoch: int, global_step: int) -> None:
        """Override for work after a training step (e.g. occupancy grid refresh)."""

    def _updateable_children(self):
        # Visit attributes and nn.Module children once each, skipping back references.
        seen = {id(self)}
        values = list(vars(self).values())
        if isinstance(self, nn.Module):
            values += list(self._modules.values())
        for value in values:
            if isinstance(value, Updateable) and id(value) not in seen:
                seen.add(id(value))
                yield value


class Configurable(Updateable):
    """A part with a nested ``Config`` dataclass, checked and built from a dict or DictConfig."""

    @dataclass
    class Config:
        pass

    cfg: Config
    config_where: str = ""
    """Config path named in errors when the part is built directly (``system.geometry``)."""

    def parse_config(self, cfg: Optional[Union[dict, Any]]) -> None:
        self.cfg = parse_structured(self.Config, cfg, self.config_where)

    def configure(self, *args: Any, **kwargs: Any) -> None:
        """Build the part from ``self.cfg``."""


class BaseObject(Configurable):
    """A configurable, non-module part (guidance, exporter, prompt processor)."""

    def __init__(self, cfg: Optional[Union[dict, Any]] = None, *args: Any, **kwargs: Any) -> None:
        self.parse_config(cfg)
        self.configure(*args, **kwargs)

    def C(self, value: Any, epoch: int = 0) -> float:
        return schedule_value(value, epoch, getattr(self, "global_step", 0))


class BaseModule(nn.Module, Configurable):
    """A configurable ``nn.Module`` part (geometry, material, background, renderer)."""

    def __init__(self, cfg: Optional[Union[dict, Any]] = None, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.parse_config(cfg)
        # An empty buffer that follows .to(device): lets parts ask "where do I live?".
        self.register_buffer("_device_marker", torch.empty(0), persistent=False)
        self.configure(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self._device_marker.device
