"""Atomic checkpoints: a failed save (full disk) keeps the previous checkpoint intact."""
from __future__ import annotations

import errno
import os

import pytest

from threestudio_like.systems.callbacks import AtomicCheckpoint, DiskFullError


class _Trainer:
    def __init__(self, step, fail=None):
        self.global_step = step
        self.fail = fail
        self.training = True

    def save_checkpoint(self, path):
        with open(path, "w") as f:
            f.write(f"step {self.global_step}")
            if self.fail:
                raise OSError(self.fail, os.strerror(self.fail))


def test_periodic_save_and_step_copies(tmp_path):
    cb = AtomicCheckpoint(str(tmp_path), every_n_train_steps=2, keep_step_copies=True)
    for step in range(1, 5):
        cb.on_train_batch_end(_Trainer(step), None, None, None, step)
    assert open(cb.last_path).read() == "step 4"
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"]


def test_full_disk_keeps_previous_checkpoint(tmp_path):
    cb = AtomicCheckpoint(str(tmp_path), every_n_train_steps=2)
    cb.save(_Trainer(2))
    with pytest.raises(DiskFullError, match="resume="):
        cb.save(_Trainer(4, fail=errno.ENOSPC))
    assert open(cb.last_path).read() == "step 2"
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_other_write_errors_propagate_and_clean_up(tmp_path):
    cb = AtomicCheckpoint(str(tmp_path))
    with pytest.raises(PermissionError):
        cb.save(_Trainer(1, fail=errno.EACCES))
    assert os.listdir(tmp_path) == []


def test_interrupt_saves_once(tmp_path):
    cb = AtomicCheckpoint(str(tmp_path), every_n_train_steps=0)
    cb.on_exception(_Trainer(7), None, KeyboardInterrupt())
    assert open(cb.last_path).read() == "step 7"
    cb.on_exception(_Trainer(7), None, RuntimeError("a bug"))  # crashes do not overwrite
    assert open(cb.last_path).read() == "step 7"
