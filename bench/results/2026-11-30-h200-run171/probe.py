"""Probe: where the cuda Sinkhorn's fixed cost goes. Each step (n = 1024, symmetric, tau 0.05) under one
captured CUDA graph, K = 2 and K = 20, cuda and Triton: the replay's time, then the torch profiler over
20 replays, each kernel's mean device time per step.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root, the extension built)
"""

import collections

import torch

import unimixer_kernels as uk
from bench.timing import capture_graph, graph_replay_us

TAU = 0.05
x = torch.randn(1024, 1024, device="cuda").requires_grad_()
g = torch.randn(1024, 1024, device="cuda")


def step(backend, iters, bwd):
    def fn():
        p = uk.sinkhorn(x, TAU, iters, True, backend=backend)
        return torch.autograd.grad(p, x, g)[0] if bwd else p
    return fn


for bwd in (False, True):
    for iters in (2, 20):
        for backend in ("triton", "cuda"):
            fn = step(backend, iters, bwd)
            us = graph_replay_us(fn, reps=50, runs=5)
            graph, _ = capture_graph(fn)
            torch.cuda.synchronize()
            reps = 20
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(reps):
                    graph.replay()
                torch.cuda.synchronize()
            per = collections.OrderedDict()
            for ev in prof.events():
                if ev.device_type == torch.autograd.DeviceType.CUDA:
                    per.setdefault(ev.name[:70], []).append(ev.device_time)
            mode = "fwd+bwd" if bwd else "fwd"
            print(f"== {backend} K={iters} {mode}: replay {us:.1f} us/step; kernels (mean us, count/step):")
            total = 0.0
            for name, ts in per.items():
                total += sum(ts) / reps
                print(f"   {sum(ts) / len(ts):8.2f}  x{len(ts) / reps:4.1f}  {name}")
            print(f"   sum of kernel time {total:.1f} us/step, gaps {us - total:.1f}", flush=True)
