"""Small field components: MLP heads and the spherical-harmonics direction encoding.

* :class:`VanillaMLP` / :func:`get_mlp`: threestudio's ``VanillaMLP`` (bias-free ``Linear`` layers
  like tcnn's fully fused MLPs, ReLU, optional output activation), always in float32 (autocast is
  disabled inside, as threestudio does).
* :class:`SphericalHarmonicsEncoding`: the real SH basis of tcnn's ``SphericalHarmonics``
  encoding (same constants, signs and ordering), for unit view directions.

The config-dict builder of encodings, ``get_encoding`` (hash grids, SH), lives in
:mod:`threestudio_like.geometry.hashgrid`, which imports the SH encoding from here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from threestudio_like.errors import ConfigError, did_you_mean
from threestudio_like.geometry.config_dicts import (
    check_known_keys,
    config_errors_under,
    key_path,
    plain_dict,
)


def get_activation(name: Optional[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation by name: None/"none", "relu", "sigmoid", "tanh", "softplus", "exp", "trunc_exp"."""
    if name is None or name == "none":
        return lambda x: x
    table = {
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softplus": F.softplus,
        "exp": torch.exp,
        "trunc_exp": trunc_exp,
    }
    if name not in table:
        raise ConfigError(
            f"Unknown activation '{name}'.{did_you_mean(str(name), table)} Valid: none, {', '.join(table)}."
        )
    return table[name]


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)): avoids exploding density gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Written with differentiable ops so that double backward (analytic normals) works.
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """Truncated exponential (torch-ngp / threestudio ``trunc_exp``)."""
    return _TruncExp.apply(x)


class VanillaMLP(nn.Module):
    """``Linear(in, n) -> ReLU -> [Linear(n, n) -> ReLU] * (n_hidden_layers - 1) -> Linear(n, out)``.

    Layers have no bias by default (as tcnn's FullyFusedMLP and threestudio's VanillaMLP).
    ``n_hidden_layers = 0`` gives a single linear layer.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        n_neurons: int = 64,
        n_hidden_layers: int = 1,
        activation: str = "ReLU",
        output_activation: Optional[str] = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if activation.lower() != "relu":
            raise ConfigError(f"VanillaMLP supports activation 'ReLU' only, got {activation!r}.")
        self.dim_in, self.dim_out = int(dim_in), int(dim_out)
        layers: list = []
        width = self.dim_in
        for _ in range(int(n_hidden_layers)):
            layers += [nn.Linear(width, n_neurons, bias=bias), nn.ReLU(inplace=True)]
            width = n_neurons
        layers.append(nn.Linear(width, self.dim_out, bias=bias))
        self.layers = nn.Sequential(*layers)
        self.output_activation_name = output_activation
        self.output_activation = get_activation(output_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim_in] -> [..., dim_out]`` computed in the layers' dtype (float32)."""
        dtype = self.layers[0].weight.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.output_activation(self.layers(x.to(dtype)))


_MLP_KEYS = {"otype", "n_neurons", "n_hidden_layers", "activation", "output_activation", "bias"}
_MLP_OTYPES = ("VanillaMLP", "FullyFusedMLP", "CutlassMLP")


def get_mlp(
    n_input_dims: int, n_output_dims: int, config: Mapping[str, Any], where: str = ""
) -> VanillaMLP:
    """Build an MLP from a threestudio/tcnn-style dict.

    ``otype`` "VanillaMLP" (also "FullyFusedMLP"/"CutlassMLP", which run as the same torch MLP),
    ``n_neurons`` (64), ``n_hidden_layers`` (1), ``activation`` ("ReLU"), ``output_activation``
    ("none"), ``bias`` (False). A bad key or value raises :class:`ConfigError` naming it under
    ``where`` (the config path of ``config``, e.g. ``system.geometry.mlp_network_config``).
    """
    cfg = plain_dict(config, where)
    check_known_keys(cfg, _MLP_KEYS, "MLP config", where)
    otype = cfg.get("otype", "VanillaMLP")
    if otype not in _MLP_OTYPES:
        raise ConfigError(
            f"MLP {key_path(where, 'otype')}={otype!r} is not supported."
            f"{did_you_mean(str(otype), _MLP_OTYPES)} Expected 'VanillaMLP' (or 'FullyFusedMLP' / "
            "'CutlassMLP', which run as the same torch MLP)."
        )
    for key, low in (("n_neurons", 1), ("n_hidden_layers", 0)):
        value = cfg.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"MLP {key_path(where, key)} must be an integer >= {low}, got {value!r}.")
    output_activation = cfg.get("output_activation", None)
    if isinstance(output_activation, str) and output_activation.lower() == "none":
        output_activation = None
    with config_errors_under(where):
        return VanillaMLP(
            n_input_dims,
            n_output_dims,
            n_neurons=int(cfg.get("n_neurons", 64)),
            n_hidden_layers=int(cfg.get("n_hidden_layers", 1)),
            activation=str(cfg.get("activation", "ReLU")),
            output_activation=output_activation,
            bias=bool(cfg.get("bias", False)),
        )


