"""The generic score-distillation system (the demo and text-to-3D recipes use it)."""
from __future__ import annotations

from typing import Any, Dict

from torch import Tensor

from threestudio_like import register
from threestudio_like.systems.base import BaseLift3DSystem


@register("sds-system")
class SDSSystem(BaseLift3DSystem):
    """Render random views, ask the guidance for its update, add regularisers."""

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        out = self.renderer(**batch)
        guidance = self.guidance
        terms = self.log_diagnostics(guidance(guidance.render_input(out), self.condition, self.cameras(batch)))
        terms.update(self.regularisers(out))
        return self.combine_losses(terms)
