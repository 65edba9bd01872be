"""Probe: the UniMixing op's training step at rankmixer-100m (bf16 autocast, fp32 weights) with the
backward's per-block kernel at (programs an SM, samples a step) = (8, 64) (the default), (4, 32),
(8, 32) and (4, 64): three rounds, the settings alternating within each, every step under one
captured CUDA graph; the gradients compared bit for bit with the default's (run147 timed the kernel
alone: 45.2 us at (4, 32) against 49.4, but (4, 64) was slower inside the step).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import unimixing as kernels

import unimixer_kernels as uk
from bench.timing import graph_replay_us

BS, T, D, B = 2048, 16, 768, 48
SETTINGS = [(8, 64), (4, 32), (8, 32), (4, 64)]


def main() -> None:
    n = T * D // B
    x = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(n, B, B, device="cuda") * B ** -0.5).requires_grad_()
    wg = (torch.randn(n, n, device="cuda") * n ** -0.5).requires_grad_()
    gy = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(x, wl, wg, backend="triton")
        return torch.autograd.grad(y, (x, wl, wg), gy)

    ref = None
    times = {s: [] for s in SETTINGS}
    for _ in range(3):
        for s in SETTINGS:
            kernels.LOCAL_DOT_BWD_PER_SM, kernels.LOCAL_DOT_BWD_SAMPLES = s
            grads = step()
            ref = grads if ref is None else ref
            same = all(torch.equal(a, e) for a, e in zip(grads, ref))
            times[s].append(graph_replay_us(step))
            print(f"(programs an SM, samples a step) = {s}: step {times[s][-1]:.1f} us, "
                  f"gradients equal {same}", flush=True)
    kernels.LOCAL_DOT_BWD_PER_SM, kernels.LOCAL_DOT_BWD_SAMPLES = SETTINGS[0]
    for s, ts in times.items():
        print(f"{s}: median {sorted(ts)[1]:.1f} us", flush=True)


if __name__ == "__main__":
    main()
