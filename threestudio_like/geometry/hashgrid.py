"""Multi-resolution hash encoding (Instant-NGP) with tiny-cuda-nn semantics.

Three backends compute the same function from the same parameters:

* ``"torch"``: a vectorised pure-PyTorch implementation (CPU or CUDA, :mod:`.hashgrid_torch`). It
  is twice differentiable (analytic normals with ``create_graph=True`` work).
* ``"triton"``: Triton kernels (CUDA, no compile step of ours; :mod:`.hashgrid_triton`), once
  differentiable: inputs that need a gradient go to the torch backend.
* ``"tcnn"``: ``tinycudann.Encoding`` (CUDA only), built lazily on first use.

``backend="auto"`` on CUDA inputs takes tcnn when ``tinycudann`` imports, else Triton when it
imports (3-D float32 inputs), else torch; on CPU always torch (:func:`resolve_backend`).

tiny-cuda-nn semantics reproduced here (``include/tiny-cuda-nn/encodings/grid.h`` and
``common_device.h``; values computed in float32 like tcnn):

* level ``l``: ``scale = exp2(l * log2(per_level_scale)) * base_resolution - 1``,
  ``resolution = ceil(scale) + 1``;
* a point ``x`` in ``[0,1]^D`` maps to ``pos = x * scale + 0.5``; ``floor(pos)`` is the lower grid
  corner, ``pos - floor(pos)`` the N-linear interpolation weight;
* table entries per level: ``min(next_multiple_of_8(resolution^D), 2^log2_hashmap_size)``;
* a level is indexed densely (row-major, x fastest: ``x + y*res + z*res^2``) when
  ``resolution^D`` fits its table, else by the spatial hash
  ``(x*1) ^ (y*2654435761) ^ (z*805459861)`` (uint32 wrap-around); either index is taken
  ``% table_size``;
* parameters start uniform in ``[-1e-4, 1e-4]``.

Parameter layout (identical for both backends): one flat ``params`` tensor of
``sum(table_size) * n_features_per_level`` floats, level after level, entry-major
(``params[(level_offset + index) * F + feature]``), i.e. exactly tcnn's ``Encoding.params``. A
state dict saved with one backend loads into the other.

Two deliberate deviations from raw tcnn, applied to both backends: inputs are clamped to
``[0,1]`` (tcnn wraps out-of-range coordinates around, which is meaningless), and a progressive
band mask is applied to the output (as threestudio's ``ProgressiveBandHashGrid``).

:func:`get_encoding` builds any encoding of a threestudio/tcnn-style config dict: this hash grid
(plain or progressive) or the spherical harmonics of :mod:`.networks`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from threestudio_like.base import Updateable
from threestudio_like.errors import ConfigError, did_you_mean
from threestudio_like.geometry.config_dicts import (
    check_known_keys,
    config_errors_under,
    key_path,
    plain_dict,
)
from threestudio_like.geometry import hashgrid_triton
from threestudio_like.geometry.hashgrid_torch import (
    LevelConstants,
    encode,
    padded_output,
)
from threestudio_like.geometry.networks import SphericalHarmonicsEncoding

# tcnn's coherent prime hash factors (first one is 1 on purpose: memory coherence along x).
HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)

_BACKENDS = ("auto", "tcnn", "triton", "torch")

_tcnn_module: Any = None
_tcnn_checked = False


def tcnn_available() -> bool:
    """True when ``tinycudann`` can be imported (it needs a CUDA build of torch and a GPU)."""
    global _tcnn_module, _tcnn_checked
    if not _tcnn_checked:
        _tcnn_checked = True
        try:
            import tinycudann  # type: ignore

            _tcnn_module = tinycudann
        except Exception:  # ImportError, or EnvironmentError raised on machines without CUDA
            _tcnn_module = None
    return _tcnn_module is not None


def resolve_backend(
    requested: str, device_type: str, tcnn_ok: Callable[[], bool], triton_fits: bool
) -> str:
    """``tcnn`` | ``triton`` | ``torch`` for a ``backend`` setting and the inputs' device type.

    ``tcnn_ok`` is asked only for CUDA inputs; ``triton_fits``: the inputs suit the Triton kernels
    (3-D, float32). An explicit backend that cannot run raises with the way out.
    """
    cuda = device_type == "cuda"
    if requested == "torch":
        return "torch"
    if requested == "tcnn":
        if not tcnn_ok():
            raise RuntimeError(
                "HashGridEncoding(backend='tcnn'): tinycudann cannot be imported. Install "
                "tiny-cuda-nn's torch bindings on a CUDA machine, or use backend='auto' / 'torch'."
            )
        if not cuda:
            raise RuntimeError(
                "HashGridEncoding(backend='tcnn') needs CUDA inputs; use backend='auto' on CPU."
            )
        return "tcnn"
    triton_ok = cuda and hashgrid_triton.triton_available()  # imports triton only for CUDA inputs
    if requested == "triton":
        if not (cuda and triton_ok and triton_fits):
            raise RuntimeError(
                "HashGridEncoding(backend='triton') needs CUDA float32 [N, 3] inputs and an "
                f"importable triton ({hashgrid_triton.triton_unavailable_reason() or 'ok'}); "
                "use backend='auto' or 'torch'."
            )
        return "triton"
    if cuda and tcnn_ok():
        return "tcnn"
    if cuda and triton_ok and triton_fits:
        return "triton"
    return "torch"


def level_layout(
    n_input_dims: int,
    n_levels: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
) -> List[Dict[str, Any]]:
    """Per-level ``scale``, ``resolution``, ``table_size``, ``offset`` (in entries) and ``hashed``.

    Computed in float32 exactly as tiny-cuda-nn's ``GridEncodingTemplated`` constructor does.
    """
    log2_pls = np.log2(np.float32(per_level_scale), dtype=np.float32)
    max_params = np.uint32(0xFFFFFFFF) // np.uint32(2)
    hashmap_entries = 1 << int(log2_hashmap_size)
    levels = []
    offset = 0
    for level in range(n_levels):
        scale = np.float32(
            np.exp2(np.float32(level) * log2_pls, dtype=np.float32) * np.float32(base_resolution)
            - np.float32(1.0)
        )
        resolution = int(math.ceil(float(scale))) + 1
        dense_entries = resolution**n_input_dims
        if float(np.float32(resolution)) ** n_input_dims > float(max_params):
            params_in_level = int(max_params)
        else:
            params_in_level = dense_entries
        params_in_level = (params_in_level + 7) // 8 * 8  # aligned memory accesses
        table_size = min(params_in_level, hashmap_entries)
        levels.append(
            dict(
                scale=float(scale),
                resolution=resolution,
                table_size=table_size,
                offset=offset,
                hashed=table_size < dense_entries,
            )
        )
        offset += table_size
    return levels


class HashGridEncoding(nn.Module, Updateable):
    """Multi-resolution hash grid: ``[N, D]`` points in ``[0,1]^D`` -> ``[N, n_levels * F]``.

    Progressive band masking (threestudio's ``ProgressiveBandHashGrid``): with ``start_level``
    set, only the first ``current_level`` levels are computed, the rest of the output is zero;
    ``current_level = min(start_level + max(step - start_step, 0) // update_steps, n_levels)``
    follows :meth:`update_step`. Unlike threestudio (whose mask is all zeros until the first
    ``update_step``), the first ``start_level`` levels are on from construction.
    """

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        backend: str = "auto",
        start_level: Optional[int] = None,
        start_step: int = 0,
        update_steps: int = 1,
    ) -> None:
        super().__init__()
        if backend not in _BACKENDS:
            raise ConfigError(
                f"HashGridEncoding backend must be 'auto', 'tcnn', 'triton' or 'torch', got {backend!r}."
                f"{did_you_mean(str(backend), _BACKENDS)}"
            )
        if not 1 <= n_input_dims <= len(HASH_PRIMES):
            raise ValueError(f"n_input_dims must be in 1..{len(HASH_PRIMES)}, got {n_input_dims}.")
        if n_levels < 1 or n_features_per_level < 1:
            raise ConfigError(
                f"n_levels and n_features_per_level must be positive, got {n_levels} and "
                f"{n_features_per_level}."
            )
        if update_steps < 1:
            raise ConfigError(f"update_steps must be >= 1, got {update_steps}.")
        self.n_input_dims = int(n_input_dims)
        self.n_levels = int(n_levels)
        self.n_features_per_level = int(n_features_per_level)
        self.log2_hashmap_size = int(log2_hashmap_size)
        self.base_resolution = int(base_resolution)
        self.per_level_scale = float(per_level_scale)
        self.backend = backend
        self.n_output_dims = self.n_levels * self.n_features_per_level
        self.progressive = start_level is not None
        self.start_level = (
            self.n_levels if start_level is None else min(int(start_level), self.n_levels)
        )
        self.start_step = int(start_step)
        self.update_steps = int(update_steps)
        self.current_level = self.start_level

        self.levels = level_layout(
            self.n_input_dims,
            self.n_levels,
            self.log2_hashmap_size,
            self.base_resolution,
            self.per_level_scale,
        )
        n_entries = self.levels[-1]["offset"] + self.levels[-1]["table_size"]
        if n_entries >= 2**31:
            raise ConfigError(
                f"Hash grid too large ({n_entries} entries; indices are int32): lower n_levels, "
                "log2_hashmap_size or per_level_scale."
            )
        if any(
            lv["hashed"] and lv["table_size"] != 1 << self.log2_hashmap_size for lv in self.levels
        ):
            raise ConfigError(
                "Unsupported hash-grid layout: a hashed level's table is not 2^log2_hashmap_size."
            )
        self.n_params = n_entries * self.n_features_per_level
        self.params = nn.Parameter(torch.empty(self.n_params, dtype=torch.float32))
        self.reset_parameters()

        # Per-level constants as non-persistent buffers so that they follow .to(device).
        D = self.n_input_dims
        mult = torch.zeros(self.n_levels, D, dtype=torch.int64)
        for i, lv in enumerate(self.levels):
            if lv["hashed"]:
                mult[i] = torch.tensor(HASH_PRIMES[:D], dtype=torch.int64)
            else:
                mult[i] = torch.tensor([lv["resolution"] ** d for d in range(D)], dtype=torch.int64)
        # float32 scales kept as their int32 bit patterns: .half()/.double() must not round them.
        scales = torch.tensor([lv["scale"] for lv in self.levels], dtype=torch.float32)
        self.register_buffer("_scale_bits", scales.view(torch.int32), persistent=False)
        self.register_buffer("_multipliers", mult, persistent=False)
        self._tcnn_holder: Dict[str, Any] = {}  # plain dict: the tcnn module is not a child module
        self._triton_tables: Dict[torch.device, Dict[str, torch.Tensor]] = {}  # per device

    # ------------------------------------------------------------------------------------------
    # parameters / schedule

    def reset_parameters(self) -> None:
        """Uniform(-1e-4, 1e-4) like tcnn's grid initialisation."""
        with torch.no_grad():
            self.params.uniform_(-1e-4, 1e-4)

    @property
    def table(self) -> torch.Tensor:
        """The parameters viewed as ``[n_entries, n_features_per_level]``."""
        return self.params.view(-1, self.n_features_per_level)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Advance the progressive band mask (no-op unless ``start_level`` was given)."""
        if not self.progressive:
            return
        self.current_level = min(
            self.start_level + max(global_step - self.start_step, 0) // self.update_steps,
            self.n_levels,
        )

    def extra_repr(self) -> str:
        n_dense = sum(not lv["hashed"] for lv in self.levels)
        return (
            f"n_input_dims={self.n_input_dims}, n_levels={self.n_levels}, F={self.n_features_per_level}, "
            f"log2T={self.log2_hashmap_size}, base={self.base_resolution}, "
            f"per_level_scale={self.per_level_scale:.6g}, dense_levels={n_dense}, params={self.n_params}, "
            f"backend={self.backend}, current_level={self.current_level}"
        )

    # ------------------------------------------------------------------------------------------
    # forward

    def active_backend(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """The backend :meth:`forward` uses for inputs on ``device`` (``tcnn`` | ``triton`` | ``torch``)."""
        device_type = torch.device(device).type
        triton_fits = hashgrid_triton.supports(self.n_input_dims, dtype) and self.params.dtype == dtype
        return resolve_backend(self.backend, device_type, tcnn_available, triton_fits)

    def use_tcnn(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` would run tiny-cuda-nn."""
        return self.active_backend(x.device, x.dtype) == "tcnn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` ``[..., n_input_dims]`` in ``[0,1]`` -> ``[..., n_levels * F]``."""
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(
                f"HashGridEncoding expects [..., {self.n_input_dims}] inputs, got {tuple(x.shape)}."
            )
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n_input_dims).clamp(0.0, 1.0)
        if x.shape[0] == 0:
            dtype = torch.promote_types(x.dtype, self.params.dtype)
            return x.new_zeros(*lead, self.n_output_dims, dtype=dtype)
        backend = self.active_backend(x.device, x.dtype)
        if backend == "tcnn":
            out = self._forward_tcnn(x)
        else:
            # Full precision like tcnn's float32 encoding, also inside a mixed-precision region.
            with torch.autocast(device_type=x.device.type, enabled=False):
                # Triton is once differentiable: a second derivative in x needs the torch graph.
                if backend == "triton" and not (x.requires_grad and torch.is_grad_enabled()):
                    out = self._forward_triton(x)
                else:
                    out = self._forward_torch(x)
        return out.reshape(*lead, self.n_output_dims)

    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        tables = self._triton_tables.get(x.device)
        if tables is None:
            tables = self._triton_tables[x.device] = hashgrid_triton.level_tables(self.levels, x.device)
        F = self.n_features_per_level
        out = None
        if self.current_level > 0:
            out = hashgrid_triton.triton_encode(
                self.params, x, tables, self.current_level, F, self.log2_hashmap_size
            )
        return padded_output(out, x.shape[0], self.n_levels, F, x)

    def level_constants(self) -> LevelConstants:
        """Per-level constants for the kernels of :mod:`.hashgrid_torch` (and the Triton backend)."""
        return LevelConstants(
            scale_bits=self._scale_bits,
            multipliers=self._multipliers,
            offsets=tuple(lv["offset"] for lv in self.levels),
            table_sizes=tuple(lv["table_size"] for lv in self.levels),
            hashed=tuple(lv["hashed"] for lv in self.levels),
            hash_mask=(1 << self.log2_hashmap_size) - 1,
        )

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        N, F = x.shape[0], self.n_features_per_level
        dtype = torch.promote_types(x.dtype, self.params.dtype)
        x = x.to(dtype)
        params = self.params.to(dtype)
        out = None
        if self.current_level > 0:
            out = encode(params, x, self.level_constants(), self.current_level, F)
        return padded_output(out, N, self.n_levels, F, x)

    def _forward_tcnn(self, x: torch.Tensor) -> torch.Tensor:
        enc = self._tcnn_holder.get("module")
        if enc is None or self._tcnn_holder.get("device") != x.device:
            config = {
                "otype": "HashGrid",
                "n_levels": self.n_levels,
                "n_features_per_level": self.n_features_per_level,
                "log2_hashmap_size": self.log2_hashmap_size,
                "base_resolution": self.base_resolution,
                "per_level_scale": self.per_level_scale,
                "interpolation": "Linear",
            }
            with torch.cuda.device(x.device):
                enc = _tcnn_module.Encoding(self.n_input_dims, config, dtype=torch.float32)
            if enc.params.numel() != self.params.numel():
                raise RuntimeError(
                    f"tcnn HashGrid has {enc.params.numel()} parameters, the torch layout "
                    f"{self.params.numel()}; the layouts disagree (tcnn version?)."
                )
            self._tcnn_holder.update(module=enc, device=x.device)
        if enc.params is not self.params:
            # Share our parameter (the single source of truth) with the tcnn module.
            enc.params = self.params
        out = enc(x.float().contiguous()).to(self.params.dtype)
        if self.current_level < self.n_levels:
            mask = torch.zeros(self.n_output_dims, device=out.device, dtype=out.dtype)
            mask[: self.current_level * self.n_features_per_level] = 1.0
            out = out * mask
        return out


# ---------------------------------------------------------------------------------------------
# config dicts (threestudio / tcnn style)

HASHGRID_DEFAULTS = {
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 1.447269237440378,
    "backend": "auto",
}
# Defaults of threestudio's dreamfusion recipe for the progressive variant.
_PROGRESSIVE_KEYS = {"start_level": 8, "start_step": 2000, "update_steps": 500}
_ACCEPTED_CONSTANTS = {"interpolation": "Linear", "type": "Hash"}
_OTYPES = ("HashGrid", "Grid", "ProgressiveBandHashGrid", "SphericalHarmonics")


def get_encoding(n_input_dims: int, config: Mapping[str, Any], where: str = "") -> nn.Module:
    """Build an encoding from a threestudio/tcnn-style dict.

    ``otype``: ``"HashGrid"`` (also ``"Grid"``), ``"ProgressiveBandHashGrid"`` (keys above plus
    ``start_level``, ``start_step``, ``update_steps``; defaults 8 / 2000 / 500) or
    ``"SphericalHarmonics"`` (key ``degree``; see :class:`networks.SphericalHarmonicsEncoding`).
    A bad key or value raises :class:`ConfigError` naming it under ``where`` (the config path of
    ``config``, e.g. ``system.geometry.pos_encoding_config``).
    """
    cfg = plain_dict(config, where)
    otype = cfg.pop("otype", "HashGrid")
    if otype == "SphericalHarmonics":
        check_known_keys(cfg, ("degree",), "SphericalHarmonics encoding", where)
        if n_input_dims != 3:
            raise ValueError("SphericalHarmonics encodes 3-d directions.")
        with config_errors_under(where):
            return SphericalHarmonicsEncoding(degree=cfg.get("degree", 4))
    if otype not in _OTYPES:
        raise ConfigError(
            f"Encoding {key_path(where, 'otype')}={otype!r} is not supported."
            f"{did_you_mean(str(otype), _OTYPES)} Expected 'HashGrid', 'ProgressiveBandHashGrid' or "
            "'SphericalHarmonics'."
        )
    for key, value in _ACCEPTED_CONSTANTS.items():
        if key in cfg:
            if cfg[key] != value:
                raise ConfigError(
                    f"HashGrid encoding supports only {key_path(where, key)}={value!r}, got {cfg[key]!r}."
                )
            cfg.pop(key)
    check_known_keys(cfg, {**HASHGRID_DEFAULTS, **_PROGRESSIVE_KEYS}, "hash-grid encoding", where)
    args = {k: cfg.get(k, v) for k, v in HASHGRID_DEFAULTS.items()}
    if otype == "ProgressiveBandHashGrid" or any(k in cfg for k in _PROGRESSIVE_KEYS):
        # A plain HashGrid with progressive keys honours them too (the user asked for masking).
        args.update({k: cfg.get(k, v) for k, v in _PROGRESSIVE_KEYS.items()})
    with config_errors_under(where):
        return HashGridEncoding(n_input_dims=n_input_dims, **args)
