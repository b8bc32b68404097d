"""Random numbers as a function of (seed, training step), so that a resumed run is exact.

A run's randomness is not carried from step to step in a generator's state: every training step
``s`` starts from states derived from ``(seed, s)`` alone. The global generators (torch on
every device, numpy, Python's ``random``) are re-seeded at the start of each step, and the camera
sampler, which Lightning runs a step ahead of the training step (prefetching), draws from its
own generator seeded the same way. Resuming at step ``s`` therefore needs no saved generator
state: it re-derives exactly the states the uninterrupted run had there.

Seeds are mixed with numpy's ``SeedSequence`` (a hash designed for this), so neighbouring steps
and streams get unrelated states rather than ``seed + step`` offsets of one another.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_STREAMS = {"global": 0, "cameras": 1}
"""Independent random streams of a step: the global generators and the camera sampler."""


def step_seed(seed: int, step: int, stream: str = "global") -> int:
    """A 63-bit seed for ``stream`` at training ``step`` of a run seeded ``seed``."""
    entropy = [int(seed) % 2**63, int(step) % 2**63, _STREAMS[stream]]
    word = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(word) >> 1


def seed_global_generators(seed: int, step: int) -> None:
    """Re-seed torch (CPU and every CUDA device), numpy and ``random`` for ``step`` of the run."""
    value = step_seed(seed, step, "global")
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` of its own for ``stream`` at ``step`` (the global ones untouched)."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))
