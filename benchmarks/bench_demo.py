"""Demo training speed: steps/s of the CPU demo recipe at each of its training resolutions.

    python benchmarks/bench_demo.py [--steps 40]

Builds the demo's data module and system exactly as ``launch.py`` does and times ``--steps``
optimisation steps after a few warm-up steps (no validation, no checkpoints).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from threestudio_like import find
from threestudio_like.config import load_config


class _Timer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = None
        self.steps = 0

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
            self.steps = 0
        elif self.start is not None:
            self.steps += 1


def measure(res: int, steps: int, warmup: int = 5) -> float:
    cfg = load_config(
        "demo.yaml",
        [f"data.height={res}", f"data.width={res}", "data.resolution_milestones=[]",
         f"trainer.max_steps={steps + warmup}", f"exp_root_dir={os.path.join(tempfile.gettempdir(), 'bench-demo')}"],
    )
    pl.seed_everything(0, verbose=False)
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system)
    timer = _Timer(warmup)
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1,
        max_steps=steps + warmup, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, inference_mode=False, callbacks=[timer],
    )
    trainer.fit(system, dm)
    elapsed = time.perf_counter() - timer.start
    return timer.steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"demo recipe on {device}")
    for res in (32, 64):
        rate = measure(res, args.steps)
        print(f"  {res}x{res} renders, batch 2: {rate:.2f} step/s ({1000 / rate:.0f} ms/step)")


if __name__ == "__main__":
    main()
