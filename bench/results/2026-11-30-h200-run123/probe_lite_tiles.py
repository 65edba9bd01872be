"""Probe: the Lite global weight at paper-small (N = 1024, r = 128, tau 0.05, K = 20), fwd+bwd under
CUDA graphs, with the split GEMM's launch plan replaced per product shape, side by side with the
current plan and with the materialised weight (cuBLAS fp32 logits, then the Triton Sinkhorn).

    python probe_lite_tiles.py   (on a GPU; prints one line per plan, medians of 7 runs of 200 replays)
"""

import statistics

import torch
from unimixer_kernels.triton_kernels import gemm_fp32 as g

import unimixer_kernels as uk
from unimixer_kernels.ops.sinkhorn import lite_global_fwd

N, R, TAU, ITERS = 1024, 128, 0.05, 20
CURRENT = g.plan

# (formation [1024 x 1024 x 128], dA [1024 x 128 x 1024], dB [128 x 1024 x 1024]) launches
PLANS = {
    "current": None,
    "grads 64x128 split 4 (the previous plan)": (None, (64, 128, 64, 4, 3, 4), (64, 128, 64, 4, 3, 4)),
}


def use(plan):
    def pick(m, n, k, device):
        shape = {(N, N, R): 0, (N, R, N): 1, (R, N, N): 2}.get((m, n, k))
        if plan is None or shape is None or plan[shape] is None:
            return CURRENT(m, n, k, device)
        return g.GemmConfig(*plan[shape])
    g.plan = pick


def timed(step) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    runs = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(200):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) / 200)
    return statistics.median(runs)


def main() -> None:
    gen = torch.Generator("cuda").manual_seed(0)
    a = (torch.randn(N, R, device="cuda", generator=gen) * R ** -0.5).requires_grad_()
    b = torch.randn(R, N, device="cuda", generator=gen).requires_grad_()
    gw = torch.randn(N, N, device="cuda", generator=gen)

    def matrix_free():
        a.grad = b.grad = None
        lite_global_fwd(a, b, TAU, ITERS, True)[0].backward(gw)

    def materialised():
        a.grad = b.grad = None
        uk.sinkhorn(a @ b, TAU, ITERS, backend="triton").backward(gw)

    for rep in range(2):
        print(f"materialised (cuBLAS logits) round {rep}: {timed(materialised) * 1e3:.1f} us", flush=True)
        for name, plan in PLANS.items():
            use(plan)
            print(f"matrix free, {name} round {rep}: {timed(matrix_free) * 1e3:.1f} us", flush=True)
            use(None)


if __name__ == "__main__":
    main()
