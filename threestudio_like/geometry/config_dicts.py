"""threestudio/tcnn-style config dicts of the geometry builders, checked like the rest of a config.

Encodings and MLP heads are configured by free-form dicts (``pos_encoding_config``,
``mlp_network_config``) that the structured config cannot check key by key. The builders
(:func:`~threestudio_like.geometry.hashgrid.get_encoding`,
:func:`~threestudio_like.geometry.networks.get_mlp`) read them through these helpers, so that a
bad key or value is a :class:`~threestudio_like.errors.ConfigError` naming its full config path
(``where``, e.g. ``system.geometry.pos_encoding_config``) and the closest valid key.

This module sits below both builders so that neither imports the other for it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Collection, Dict, Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from threestudio_like.errors import ConfigError, did_you_mean


def key_path(where: str, key: str) -> str:
    """``where.key``, or ``key`` when ``where`` is empty."""
    return f"{where}.{key}" if where else key


def plain_dict(config: Any, where: str = "") -> Dict[str, Any]:
    """A mutable ``dict`` copy of a mapping or ``DictConfig`` (resolved); ``{}`` for ``None``."""
    if config is None:
        return {}
    if isinstance(config, DictConfig):
        return dict(OmegaConf.to_container(config, resolve=True))  # type: ignore[arg-type]
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"{where or 'The config'} must be a mapping of keys to values, got {type(config).__name__}."
        )
    return dict(config)


def check_known_keys(cfg: Mapping[str, Any], valid: Collection[str], what: str, where: str = "") -> None:
    """Raise :class:`ConfigError` for the first key of ``cfg`` not in ``valid``.

    The message names the key by its path under ``where``, the closest valid key and all of them.
    """
    for key in cfg:
        if key not in valid:
            hint = did_you_mean(str(key), valid, prefix=key_path(where, ""))
            raise ConfigError(
                f"Unknown {what} key '{key_path(where, str(key))}'.{hint} "
                f"Valid keys: {', '.join(sorted(valid))}."
            )


@contextmanager
def config_errors_under(where: str) -> Iterator[None]:
    """Prefix the :class:`ConfigError` raised inside (by a constructor) with the path ``where``."""
    try:
        yield
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"{where}: {exc}") from None
