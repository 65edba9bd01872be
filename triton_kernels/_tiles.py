"""``@triton.jit`` helpers shared by the GEMM-like kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP: tl.constexpr):
    """``(pid_m, pid_n)`` of program ``pid`` over a ``num_m x num_n`` grid of output tiles, in
    grouped order: ``GROUP`` consecutive row tiles walk the column tiles together, so that the rows
    of one operand and the columns of the other stay in L2 while they are reused."""
    per_group = GROUP * num_n
    first_m = (pid // per_group) * GROUP
    group_m = tl.minimum(num_m - first_m, GROUP)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m
