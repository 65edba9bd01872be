"""Pieces shared by the modules: input checks, LayerNorm with fp32 statistics, counting, and the
modules' switches."""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_on_device_of, check_tokens
from .._registry import _check_backend_name

OVERLAP_SWITCH = "UNIMIXER_OVERLAP"
# the modules' switches (environment), listed with the kernels' by ``python -m unimixer_kernels.info``
SWITCHES = {
    OVERLAP_SWITCH: ("1", "the default of UniMixing's (and the UniMixer blocks') overlap argument: '1' (in "
                          "CUDA training the mixing weights' Sinkhorns and their backward run on two side "
                          "streams, beside each other and the activations' kernels) or '0' (on the caller's "
                          "stream)"),
}


def overlap_default() -> bool:
    """``UNIMIXER_OVERLAP`` as a bool (its default where it is not set)."""
    value = os.environ.get(OVERLAP_SWITCH, SWITCHES[OVERLAP_SWITCH][0])
    if value not in ("0", "1"):
        raise ValueError(f"{OVERLAP_SWITCH}: expected '0' or '1', got {value!r}")
    return value == "1"


def check_backend(backend: object) -> str:
    return _check_backend_name(backend)


def first_parameter(module: nn.Module) -> Tensor | None:
    return next(module.parameters(), None)


def check_module_input(module: nn.Module, x: object, tokens: int, dim: int, name: str = "x") -> Tensor:
    """SPEC §9 for a module input: a floating ``[bs, T, D]`` tensor on the module's device."""
    check_tokens(name, x, tokens, dim)
    check_on_device_of(name, x, first_parameter(module), type(module).__name__)
    return x


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last dim, statistics in fp32 (fp64 for fp64), output in the input dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    return F.layer_norm(x.to(acc), x.shape[-1:], w, b, eps).to(x.dtype)


def uniform_fan_in_(t: Tensor, fan_in: int) -> Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the ``nn.Linear`` default, for stacked weights."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameter elements of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
