"""Weights resolution: tiny-random, folders, checkpoint files, the Hugging Face cache offline,
the one missing-weights message, safe checkpoint loading and re-randomisation."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import threestudio_like.guidance.mvdream  # noqa: F401  (registers MVDream/MVDream as one checkpoint file)
from threestudio_like.errors import MissingWeightsError, UnsafeCheckpointError
from threestudio_like.models.checkpoints import load_state_dict_file
from threestudio_like.models.hub import resolve_weights
from threestudio_like.models.tiny import rerandomize_parameters


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _fake_cached_file(cache, repo: str, filename: str, payload: bytes) -> str:
    """Lay out one file the way huggingface_hub caches it (refs/main -> snapshot)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    (snap / os.path.dirname(filename)).mkdir(parents=True, exist_ok=True)
    (snap / filename).write_bytes(payload)
    return str(snap / filename)


def test_tiny_random_folder_and_file(tmp_path):
    assert resolve_weights("tiny-random").kind == "tiny-random"
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    src = resolve_weights(str(folder), subfolders=("unet",))
    assert (src.kind, src.path) == ("diffusers", str(folder))
    ckpt = tmp_path / "w.ckpt"
    torch.save({"a": torch.ones(1)}, ckpt)
    assert resolve_weights(str(ckpt)).kind == "checkpoint"
    with pytest.raises(MissingWeightsError, match="vae/"):
        resolve_weights(str(folder), subfolders=("unet", "vae"))


def test_missing_local_path_names_it(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(str(tmp_path / "nope.pt"), "MVDream")
    assert str(tmp_path / "nope.pt") in str(err.value) and "tiny-random" in str(err.value)


def test_offline_hub_miss_gives_one_clear_message(empty_hf_cache):
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights("MVDream/MVDream", "MVDream", subfolders=("unet", "vae"))
    msg = str(err.value)
    for part in ("MVDream/MVDream", "sd-v2.1-base-4view.pt", str(empty_hf_cache), "HF_HUB_OFFLINE",
                 "hf download MVDream/MVDream sd-v2.1-base-4view.pt", "--convert mvdream", "tiny-random"):
        assert part in msg, part
    with pytest.raises(MissingWeightsError, match="diffusers repo 'someone/some-model'"):
        resolve_weights("someone/some-model", subfolders=("unet",))


def test_offline_hub_hit_resolves_from_the_cache(empty_hf_cache):
    path = _fake_cached_file(empty_hf_cache, "MVDream/MVDream", "sd-v2.1-base-4view.pt", b"x")
    src = resolve_weights("MVDream/MVDream")
    assert src.kind == "checkpoint" and os.path.realpath(src.path) == os.path.realpath(path)
    other = _fake_cached_file(empty_hf_cache, "someone/weights", "sub/model.safetensors", b"y")
    assert os.path.realpath(resolve_weights("someone/weights/sub/model.safetensors").path) == os.path.realpath(other)


def test_checkpoints_load_weights_only(tmp_path):
    from safetensors.torch import save_file

    torch.save({"state_dict": {"w": torch.arange(3.0)}}, tmp_path / "a.ckpt")
    assert torch.equal(load_state_dict_file(str(tmp_path / "a.ckpt"))["w"], torch.arange(3.0))
    save_file({"w": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    assert torch.equal(load_state_dict_file(str(tmp_path / "b.safetensors"))["w"], torch.ones(2))

    import argparse

    # other Python objects: only the tensors are read (tests/test_ckpt_loading.py has the details)
    torch.save({"w": torch.ones(1), "hparams": argparse.Namespace(lr=1.0)}, tmp_path / "extra.pt")
    assert list(load_state_dict_file(str(tmp_path / "extra.pt"))) == ["w"]
    # a pickle that is not a torch checkpoint at all is refused with the file's name
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02cbuiltins\nprint\nX\x02\x00\x00\x00hi\x85R.")
    with pytest.raises(UnsafeCheckpointError, match="junk.pt"):
        load_state_dict_file(str(tmp_path / "junk.pt"))


def test_rerandomize_leaves_no_zero_layer():
    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    for p in net.parameters():
        nn.init.zeros_(p)
    rerandomize_parameters(net, seed=3)
    assert all(p.abs().min() > 0 for p in net.parameters())
    a = [p.clone() for p in net.parameters()]
    rerandomize_parameters(net, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, net.parameters()))
