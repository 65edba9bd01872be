"""Blocks for the benchmarks.

* ``reference`` / ``compiled`` providers: ``unimixer_kernels.reference.blocks`` functions, with the
  Sinkhorn (full) or Lite weight construction of a training step in front of the UniMixer block.
* kernel providers: the ``uk.nn`` modules built with ``backend=<name>``. A module that is not there,
  or that rejects the preset, raises :class:`Unavailable` with the reason; the row then says
  ``unavailable: <why>`` (no silent fallback to the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unimixer_kernels import reference as R
from unimixer_kernels.reference import blocks as RB


class Unavailable(Exception):
    """A provider cannot run this case here; the message says why."""


def unimixer_mix(x: Tensor, w_local: Tensor, w_global: Tensor, *rest: Tensor):
    """The first block of a stack (both streams start at ``x``) with given mixing weights;
    ``rest`` = ``norm_y, norm_mix, norm_x, w_gate, w_up, w_down``. Returns ``(Xbar', Ybar')``."""
    return RB.unimixer_block(x, x, w_local, w_global, *rest)


def unimixer_block(x: Tensor, theta_local: Tensor, theta_global: Tensor, *rest, tau: float, iters: int):
    """Full block, Sinkhorn of both weights inside the step."""
    w_local = R.sinkhorn(theta_local, tau, iters)
    w_global = R.sinkhorn(theta_global, tau, iters)
    return unimixer_mix(x, w_local, w_global, *rest)


def unimixer_block_lite(x: Tensor, omega: Tensor, basis: Tensor, a_g: Tensor, b_g: Tensor, *rest, tau: float,
                        iters: int):
    """Lite block: ``W_B = SK(omega Z)``, ``W_G = SK(A_G B_G)`` inside the step."""
    w_local, w_global = R.lite_weights(omega, basis, a_g, b_g, tau, iters)
    return unimixer_mix(x, w_local, w_global, *rest)


def rankmixer_block(x: Tensor, *params: Tensor):
    """``params`` = ``ln1_weight, ln1_bias, w1, b1, w2, b2, ln2_weight, ln2_bias``."""
    return RB.rankmixer_block(x, *params)


def _module(cls_name: str, device, *args, **kwargs) -> torch.nn.Module:
    import unimixer_kernels as uk

    cls = getattr(uk.nn, cls_name, None)
    if cls is None:
        raise Unavailable(f"uk.nn.{cls_name} is not there yet")
    try:
        return cls(*args, **kwargs).to(device)
    except Exception as exc:  # a constructor that rejects the preset says why
        raise Unavailable(f"uk.nn.{cls_name}{args}, {kwargs} failed: {type(exc).__name__}: {exc}") from exc


def unimixer_module(preset, backend: str, device, lite: bool) -> torch.nn.Module:
    """``uk.nn.UniMixerBlock`` like the reference: no pSwiGLU biases, K and tau of the preset."""
    p = preset
    extra = dict(lite=True, rank=p["r"], bases=p["nb"]) if lite else {}
    return _module("UniMixerBlock", device, p["T"], p["D"], p["B"], hidden=p["h"], bias=False,
                   backend=backend, tau=p["tau"], iters=p["iters"], **extra)


def rankmixer_module(preset, backend: str, device) -> torch.nn.Module:
    return _module("RankMixerBlock", device, preset["T"], preset["D"], k=preset["ffn_mult"], backend=backend)


def params_of(module: torch.nn.Module) -> tuple[Tensor, ...]:
    return tuple(p for p in module.parameters() if p.requires_grad)
