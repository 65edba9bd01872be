"""The Lite global weight, matrix free, at paper-small (N = 1024, r = 128, K = 20, tau = 0.05,
symmetric): fwd+bwd under a CUDA graph, with the resident kernels' two waits (UNIMIXER_SINKHORN_POLL)
and two low-rank tile formations: the current one (fp32 factors: the rank in 16-wide chunks into two
accumulators in turn, since 760c1bb) and the one before it (``old``: 32-wide chunks, one
accumulator), and (``bk16``, for the code after run33) 16-wide chunks at every rank. One
configuration per process (the formation is swapped in before the first compile):

    python probe_lowrank.py thread|block [old|bk16]
"""
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.getcwd())
from unimixer_kernels.triton_kernels import sinkhorn as k  # noqa: E402

from bench.timing import capture_graph  # noqa: E402

poll, old, bk16 = sys.argv[1], "old" in sys.argv[2:], "bk16" in sys.argv[2:]
os.environ["UNIMIXER_SINKHORN_POLL"] = poll


@triton.jit
def _lowrank_tile_old(A, B, rows, cols, rmask, cmask, rank, sa0, sa1, sb0, sb1,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_IEEE: tl.constexpr):
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, rank, BK):
        a, b = k._lowrank_chunk(A, B, rows, cols, rmask, cmask, k0, rank, sa0, sa1, sb0, sb1, BK)
        if DOT_IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc


if old:
    k._lowrank_tile = _lowrank_tile_old
    tile_args = k._tile_args

    def _tile_args_old(n, src, a, b):
        out = tile_args(n, src, a, b)
        out[-1]["BK"] = 32
        return out

    k._tile_args = _tile_args_old

if bk16:
    k._lowrank_chunk_width = lambda rank, dot_ieee: 16

n, r, tau, iters = 1024, 128, 0.05, 20
torch.manual_seed(0)
a_g = (torch.randn(n, r, device="cuda") * r ** -0.5).requires_grad_()
b_g = torch.randn(r, n, device="cuda").requires_grad_()
g = torch.randn(n, n, device="cuda")


def step():
    p, u, v = k.lite_global_fwd(a_g, b_g, tau, iters, True)
    return k.lite_global_bwd(g, a_g, b_g, u, v, tau, iters, True)


k.RESIDENT_CHECK = True
step()
k.RESIDENT_CHECK = False
graph, out = capture_graph(step)
ms = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
fwd_graph, _ = capture_graph(lambda: k.lite_global_fwd(a_g, b_g, tau, iters, True))
fms = triton.testing.do_bench(fwd_graph.replay, warmup=50, rep=300, return_mode="median")
label = ("old (BK 32, one accumulator)" if old else "BK 16, two accumulators" if bk16
         else f"BK {k._lowrank_chunk_width(r, True)}, two accumulators")
print(f"poll={poll:6s} formation={label:30s} "
      f"fwd {fms:.3f} ms  fwd+bwd {ms:.3f} ms")
