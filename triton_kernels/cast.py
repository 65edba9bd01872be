"""A dtype conversion in one elementwise pass: the backward of the Triton backend's autocast cast
(``ops/lowering.py``), which widens a 16-bit weight gradient to its fp32 weight's dtype.

On the H200 torch's converting copy from bf16 to fp32 takes a path that is not vectorised: 110 µs
for a ``[16, 768, 3072]`` gradient, where this kernel takes 58 µs, about a plain copy's rate
(run125, ``probe_bandwidth.py``). Narrowing casts are left to torch, whose fp32 -> bf16 copy already
runs at that rate (55 µs both).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, new_output

# elements per program and warps (the fastest of five launches on the H200, run125)
CAST_BLOCK, CAST_WARPS = 1024, 4


@triton.jit
def cast_kernel(X, Y, N, BLOCK: tl.constexpr):
    """``Y[i] = X[i]`` converted to ``Y``'s dtype, for ``i < N`` (both contiguous)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    tl.store(Y + offs, tl.load(X + offs, mask=mask).to(Y.dtype.element_ty), mask=mask)


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` converted to ``dtype``, contiguous. A non-contiguous ``x`` is copied once first."""
    x = x.contiguous()
    out = new_output(x.shape, like=x, dtype=dtype)
    n = x.numel()
    if n > 0:
        block = 256 if interpreting() else CAST_BLOCK
        cast_kernel[(triton.cdiv(n, block),)](x, out, n, BLOCK=block, num_warps=CAST_WARPS)
    return out