# ---------------------------------------------------------------------------------------------
# spherical harmonics


# Real SH basis functions in tcnn's ordering and signs (bands l = 0..4), as polynomials of a
# unit direction (x, y, z); constants from tcnn's spherical_harmonics.h (Sloan's recurrences).
def _sh_basis(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, degree: int) -> list:
    out = [torch.full_like(x, 0.28209479177387814)]  # 1 / (2 sqrt(pi))
    if degree <= 1:
        return out
    out += [
        -0.48860251190291987 * y,  # -sqrt(3) y / (2 sqrt(pi))
        0.48860251190291987 * z,
        -0.48860251190291987 * x,
    ]
    if degree <= 2:
        return out
    xy, yz, xz = x * y, y * z, x * z
    x2, y2, z2 = x * x, y * y, z * z
    out += [
        1.0925484305920792 * xy,  # sqrt(15) xy / (2 sqrt(pi))
        -1.0925484305920792 * yz,
        0.94617469575755997 * z2 - 0.31539156525251999,  # sqrt(5) (3z^2 - 1) / (4 sqrt(pi))
        -1.0925484305920792 * xz,
        0.54627421529603959 * (x2 - y2),  # sqrt(15) (x^2 - y^2) / (4 sqrt(pi))
    ]
    if degree <= 3:
        return out
    out += [
        0.59004358992664352 * y * (y2 - 3.0 * x2),  # sqrt(70) y (-3x^2 + y^2) / (8 sqrt(pi))
        2.8906114426405538 * xy * z,  # sqrt(105) xyz / (2 sqrt(pi))
        0.45704579946446572 * y * (1.0 - 5.0 * z2),  # sqrt(42) y (1 - 5z^2) / (8 sqrt(pi))
        0.3731763325901154 * z * (5.0 * z2 - 3.0),  # sqrt(7) z (5z^2 - 3) / (4 sqrt(pi))
        0.45704579946446572 * x * (1.0 - 5.0 * z2),
        1.4453057213202769 * z * (x2 - y2),  # sqrt(105) z (x^2 - y^2) / (4 sqrt(pi))
        0.59004358992664352 * x * (3.0 * y2 - x2),  # sqrt(70) x (-x^2 + 3y^2) / (8 sqrt(pi))
    ]
    if degree <= 4:
        return out
    x4, y4, z4 = x2 * x2, y2 * y2, z2 * z2
    out += [
        2.5033429417967046 * xy * (x2 - y2),
        1.7701307697799304 * yz * (y2 - 3.0 * x2),
        0.94617469575756008 * xy * (7.0 * z2 - 1.0),
        0.66904654355728921 * yz * (3.0 - 7.0 * z2),
        -3.1735664074561294 * z2 + 3.7024941420321507 * z4 + 0.31735664074561293,
        0.66904654355728921 * xz * (3.0 - 7.0 * z2),
        0.47308734787878004 * (x2 - y2) * (7.0 * z2 - 1.0),
        1.7701307697799304 * xz * (3.0 * y2 - x2),
        -3.7550144126950569 * x2 * y2 + 0.62583573544917614 * x4 + 0.62583573544917614 * y4,
    ]
    return out


class SphericalHarmonicsEncoding(nn.Module):
    """Real spherical harmonics of a direction, tcnn ``SphericalHarmonics`` layout.

    ``degree`` follows tcnn: the number of bands, giving ``degree**2`` outputs (``degree=3`` -> 9,
    bands l = 0, 1, 2). Supported degrees: 1..5.

    Input convention: **unit directions in [-1, 1]** (``inputs_in_01=False``, the default) —
    *not* tcnn's convention. tcnn expects ``(d + 1) / 2`` in [0, 1] and maps back with
    ``2 v - 1`` internally; pass ``inputs_in_01=True`` to get exactly that behaviour. Directions
    are not renormalised.
    """

    def __init__(self, degree: int = 3, inputs_in_01: bool = False) -> None:
        super().__init__()
        if not 1 <= int(degree) <= 5:
            raise ConfigError(
                f"SphericalHarmonicsEncoding supports degree 1..5 (tcnn: bands), got {degree}."
            )
        self.degree = int(degree)
        self.inputs_in_01 = bool(inputs_in_01)
        self.n_input_dims = 3
        self.n_output_dims = self.degree**2

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` directions -> ``[..., degree**2]`` SH values."""
        if dirs.shape[-1] != 3:
            raise ValueError(
                f"SphericalHarmonicsEncoding expects [..., 3] directions, got {tuple(dirs.shape)}."
            )
        if self.inputs_in_01:
            dirs = dirs * 2.0 - 1.0
        x, y, z = dirs.unbind(-1)
        return torch.stack(_sh_basis(x, y, z, self.degree), dim=-1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, n_output_dims={self.n_output_dims}, inputs_in_01={self.inputs_in_01}"
