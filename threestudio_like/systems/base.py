"""Lightning systems: the base lift-3D system that composes every part from config.

``BaseLift3DSystem`` builds geometry, material, background, renderer, guidance, the condition
(prompt or image) processor and the exporter by registry name, wires losses by name
(``loss_X`` times the scheduled ``lambda_X``), saves validation grids, the turntable video and
the mesh, and keeps guidance weights out of checkpoints. Concrete systems implement
``training_step``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

import pytorch_lightning as pl
import torch
import numpy as np
import torch.nn.functional as F
from torch import Tensor

from threestudio_like import find
from threestudio_like.base import Updateable
from threestudio_like.cameras import Cameras
from threestudio_like.config import ConfigError, parse_structured, schedule_value
from threestudio_like.errors import FieldError, NonFiniteLossError, at_least, did_you_mean, in_range
from threestudio_like.run_status import RunStatus
from threestudio_like.utils import saving


TURNTABLE_LOG_FRAMES = 8
"""Frames of the turntable shown in TensorBoard."""

@dataclass
class OptimizerConfig:
    name: str = "Adam"
    """A torch.optim class name (Adam, AdamW, Adamax, SGD, ...)."""
    args: dict = field(default_factory=dict)
    """Keyword arguments of the optimiser (lr, betas, eps, weight_decay)."""
    params: dict = field(default_factory=dict)
    """Per-part settings by attribute path, e.g. {geometry.encoding: {lr: 0.01}}; parts not
    listed are frozen. Empty: every trainable parameter with ``args``."""

    def validate(self) -> None:
        if not isinstance(getattr(torch.optim, str(self.name), None), type):
            names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type) and n[0].isupper()]
            raise FieldError("name", f"must be a torch.optim optimiser, got {self.name!r}."
                                     f"{did_you_mean(str(self.name), names)[:-1] or ' E.g. Adam'}")
        groups = {"args": self.args, **{f"params.{k}": v for k, v in self.params.items()}}
        for where, args in groups.items():
            for key in ("lr", "eps", "weight_decay", "momentum"):
                if key in (args or {}):
                    at_least(f"{where}.{key}", args[key], 0, integer=False)
            if (args or {}).get("lr") == 0:
                raise FieldError(f"{where}.lr", "must be > 0, got 0")
            if "betas" in (args or {}):
                in_range(f"{where}.betas", args["betas"], 0, 1, pair=True)  # (beta1, beta2), beta1 <= beta2


class BaseLift3DSystem(pl.LightningModule, Updateable):
    @dataclass
    class Config:
        geometry_type: str = "hashgrid-implicit-volume"
        geometry: dict = field(default_factory=dict)
        material_type: str = "no-material"
        material: dict = field(default_factory=dict)
        background_type: str = "solid-color-background"
        background: dict = field(default_factory=dict)
        renderer_type: str = "nerf-volume-renderer"
        renderer: dict = field(default_factory=dict)
        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)
        prompt_processor_type: str = ""
        """Condition processor (text prompts); empty for priors that need none."""
        prompt_processor: dict = field(default_factory=dict)
        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)
        loss: dict = field(default_factory=dict)
        """Loss weights ``lambda_<name>`` (numbers or schedules) for every ``loss_<name>``."""
        optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
        test_formats: List[Literal["mp4", "gif"]] = field(default_factory=lambda: ["mp4"])
        """Turntable outputs written by --test: mp4 and/or gif."""
        test_fps: int = 30

        def validate(self) -> None:
            at_least("test_fps", self.test_fps, 1)
            for key, weight in self.loss.items():
                if not key.startswith("lambda_"):
                    raise FieldError(f"loss.{key}", "is not a loss weight: they are named lambda_<loss>, e.g. lambda_sds")
                try:
                    schedule_value(weight, 0, 0)
                except (ConfigError, TypeError):
                    raise FieldError(f"loss.{key}", f"must be a number or [start_step, start, end, end_step], "
                                                    f"got {weight!r}") from None

    cfg: Config

    def __init__(self, cfg: Any = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.save_dir = "save"
        self.status: Optional[RunStatus] = None
        """The run's ``status.json`` (set by the command line); outputs are recorded there."""
        self._resumed_step = 0
        self._guidance = None
        self._condition = None
        self.configure()

    # ---------------------------------------------------------------- composition
    def configure(self) -> None:
        cfg = self.cfg
        self.geometry = find(cfg.geometry_type)(cfg.geometry)
        self.material = find(cfg.material_type)(cfg.material)
        self.background = find(cfg.background_type)(cfg.background)
        self.renderer = find(cfg.renderer_type)(
            cfg.renderer, geometry=self.geometry, material=self.material, background=self.background
        )
        self.exporter = find(cfg.exporter_type)(cfg.exporter) if cfg.exporter_type else None
        # the frozen prior is built on first use, but its config is checked now, before any work
        for part in ("guidance", "prompt_processor"):
            part_type = getattr(cfg, f"{part}_type")
            if part_type:
                parse_structured(find(part_type).Config, getattr(cfg, part), where=f"system.{part}")

    @property
    def guidance(self) -> Any:
        """The frozen prior, built on first use (eval modes never load its weights)."""
        if self._guidance is None and self.cfg.guidance_type:
            self._guidance = find(self.cfg.guidance_type)(self.cfg.guidance)
            self._guidance.do_update_step(self.current_epoch_safe, self.true_global_step)
        return self._guidance

    def prepare_prior(self) -> None:
        """Load the prior's weights and text condition now rather than at the first step (image
        conditions need a batch and come then)."""
        _ = self.guidance, self.condition

    @property
    def condition(self) -> Any:
        """Prompt embeddings (or other condition) given to the guidance; None if unused."""
        if self._condition is None and self.cfg.prompt_processor_type:
            self._condition = find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)()
        return self._condition

    def set_save_dir(self, path: str) -> None:
        self.save_dir = path

    def record_output(self, kind: str, path: str, key: Optional[str] = None, what: str = "") -> None:
        """Announce a written file and record it in the run's status (``kind``: video, meshes ...)."""
        if what:
            print(f"{what} written: {path}")
        if self.status is not None:
            self.status.add_output(kind, path, key)

    def log_images(self, tag: str, images: np.ndarray) -> None:
        """Images ``[N, H, W, 3]`` (uint8) to TensorBoard, when the run logs there (scalars go to
        every logger through ``self.log``)."""
        from pytorch_lightning.loggers import TensorBoardLogger

        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_images(tag, images, self.true_global_step, dataformats="NHWC")

    def save_path(self, name: str) -> str:
        path = os.path.join(self.save_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    # ---------------------------------------------------------------- steps and schedules
    @property
    def true_global_step(self) -> int:
        trainer = self._trainer
        if trainer is not None and trainer.training:
            return trainer.global_step
        return max(self._resumed_step, trainer.global_step if trainer is not None else 0)

    @property
    def current_epoch_safe(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    def C(self, value: Any) -> float:
        return schedule_value(value, self.current_epoch_safe, self.true_global_step)

    def _update_all(self, on_load_weights: bool = False, epoch: Optional[int] = None, step: Optional[int] = None) -> None:
        """Tick the system's parts, the guidance and the training data to the current step (or
        to ``epoch``/``step`` of a checkpoint being loaded)."""
        epoch = self.current_epoch_safe if epoch is None else epoch
        step = self.true_global_step if step is None else step
        self.do_update_step(epoch, step, on_load_weights=on_load_weights)
        if self._guidance is not None:
            self._guidance.do_update_step(epoch, step, on_load_weights=on_load_weights)
        dm = self._trainer.datamodule if self._trainer is not None else None
        dataset = getattr(dm, "train_dataset", None)
        if isinstance(dataset, Updateable):
            dataset.do_update_step(epoch, step, on_load_weights=on_load_weights)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._update_all()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.do_update_step_end(self.current_epoch_safe, self.true_global_step)

    def _updateable_children(self):
        # Guidance and datamodule are ticked explicitly in _update_all.
        for part in (self.geometry, self.material, self.background, self.renderer):
            yield part

    def cameras(self, batch: Dict[str, Any]) -> Cameras:
        """The cameras of a batch (or view dict) as the guidance takes them."""
        return Cameras.from_batch(batch)

    def log_diagnostics(self, guidance_out: Dict[str, Any]) -> Dict[str, Tensor]:
        """Log the guidance's scalar diagnostics (timestep, grad norm ...); return its loss terms."""
        for name, value in guidance_out.items():
            if not name.startswith("loss_") and torch.is_tensor(value) and value.numel() == 1:
                self.log(f"train/{name}", value.detach().float(), on_step=True)
        return {k: v for k, v in guidance_out.items() if k.startswith("loss_")}

    # ---------------------------------------------------------------- losses
    def combine_losses(self, terms: Dict[str, Tensor]) -> Tensor:
        """Sum ``lambda_X * loss_X``; log each term; stop on NaN/Inf."""
        total = None
        for name, value in terms.items():
            key = "lambda_" + name[len("loss_"):]
            if key not in self.cfg.loss:
                raise ConfigError(
                    f"The loss '{name}' has no weight: set system.loss.{key} (0 to disable)."
                )
            weight = self.C(self.cfg.loss[key])
            self.log(f"train/{name}", value.detach(), on_step=True, prog_bar=False)
            if weight == 0:
                continue
            if not torch.isfinite(value).all():
                raise NonFiniteLossError(
                    f"{name} = {value.item()} at step {self.true_global_step}. Training stopped; "
                    f"the last good checkpoint is kept. Lower system.optimizer.args.lr (a resumed "
                    f"run takes the config's optimiser settings) or set system.guidance.grad_clip, "
                    f"or check the inputs, then resume."
                )
            total = value * weight if total is None else total + value * weight
        if total is None:
            raise ConfigError("Every loss weight is 0: nothing to optimise.")
        if not torch.isfinite(total).all():
            raise NonFiniteLossError(
                f"the weighted total loss = {total.item()} at step {self.true_global_step} (check the "
                f"system.loss.lambda_* weights). Training stopped; the last good checkpoint is kept."
            )
        self.log("train/loss", total.detach(), on_step=True, prog_bar=True)
        return total

    def regularisers(self, out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Geometry regularisers, computed only while their weight is non-zero."""
        terms: Dict[str, Tensor] = {}
        loss = self.cfg.loss
        if self.C(loss.get("lambda_sparsity", 0)) > 0:
            terms["loss_sparsity"] = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        if self.C(loss.get("lambda_opaque", 0)) > 0:
            o = out["opacity"].clamp(1e-3, 1 - 1e-3)
            terms["loss_opaque"] = F.binary_cross_entropy(o, o)
        if self.C(loss.get("lambda_orient", 0)) > 0:
            if "normal" not in out:
                raise ConfigError(
                    "lambda_orient > 0 needs normals: set system.geometry.normal_type "
                    "(analytic or finite_difference)."
                )
            w, n, d = out["weights"].detach(), out["normal"], out["t_dirs"]
            terms["loss_orient"] = (
                w * (n * d).sum(-1, keepdim=True).clamp_min(0) ** 2
            ).sum() / (out["opacity"] > 0).sum().clamp_min(1)
        return terms

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        ocfg = self.cfg.optimizer
        try:
            optim_cls = getattr(torch.optim, ocfg.name)
        except AttributeError:
            raise ConfigError(f"system.optimizer.name: torch.optim has no '{ocfg.name}'.") from None
        args = dict(ocfg.args)
        if ocfg.params:
            groups = []
            for path, group_args in ocfg.params.items():
                module = self
                for attr in str(path).split("."):
                    if not hasattr(module, attr):
                        raise ConfigError(f"system.optimizer.params: '{path}' is not a part of the system.")
                    module = getattr(module, attr)
                params = [p for p in module.parameters() if p.requires_grad] if hasattr(module, "parameters") else [module]
                if params:
                    groups.append({"params": params, "name": str(path), **dict(group_args)})
        else:
            groups = [{"params": [p for p in self.parameters() if p.requires_grad]}]
        # what the config asks of each group, re-applied over a resumed optimiser's saved values
        self._configured_groups = [{**args, **{k: v for k, v in g.items() if k not in ("params", "name")}}
                                   for g in groups]
        return optim_cls(groups, **args)

    def on_train_start(self) -> None:
        """A resumed run trains with the optimiser settings of its config: values changed since
        the checkpoint (a lowered learning rate after a NaN) replace the saved ones, and are said."""
        configured = getattr(self, "_configured_groups", None)
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if not configured or not optimizers or self._resumed_step == 0:
            return
        for group, wanted in zip(optimizers[0].param_groups, configured):
            for key, value in wanted.items():
                saved = group.get(key)
                if key in group and _differs(saved, value):
                    group[key] = type(saved)(value) if isinstance(saved, tuple) else value
                    print(f"note: resumed with system.optimizer {key}={value} from the config "
                          f"(the checkpoint had {saved}){' for ' + group['name'] if 'name' in group else ''}.")

    # ---------------------------------------------------------------- checkpoints
    def check_finite_parameters(self) -> None:
        """Raise :class:`NonFiniteLossError` when a trainable parameter holds NaN/Inf (e.g. after
        an infinite learning rate): such a state must never become the last good checkpoint."""
        bad = [name for name, p in self.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"parameters became non-finite at step {self.true_global_step} ({', '.join(bad[:3])}); "
                f"training stopped without saving them; the last good checkpoint is kept. Lower "
                f"system.optimizer.args.lr (or set a grad_clip) and start again from that checkpoint."
            )

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("guidance.") or k.startswith("_guidance.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Set every step-dependent part to the checkpoint's step, the training data included:
        its stream numbers batches from there, so a resumed run draws the uninterrupted run's
        cameras (the data module is attached before Lightning loads the checkpoint)."""
        self._resumed_step = int(checkpoint.get("global_step", 0))
        self._update_all(on_load_weights=True, epoch=int(checkpoint.get("epoch", 0)), step=self._resumed_step)

    # ---------------------------------------------------------------- evaluation
    def render_eval(self, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        return self.renderer(**batch)

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self.render_eval(batch)
        for i in range(out["comp_rgb"].shape[0]):
            index = int(batch["index"][i]) if "index" in batch else batch_idx
            panels = [out["comp_rgb"][i]]
            if "comp_normal" in out:
                panels.append(out["comp_normal"][i])
            panels.append(out["opacity"][i])
            panels.append(saving.normalize_depth(out["depth"][i], out["opacity"][i]))
            path = self.save_path(f"it{self.true_global_step}-{index}.png")
            grid = saving.image_grid(panels)
            saving.save_image(path, grid)
            self.record_output("validation", path)
            self.log_images(f"validation/{index}", grid[None])

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        out = self.render_eval(batch)
        for i in range(out["comp_rgb"].shape[0]):
            index = int(batch["index"][i])
            saving.save_image(self.save_path(f"it{self.true_global_step}-test/{index}.png"), out["comp_rgb"][i])

    def on_test_epoch_end(self) -> None:
        folder = self.save_path(f"it{self.true_global_step}-test")
        frames = saving.frame_paths(folder)
        if frames:
            self.record_output("turntable_frames", folder)
            step = max(len(frames) // TURNTABLE_LOG_FRAMES, 1)
            self.log_images("turntable", np.stack([saving.read_image(f) for f in frames[::step]]))
        for fmt in self.cfg.test_formats:
            path = saving.save_video(f"{folder}.{fmt}", frames, fps=self.cfg.test_fps)
            self.record_output("video" if fmt == "mp4" else fmt, path, what="Turntable")

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def export_material(self) -> Any:
        """The material whose ``export(features)["albedo"]`` colours the mesh (systems that
        render something other than colour override it)."""
        return self.material

    def on_predict_epoch_end(self) -> None:
        if self.exporter is None:
            return
        out_dir = self.save_path(f"it{self.true_global_step}-export/placeholder")
        out_dir = os.path.dirname(out_dir)
        for path in self.exporter(self.geometry, self.export_material(), out_dir):
            self.record_output("meshes", path, key=os.path.splitext(path)[1].lstrip("."), what="Mesh")
        report = getattr(self.exporter, "last_report", None)  # level, clean-up figures, notes
        if report is not None and self.status is not None:
            self.status.record_export(report.as_dict())


def _differs(saved: Any, value: Any) -> bool:
    """Whether a configured optimiser value differs from the one a checkpoint restored."""
    if isinstance(saved, (tuple, list)) or isinstance(value, (tuple, list)):
        return [float(v) for v in saved] != [float(v) for v in value]
    try:
        return float(saved) != float(value)
    except (TypeError, ValueError):
        return saved != value
