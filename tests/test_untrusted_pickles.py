"""Every path that reads a pickle is fed one with a code payload, in torch's zip and legacy
formats: resume (train, validate, test, export), weights, ``--convert`` and the prompt-embedding
cache. No payload ever runs (the batch runner's path is in test_batch.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threestudio_like import find
from threestudio_like.cli import main

from conftest import TINY_OVERRIDES

FORMATS = pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])


class _Payload:
    """Unpickling this creates ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, zipped: bool, **content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**content, "hook": _Payload(marker)}, path, _use_new_zipfile_serialization=zipped)
    return path


def _assert_live(path: Path, marker: Path) -> None:
    """The payload is real: an unsafe load runs it."""
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


@FORMATS
@pytest.mark.parametrize("mode", ["--train", "--validate", "--test", "--export"])
def test_resume_paths(tmp_path, capsys, zipped, mode):
    marker = tmp_path / "payload-ran"
    ckpt = _plant(tmp_path / "trial" / "ckpts" / "last.ckpt", marker, zipped, global_step=3, state_dict={})
    args = ["--config", "demo.yaml", mode, f"resume={ckpt}", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES]
    assert main(args) == 2
    assert "refused" in capsys.readouterr().err
    _assert_live(ckpt, marker)


@FORMATS
def test_weights_path(tmp_path, capsys, zipped):
    marker = tmp_path / "payload-ran"
    weights = _plant(tmp_path / "mvdream.pt", marker, zipped, state_dict={"model.diffusion_model.x": torch.zeros(2)})
    args = ["--config", "mvdream-sd21.yaml", "--sample", "prompt=a corgi", f"exp_root_dir={tmp_path}",
            f"system.guidance.pretrained_model_name_or_path={weights}",
            f"system.prompt_processor.cache_dir={tmp_path}/cache"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    _assert_live(weights, marker)


@FORMATS
def test_convert_path(tmp_path, capsys, zipped):
    marker = tmp_path / "payload-ran"
    weights = _plant(tmp_path / "sd-v2.1-base-4view.pt", marker, zipped,
                     state_dict={"model.diffusion_model.x": torch.zeros(2)})
    assert main(["--convert", "mvdream", str(weights), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    _assert_live(weights, marker)


@FORMATS
def test_prompt_embedding_cache(tmp_path, zipped):
    marker = tmp_path / "payload-ran"
    processor = find("stable-diffusion-prompt-processor")(
        {"prompt": "a corgi", "pretrained_model_name_or_path": "tiny-random", "cache_dir": str(tmp_path / "cache")})
    planted = _plant(processor.cache_path("a corgi"), marker, zipped, prompt="a corgi",
                     embedding=torch.zeros(77, 32))
    copy = tmp_path / "planted-copy.pt"
    copy.write_bytes(planted.read_bytes())
    embeddings = processor()  # the planted cache entry is ignored, recomputed and replaced
    assert embeddings.text_embeddings.shape == (77, 32) and embeddings.text_embeddings.abs().sum() > 0
    _assert_live(copy, marker)
