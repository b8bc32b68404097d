"""Reading original training checkpoints safely, and ldm's EMA weights.

Real Zero-1-to-3 / MVDream files are PyTorch-Lightning checkpoints: a ``state_dict`` next to
callbacks, optimizer state, hyper-parameters (``argparse.Namespace``, omegaconf) and numpy
scalars, which ``weights_only=True`` refuses. :func:`load_state_dict_file` then rebuilds only
the tensors and never runs the pickle's code; these tests build such files with ``torch.save``.
"""
from __future__ import annotations

import argparse
import copyreg
import io
import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from threestudio_like.errors import UnsafeCheckpointError
from threestudio_like.models import ldm_convert as LC
from threestudio_like.models.checkpoints import load_state_dict_file
from threestudio_like.models.safe_pickle import TENSOR_ONLY_PICKLE, UnloadedObject


class ModelCheckpoint:  # stands for pytorch_lightning.callbacks.ModelCheckpoint, unknown to the reader
    def __init__(self):
        self.best_model_score = torch.tensor(0.25)
        self.monitor = "val/loss"


def _state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (k, torch.randn(*shape, generator=g))
        for k, shape in (("model.diffusion_model.input_blocks.0.0.weight", (4, 8, 3, 3)),
                         ("model.diffusion_model.input_blocks.0.0.bias", (4,)),
                         ("first_stage_model.encoder.conv_in.weight", (2, 3, 3, 3)),
                         ("cc_projection.weight", (4, 6)))
    )


