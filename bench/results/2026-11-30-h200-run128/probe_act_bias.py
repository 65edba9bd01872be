"""Probe: the per-token FFN's activation pass (``_act_pass``) at rankmixer-100m (16 tokens, bs 2048,
h 3072, bf16, GELU) with and without the up-projection's bias added in the pass, forward and
backward, each alone under one captured CUDA graph (median of 5 runs of 50 replays).

    python probe_act_bias.py   (on a GPU, from the repository root)
"""

import statistics

import torch
import triton
from unimixer_kernels.triton_kernels import pswiglu as P


def timed(fn, reps=50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    runs = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / reps)
    return statistics.median(runs) * 1e3


def main() -> None:
    n, bs, h = 16, 2048, 3072
    gen = torch.Generator("cuda").manual_seed(0)
    g, da = (torch.randn(n, bs, h, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    b1 = torch.randn(n, h, device="cuda", generator=gen).to(torch.bfloat16)
    a, dg = torch.empty_like(g), torch.empty_like(g)
    pb1 = torch.empty(triton.cdiv(bs, P.ACT_ROWS), n, h, device="cuda")
    for rnd in range(2):
        for label, bias in (("no bias", None), ("bias", b1)):
            fwd = timed(lambda: P._act_pass(g, None, bias, None, None, a))  # noqa: B023
            bwd = timed(lambda: P._act_pass(g, None, bias, None, da, a, dg, None, pb1, None))  # noqa: B023
            print(f"round {rnd} {label:8s} fwd {fwd:7.1f} us  bwd {bwd:7.1f} us", flush=True)


if __name__ == "__main__":
    main()
