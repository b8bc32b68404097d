"""The generic score-distillation system (the demo and text-to-3D recipes use it)."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from threestudio_like import register
from threestudio_like.systems.base import BaseLift3DSystem


@register("sds-system")
class SDSSystem(BaseLift3DSystem):
    """Render random views, ask the guidance for its update, add regularisers."""

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        out = self.renderer(**batch)
        guidance_out = self.guidance(out["comp_rgb"], self.condition, **batch)
        terms = {k: v for k, v in guidance_out.items() if k.startswith("loss_")}
        terms.update(self.regularisers(out))
        for name, value in guidance_out.items():
            if not name.startswith("loss_") and torch.is_tensor(value) and value.numel() == 1:
                self.log(f"train/{name}", value.detach().float(), on_step=True)
        return self.combine_losses(terms)
