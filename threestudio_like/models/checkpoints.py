"""Reading checkpoint files in one safe way: model weights and training checkpoints.

* :func:`load_state_dict_file`: the tensors of a weights file (safetensors, or a torch pickle
  read with ``weights_only=True`` and, for foreign Lightning training checkpoints, with the
  tensor-only reader of :mod:`.safe_pickle`).
* :func:`read_training_checkpoint`: a training checkpoint of this product (``resume=``, the batch
  runner, ``--test/--export/--validate``), read with ``torch.load(weights_only=True)`` and the
  short allow-list :func:`lightning_safe_globals` of harmless globals Lightning may store. A file
  that is missing, truncated, not a checkpoint, or holds anything else gives one
  :class:`~threestudio_like.errors.CheckpointError` naming the file, the problem and what to do.
* :func:`check_checkpoint_fits`: the checkpoint's tensors against the configured system (names
  and shapes), before Lightning loads it: another config or geometry size is one such error.

No path runs code from a file: a pickle's payload (``os.system`` ...) is refused, never called.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import pickle
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from threestudio_like.errors import CheckpointError, UnsafeCheckpointError
from threestudio_like.models.safe_pickle import TENSOR_ONLY_PICKLE


def _torch_load(path: str, **kwargs):
    """``torch.load`` memory-mapped when the format allows (zip format), else read whole."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, **kwargs)
    except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", **kwargs)


def _tensors_of(obj, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__}).")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _refusal_reason(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that names the cause."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # the cause may follow on the next lines
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        reason = " ".join(reason.split(". Please use")[0].split()).rstrip(".")
        if reason:
            return reason
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors or a torch pickle), read without running code.

    A ``{"state_dict": ...}`` wrapper (Lightning/ldm training checkpoints) is unwrapped and only
    tensor values are returned. Pickles are read with ``weights_only=True``; one that holds other
    objects (a Lightning training checkpoint's callbacks, optimizer state, hyper-parameters,
    numpy scalars ...) is read again with :data:`TENSOR_ONLY_PICKLE`, which rebuilds its tensors
    and replaces every other object by an inert :class:`UnloadedObject`. Pickles are
    memory-mapped when their format allows, so reading one part (or skipping the optimizer
    state) is cheap. :class:`UnsafeCheckpointError`: a pickle that cannot be read that way.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return _tensors_of(_torch_load(str(path), weights_only=True), path)
    except pickle.UnpicklingError as exc:
        refusal = _refusal_reason(exc)
    try:
        obj = _torch_load(str(path), weights_only=False, pickle_module=TENSOR_ONLY_PICKLE)
        tensors = _tensors_of(obj, path)
        if not tensors:
            raise ValueError("no tensors found where the state dict should be")
    except Exception as exc:  # refused opcodes, placeholders where tensors were expected ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnsafeCheckpointError(
            f"{path} holds Python objects besides tensors and could not be read safely "
            f"({type(exc).__name__}: {first}; torch.load(weights_only=True): {refusal}). "
            f"If you trust the file, re-save only its tensors: "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pt'), "
            f"or use a .safetensors file."
        ) from None
    del obj
    print(f"note: {path} holds non-tensor objects (Lightning training state); loaded only its tensors "
          f"({len(tensors)}).")
    return tensors


def sub_state_dict(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}



# ------------------------------------------------------------------------------------------
# training checkpoints of this product


def _lightning_globals() -> List[Any]:
    """Harmless globals a Lightning checkpoint may hold beyond tensors and builtins: paths and
    namespaces of saved hyper-parameters, numpy scalars and dtypes of logged metrics."""
    import numpy as np

    found: List[Any] = [pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath,
                        pathlib.PureWindowsPath, argparse.Namespace, np.dtype]
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    found.append(multiarray.scalar)
    found += [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", object())) if name.endswith("DType")]
    return found


@contextlib.contextmanager
def lightning_safe_globals() -> Iterator[None]:
    """Allow :func:`_lightning_globals` in ``torch.load(weights_only=True)`` within the block."""
    with torch.serialization.safe_globals(_lightning_globals()):
        yield


def read_training_checkpoint(path: str) -> Dict[str, Any]:
    """A training checkpoint of this product, read without running code.

    Raises :class:`CheckpointError` for a missing, empty, truncated or foreign file, for a pickle
    that holds objects outside the allow-list (a planted payload), and for a file that is not a
    Lightning training checkpoint (a plain state dict, a weights file).
    """
    what = f"resume={path}"
    fix = "point resume= at a trial's ckpts/last.ckpt written by this program"
    if not os.path.isfile(path):
        raise CheckpointError(f"{what}: no such file; {fix}.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{what}: the file is empty (an interrupted copy?); {fix}.")
    try:
        with lightning_safe_globals():
            ckpt = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _refusal_reason(exc).startswith("Unsupported operand"):  # junk bytes, not a payload
            raise CheckpointError(f"{what}: not a readable checkpoint (not a torch file: "
                                  f"{_refusal_reason(exc)}); {fix}.") from None
        raise CheckpointError(
            f"{what}: refused to load: the file holds Python objects that are not plain data "
            f"({_refusal_reason(exc)}); nothing in it was run. Use a checkpoint written by this program."
        ) from None
    except Exception as exc:  # truncated zips, random bytes, text files ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what}: not a readable checkpoint ({type(exc).__name__}: {first[:200]}); {fix}.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "global_step" not in ckpt:
        got = "a plain state dict" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise CheckpointError(f"{what}: {got}, not a training checkpoint (no state_dict and global_step); {fix}.")
    return ckpt


def check_checkpoint_fits(path: str, model: torch.nn.Module, skip: Tuple[str, ...] = ("guidance.", "_guidance.")) -> None:
    """Refuse, before Lightning loads it, a training checkpoint whose tensors do not fit ``model``
    (written by another config or geometry size): one :class:`CheckpointError` naming the file,
    a few differing tensors with their shapes and the config to use instead."""
    saved = {k: v for k, v in read_training_checkpoint(path)["state_dict"].items() if not k.startswith(skip)}
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    shape = lambda t: tuple(getattr(t, "shape", ()))  # noqa: E731
    problems = [f"{k}: checkpoint {shape(saved[k])}, this config {shape(v)}"
                for k, v in wanted.items() if k in saved and shape(saved[k]) != shape(v)]
    problems += [f"{k}: missing from the checkpoint" for k in wanted if k not in saved]
    problems += [f"{k}: not in this config" for k in saved if k not in wanted]
    if not problems:
        return
    parsed = pathlib.Path(path).resolve().parent.parent / "configs" / "parsed.yaml"
    config = f"--config {parsed}" if parsed.is_file() else "the config of the run that wrote it"
    raise CheckpointError(
        f"resume={path}: the checkpoint was written by another config or geometry size; "
        f"{len(problems)} tensor(s) do not fit, e.g. {'; '.join(problems[:3])}. "
        f"Use the parsed.yaml of the run that wrote it ({config}) and no overrides that change the model."
    )


def checkpoint_step(path: str) -> Optional[int]:
    """The global step of a training checkpoint; None when it cannot be read safely."""
    try:
        return int(read_training_checkpoint(path)["global_step"])
    except (CheckpointError, TypeError, ValueError):
        return None
