"""Probe: what a tiled Sinkhorn half-step's parts cost at n = 4096 (fp32, 64 MB), one launch each,
timed as 20 launches captured in one CUDA graph. Not library code: each kernel is a cut-down
half-step, from a plain streaming reduction of the tiles up to the real one's arrival count.

  stream      load the tile, column sums (a row step's reduction), store the partial row
  vec         + the row and column potentials (.cg vector loads), subtract, exponentiate
  arrive      + the band's arrival count as the kernels do it (block barrier, acq_rel gpu atomic,
              the count's broadcast; the last program resets it)
  arrive_rlx  the count without its fence (relaxed atomic): what the release costs
plus torch's 64 MB copy and column sum for the ceiling.

UNIMIXER_SKIP_CUDA_BUILD=1 python bench/results/2026-11-29-h200-run66/probe_tile_stream.py
"""
import functools
import json
import sys

import torch
import triton
import triton.language as tl

N = 4096


@triton.jit
def probe_kernel(X, U, V, PC, CNT, n, n_ct, n_rt, BM: tl.constexpr, BN: tl.constexpr, VEC: tl.constexpr,
                 ARRIVE: tl.constexpr, RELAXED: tl.constexpr):
    tile = tl.program_id(0)
    p = tile // n_ct
    q = tile % n_ct
    rows = p * BM + tl.arange(0, BM)
    cols = q * BN + tl.arange(0, BN)
    x = tl.load(X + rows[:, None] * n + cols[None, :])
    if VEC:
        u = tl.load(U + rows, cache_modifier=".cg")
        v = tl.load(V + cols, cache_modifier=".cg")
        x = tl.exp2((x - u[:, None] - v[None, :]) * 1.4426950408889634)
    part = tl.sum(x, axis=0)
    tl.store(PC + p * n + cols, part)
    if ARRIVE:
        tl.debug_barrier()
        if RELAXED:
            old = tl.atomic_add(CNT + q, 1, sem="relaxed", scope="gpu")
        else:
            old = tl.atomic_add(CNT + q, 1, sem="acq_rel", scope="gpu")
        if old == n_rt - 1:
            tl.atomic_xchg(CNT + q, 0, sem="relaxed", scope="gpu")


def graph_us(fn, launches=20, reps=30):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(launches):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / launches)
    times.sort()
    return times[len(times) // 2]


def main():
    torch.manual_seed(0)
    x = torch.randn(N, N, device="cuda")
    y = torch.empty_like(x)
    u = torch.randn(N, device="cuda")
    v = torch.randn(N, device="cuda")
    out = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__}
    out["torch copy 64 MB -> 64 MB"] = graph_us(lambda: y.copy_(x))
    out["torch column sums (64 MB read)"] = graph_us(lambda: torch.sum(x, dim=0))
    for bm, bn in ((64, 64), (32, 128), (16, 256), (128, 64)):
        n_rt, n_ct = N // bm, N // bn
        pc = torch.empty(n_rt, N, device="cuda")
        cnt = torch.zeros(n_ct, device="cuda", dtype=torch.int32)
        warps = 8 if bm * bn >= 8192 else 4
        for name, vec, arrive, relaxed in (("stream", False, False, False), ("vec", True, False, False),
                                           ("arrive", True, True, False), ("arrive_rlx", True, True, True)):
            fn = functools.partial(probe_kernel[(n_rt * n_ct,)], x, u, v, pc, cnt, N, n_ct, n_rt, BM=bm,
                                   BN=bn, VEC=vec, ARRIVE=arrive, RELAXED=relaxed, num_warps=warps)
            out[f"{bm}x{bn} {name}"] = graph_us(fn)
        # check the partials once
        probe_kernel[(n_rt * n_ct,)](x, u, v, pc, cnt, N, n_ct, n_rt, BM=bm, BN=bn, VEC=False, ARRIVE=False,
                                     RELAXED=False, num_warps=warps)
        ref = x.view(n_rt, bm, N).sum(1)
        out[f"{bm}x{bn} max error"] = (pc - ref).abs().max().item()
    for k, val in out.items():
        print(f"{k:40s} {val if isinstance(val, str) else round(val, 2)}")
    json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "probe_tile_stream.json", "w"), indent=1)


if __name__ == "__main__":
    main()
