"""Probe: the cuBLAS path's bias fill before the down projection's ``beta = 1`` GEMM, at the
RankMixer FFN's output (bs 2048, T 16, D 768, bf16, written through its token-major view) and at
pSwiGLU's at paper-100m (bs 2048, T 32, D 512): torch's copy of the broadcast bias against
``_fill_rows``, each alone under one captured CUDA graph (median of 5 runs of 50 replays).

    python probe_fill_rows.py   (on a GPU, from the repository root)
"""

import statistics

import torch
from unimixer_kernels.triton_kernels.pswiglu import _fill_rows


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
    for bs, t, d in ((2048, 16, 768), (2048, 32, 512)):
        out = torch.empty(bs, t, d, device="cuda", dtype=torch.bfloat16)
        view = out.transpose(0, 1)
        bias = torch.randn(t, d, device="cuda").to(torch.bfloat16)
        torch_us = timed(lambda: view.copy_(bias[:, None, :].expand(t, bs, d)))  # noqa: B023
        fill_us = timed(lambda: _fill_rows(view, bias))  # noqa: B023
        ok = torch.equal(view, bias[:, None, :].expand(t, bs, d))
        mb = out.numel() * 2 / 1e6
        print(f"[{bs}, {t}, {d}] {mb:.0f} MB: torch copy {torch_us:.1f} us, _fill_rows {fill_us:.1f} us "
              f"({mb / fill_us:.2f} TB/s), equal {ok}", flush=True)


if __name__ == "__main__":
    main()
