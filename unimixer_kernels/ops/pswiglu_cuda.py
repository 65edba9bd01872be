"""The ``cuda`` backend of ``pswiglu``: glue for the compiled forward.

``csrc/pswiglu.cu`` defines ``unimixer_C::pswiglu_fwd(u, w_gate, w_up, w_down, b_gate?, b_up?, b_down?,
save) -> (o, g, v)``: the per-token SwiGLU's forward on tensor-core instructions, the hidden activation
kept in registers between the gate/up and the down products. It has two kernels, chosen by
``UNIMIXER_PSWIGLU_CUDA_MMA``: ``sync`` (warp-level ``mma.sync``, the default) and ``wgmma`` (Hopper's
warpgroup instructions, operands read from shared memory; the extension must be built for ``9.0a``, its
default). Its backward is the Triton
backend's (``pswiglu_bwd``, ``triton_kernels/pswiglu.py``), registered here as the compiled op's autograd
formula, so this backend needs Triton as well as the extension. ``recompute=False`` saves ``g`` and ``v``
from the compiled forward, as the Triton forward does.

It takes a call whose ``u``, weights and biases share one 16-bit dtype (bfloat16 or float16; under
``torch.autocast`` the op's ``"lower"`` policy casts them to it), with ``D <= 128`` and ``D`` and ``h``
multiples of 8; anything else raises, naming the argument. ``u`` is read in place where its rows are
16-byte vectors (unit stride along ``D``, the other strides multiples of 8 elements), else copied once.

At ``paper-small`` it is slower than the Triton forward (0.101 against 0.053 ms on an H100, bench/results
run267; latency-bound, bench/NOTES.md), so it runs only when asked for by name, in no ``"auto"`` list.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import _cuda_ext
from ._optional import placeholder
from .pswiglu import PSWIGLU, _pswiglu_backward, _pswiglu_setup

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MAX_D = 128  # kMaxD in csrc/pswiglu.cu: a warp's output rows are held in registers
_NAMES = ("pswiglu_fwd",)


def pswiglu_fwd_fake(u, w_gate, w_up, w_down, b_gate, b_up, b_down, save):
    bs, t, _ = u.shape
    h = w_gate.shape[-1]
    if save:
        return u.new_empty(u.shape), u.new_empty((t, bs, h)), u.new_empty((t, bs, h))
    return u.new_empty(u.shape), placeholder(u), placeholder(u)


@functools.cache
def _register_python_parts() -> None:
    torch.library.register_fake("unimixer_C::pswiglu_fwd", pswiglu_fwd_fake)
    torch.library.register_autograd("unimixer_C::pswiglu_fwd", _pswiglu_backward,
                                    setup_context=_pswiglu_setup)


def cuda_ops():
    """``torch.ops.unimixer_C`` with the library loaded and its fakes and autograd registered."""
    return _cuda_ext.ops_with(_register_python_parts)


_cuda_ext.on_load(_register_python_parts, *_NAMES)


# --- the backend -------------------------------------------------------------------------------


def refusal(u: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, b_gate: Tensor | None,
            b_up: Tensor | None, b_down: Tensor | None) -> Exception | None:
    """Why the compiled forward cannot take this call (arguments already checked by ``pswiglu``), as the
    error to raise, or ``None``."""
    if u.dtype not in SUPPORTED_DTYPES:
        return TypeError(f"u: the cuda backend computes in bfloat16 or float16, got {u.dtype}; pass "
                         "16-bit inputs (or run under torch.autocast), or use backend='triton'")
    for name, x in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down), ("b_gate", b_gate),
                    ("b_up", b_up), ("b_down", b_down)):
        if x is not None and x.dtype != u.dtype:
            return TypeError(f"{name}: the cuda backend computes in u's dtype ({u.dtype}), got {x.dtype}; "
                             "cast it (or run under torch.autocast), or use backend='triton'")
    d, h = u.shape[-1], w_gate.shape[-1]
    if d > MAX_D or d % 8:
        return ValueError(f"u: the cuda backend needs D <= {MAX_D} and a multiple of 8, got D={d}; "
                          "use backend='triton'")
    if h % 8:
        return ValueError(f"w_gate: the cuda backend needs h a multiple of 8, got h={h}; "
                          "use backend='triton'")
    if u.shape[1] > 65535:
        return ValueError(f"u: the cuda backend takes at most 65535 tokens, got T={u.shape[1]}; "
                          "use backend='triton'")
    return None


def _auto_accepts(u, w_gate, w_up, w_down, b_gate, b_up, b_down, recompute: bool = True) -> bool:
    """A list such as ``cuda/triton`` (a per-op spec) runs a call here wherever the kernel takes it."""
    return refusal(u, w_gate, w_up, w_down, b_gate, b_up, b_down) is None


@PSWIGLU.register("cuda", auto_accepts=_auto_accepts)
def _pswiglu_cuda(u, w_gate, w_up, w_down, b_gate, b_up, b_down, recompute: bool = True) -> Tensor:
    error = refusal(u, w_gate, w_up, w_down, b_gate, b_up, b_down)
    if error is not None:
        raise error
    return cuda_ops().pswiglu_fwd(u, w_gate, w_up, w_down, b_gate, b_up, b_down, not recompute)[0]