def _lightning_checkpoint(state_dict):
    optimizer = {"state": {i: {"exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.ones_like(v), "step": torch.tensor(7.0)}
                           for i, v in enumerate(state_dict.values())},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": list(range(len(state_dict)))}]}
    hparams = {"args": argparse.Namespace(lr=1e-4, batch_size=np.int64(192), name="zero123"), "scale": np.float32(0.18215)}
    try:
        from omegaconf import OmegaConf

        hparams["config"] = OmegaConf.create({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion"}})
    except ImportError:  # pragma: no cover
        pass
    return {
        "epoch": 3,
        "global_step": 105000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state_dict,
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "dirpath": "logs/ckpts"},
                      "instance": ModelCheckpoint()},
        "optimizer_states": [optimizer],
        "lr_schedulers": [{"last_epoch": np.int64(3), "dtype": np.dtype("float32"), "table": np.arange(4.0)}],
        "hyper_parameters": hparams,
    }


def test_lightning_checkpoint_loads_exactly_its_tensors(tmp_path, capsys):
    sd = _state_dict()
    path = tmp_path / "105000.ckpt"
    torch.save(_lightning_checkpoint(sd), path)
    with pytest.raises(pickle.UnpicklingError):  # what made this fail before
        torch.load(path, weights_only=True)
    out = load_state_dict_file(str(path))
    assert list(out) == list(sd)
    assert all(type(out[k]) is torch.Tensor and torch.equal(out[k], v) for k, v in sd.items())
    note = capsys.readouterr().out.strip().splitlines()
    assert len(note) == 1 and "105000.ckpt" in note[0] and "loaded only its tensors" in note[0]
    # the legacy (non-zip) format, which cannot be memory-mapped, reads the same
    torch.save(_lightning_checkpoint(sd), tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    legacy = load_state_dict_file(str(tmp_path / "legacy.ckpt"))
    assert list(legacy) == list(sd) and all(torch.equal(legacy[k], v) for k, v in sd.items())


def test_fallback_keeps_memory_mapping(tmp_path, monkeypatch):
    torch.save(_lightning_checkpoint(_state_dict()), tmp_path / "a.ckpt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_state_dict_file(str(tmp_path / "a.ckpt"))
    assert [(c["weights_only"], c.get("mmap")) for c in calls] == [(True, True), (False, True)]
    assert calls[1]["pickle_module"] is TENSOR_ONLY_PICKLE


def test_non_tensor_objects_become_inert_placeholders(tmp_path):
    torch.save(_lightning_checkpoint(_state_dict()), tmp_path / "a.ckpt")
    full = torch.load(tmp_path / "a.ckpt", weights_only=False, pickle_module=TENSOR_ONLY_PICKLE, mmap=True)
    ns = full["hyper_parameters"]["args"]
    assert isinstance(ns, UnloadedObject) and ns.name == "argparse.Namespace" and ns.state["name"] == "zero123"
    assert isinstance(full["hyper_parameters"]["scale"], UnloadedObject)
    (key,) = [k for k in full["callbacks"] if k != "instance"]
    assert isinstance(key, UnloadedObject) and key.name.endswith("ModelCheckpoint")
    assert torch.equal(full["callbacks"]["instance"].state["best_model_score"], torch.tensor(0.25))
    assert full["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4  # plain data stays plain


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _Eval(_Exec):
    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').write('pwned')",))


class _System(_Exec):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [_Exec, _Eval, _System])
def test_malicious_pickle_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    sd = _state_dict()
    # hidden next to the state dict, as a "tensor" of it, and as the whole file
    torch.save({"state_dict": sd, "callbacks": payload(str(marker))}, tmp_path / "a.ckpt")
    out = load_state_dict_file(str(tmp_path / "a.ckpt"))
    assert list(out) == list(sd) and not marker.exists()
    torch.save({**sd, "model.evil": payload(str(marker))}, tmp_path / "b.ckpt")
    assert list(load_state_dict_file(str(tmp_path / "b.ckpt"))) == list(sd) and not marker.exists()
    (tmp_path / "c.ckpt").write_bytes(pickle.dumps(payload(str(marker)), protocol=2))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict_file(str(tmp_path / "c.ckpt"))
    assert "c.ckpt" in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()
    # what an unrestricted reader would have done
    torch.load(tmp_path / "a.ckpt", weights_only=False)
    assert marker.exists()


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _read(data: bytes):
    return TENSOR_ONLY_PICKLE.load(io.BytesIO(data))


def test_hand_made_opcodes_cannot_call_or_mutate(tmp_path):
    rebuild = torch._utils._rebuild_tensor_v2
    defaults = rebuild.__defaults__
    # BUILD on a trusted function or class (would setattr on it) is refused
    for owner in (b"torch._utils\n_rebuild_tensor_v2\n", b"collections\nOrderedDict\n"):
        hostile = b"\x80\x02c" + owner + b"N}" + _unicode("__defaults__") + b")s\x86b."
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            _read(hostile)
    assert rebuild.__defaults__ == defaults
    # NEWOBJ of a function, REDUCE of a non-trusted object, APPEND/SETITEM on a function: refused
    for hostile in (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81.",
                    b"\x80\x02" + _unicode("abc") + b")R.",
                    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nNa.",
                    b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nNNs."):
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            _read(hostile)
    marker = str(tmp_path / "pwned")
    command = _unicode(f"touch {marker}")
    # GLOBAL, STACK_GLOBAL (protocol 4), INST (protocol 0): placeholders that record the call
    for hostile in (b"\x80\x02cos\nsystem\n" + command + b"\x85R.",
                    b"\x80\x04" + _unicode("os") + _unicode("system") + b"\x93" + command + b"\x85R.",
                    b"(S'touch " + marker.encode() + b"'\nios\nsystem\n."):
        obj = _read(hostile)
        assert isinstance(obj, UnloadedObject) and obj.name == "os.system" and marker.endswith(obj.args[0][-5:])
    # getattr chains stay placeholders too
    obj = _read(b"\x80\x02cbuiltins\ngetattr\ncos\n_exit\n" + _unicode("x") + b"\x86R)R.")
    assert isinstance(obj, UnloadedObject) and obj.name == "builtins.getattr"
    # the copyreg extension registry goes through the same table
    code = 0x7FFFFF0
    copyreg.add_extension("os", "system", code)
    try:
        obj = _read(b"\x80\x02\x84" + struct.pack("<i", code) + command + b"\x85R.")
        assert isinstance(obj, UnloadedObject) and obj.name == "os.system"
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not os.path.exists(marker)


def test_plain_tensor_files_are_unchanged(tmp_path, capsys):
    from safetensors.torch import save_file

    sd = _state_dict()
    sd["param"] = torch.nn.Parameter(torch.ones(2))
    torch.save(sd, tmp_path / "plain.pt")
    out = load_state_dict_file(str(tmp_path / "plain.pt"))
    assert list(out) == list(sd) and all(torch.equal(out[k], v) for k, v in sd.items())
    save_file({k: v.detach() for k, v in sd.items()}, str(tmp_path / "plain.safetensors"))
    out = load_state_dict_file(str(tmp_path / "plain.safetensors"))
    assert set(out) == set(sd) and all(torch.equal(out[k], v) for k, v in sd.items())
    assert capsys.readouterr().out == ""  # no fallback note


# ------------------------------------------------------------------------------------------
# ldm EMA weights (LitEma)


def test_ldm_ema_names_follow_litema():
    assert LC.ldm_ema_name("model.diffusion_model.input_blocks.0.0.weight") == "model_ema.diffusion_modelinput_blocks00weight"


def _ldm_with_ema(drop=()):
    g = torch.Generator().manual_seed(1)
    params = {k: torch.randn(*s, generator=g) for k, s in (
        ("model.diffusion_model.input_blocks.0.0.weight", (4, 8, 3, 3)),
        ("model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight", (4, 4)),
        ("model.diffusion_model.out.2.bias", (4,)))}
    ema = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
    sd = dict(params)
    sd["first_stage_model.encoder.conv_in.weight"] = torch.randn(2, 3, 3, 3, generator=g)
    sd["cc_projection.weight"] = torch.randn(4, 6, generator=g)
    sd.update({LC.ldm_ema_name(k): v for k, v in ema.items() if k not in drop})
    sd.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(105000, dtype=torch.int)})
    return sd, params, ema


def test_copy_ldm_ema_replaces_every_unet_parameter():
    sd, params, ema = _ldm_with_ema()
    sd["model.decay"] = torch.tensor(5.0)  # a parameter that happens to be named like LitEma's counter
    notes = []
    out, copied = LC.copy_ldm_ema(sd, report=notes.append)
    assert copied == len(params)
    assert all(torch.equal(out[k], ema[k]) for k in params)
    assert torch.equal(out["model.decay"], torch.tensor(5.0))  # decay/num_updates are never shadows
    assert not any(k.startswith("model_ema.") for k in out)
    assert torch.equal(out["cc_projection.weight"], sd["cc_projection.weight"])
    assert notes == ["note: EMA: 1 of 4 parameters under 'model.' have no EMA weight and keep their raw values: model.decay."]


def test_copy_ldm_ema_reports_missing_and_unused_shadows():
    missing = "model.diffusion_model.out.2.bias"
    sd, params, ema = _ldm_with_ema(drop=(missing,))
    sd["model_ema.stale_layerweight"] = torch.zeros(1)
    notes = []
    out, copied = LC.copy_ldm_ema(sd, report=notes.append)
    assert copied == len(params) - 1 and torch.equal(out[missing], params[missing])
    assert len(notes) == 1 and missing in notes[0] and "model_ema.stale_layerweight" in notes[0]
    with pytest.raises(LC.ConversionError, match="out.2.bias"):
        LC.copy_ldm_ema(sd, strict=True)
    # no EMA at all: the raw weights, said once
    raw = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    notes.clear()
    out, copied = LC.copy_ldm_ema(raw, report=notes.append)
    assert copied == 0 and all(torch.equal(out[k], raw[k]) for k in raw)
    assert len(notes) == 1 and "no EMA weights" in notes[0]
    # shadows must fit their parameters
    sd, _, _ = _ldm_with_ema()
    sd[LC.ldm_ema_name(missing)] = torch.zeros(5)
    with pytest.raises(LC.ConversionError, match="shape"):
        LC.copy_ldm_ema(sd)
