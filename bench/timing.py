"""Timers: ``triton.testing.do_bench`` median on a GPU (CUDA events; it also clears L2 before each
call), a ``time.perf_counter`` median on the CPU; CUDA-graph capture; peak-memory deltas."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_us(fn: Callable[[], object], device: torch.device, steps: int, warmup: int = 0) -> float:
    """Wall-clock microseconds per call of ``steps`` calls of ``fn()`` back to back, the device synchronised
    before and after (host time where the host is slower than the device: eager, launch-bound steps)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e6 / steps


def time_ms(fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float) -> float:
    """Median milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return cpu_median_ms(fn, warmup_ms, rep_ms)


def cpu_median_ms(fn: Callable[[], object], warmup_ms: float, rep_ms: float, min_reps: int = 5,
                  max_reps: int = 1000) -> float:
    start = time.perf_counter()
    fn()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (
            len(samples) < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """``max_memory_allocated`` above what was allocated before one call (GPU only)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak / 2**20


def capture_graph(fn: Callable[[], object], warmup: int = 2):
    """``torch.cuda.CUDAGraph`` of one call of ``fn`` (after warm-up on a side stream, as the CUDA
    graph docs require); returns the graph and the captured outputs (kept alive with it)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def graph_replay_us(fn: Callable[[], object], reps: int = 50, runs: int = 5) -> float:
    """Median over ``runs`` of the mean microseconds of one replay of ``fn``'s captured CUDA graph,
    ``reps`` replays back to back per run: the launch cost of a kernel inside a captured step, for
    probes that time single launches (L2 is not cleared between replays)."""
    graph, _ = capture_graph(fn)
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(samples)
