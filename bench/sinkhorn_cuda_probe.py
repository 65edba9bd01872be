"""The `cuda` backend's Sinkhorn against the Triton resident kernels, outside the benchmark table.

    python bench/sinkhorn_cuda_probe.py               timings, then outputs and gradients against Triton
    python bench/sinkhorn_cuda_probe.py --sanitize    once forward and backward in every tile shape: the
                                                      script `compute-sanitizer --tool memcheck|racecheck`
                                                      wraps
    ... --paired [--sanitize]                         the same for symmetric n > 1024 (the paired kernels)

Timings: each step under one captured CUDA graph (`bench.timing.graph_replay_us`), two rounds in
alternation: n = 1024 at K = 20 and K = 2 (the difference over 18 is one iteration's cost) with the
plan 'auto' takes (printed) and 128 x 128; n = 512 with each tile shape. Tau = 0.05, symmetric.

Sanitize: n = 300 (clusters of 3 or 5 blocks, ragged last tiles), n = 1000 (vector reads, ragged last
tiles) and n = 1024 (8 clusters of 16 in 128 x 64 tiles where they fit, 8 of 8 in 128 x 128),
symmetric and not, K = 3; then the Lite global weight at n = 300 (its backward through a temporary).
Paired: n = 1100 (a batch of 2), 2048 and 4096, then the Lite global weight at n = 1100 and 4096 (its
backward writing the gradient over the logits in place). Needs a GPU and the extension built.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import unimixer_kernels as uk  # noqa: E402
from bench.timing import graph_replay_us  # noqa: E402
from unimixer_kernels.ops import sinkhorn_cuda  # noqa: E402

TAU = 0.05
NAMES = sinkhorn_cuda.TILES[1:]  # after 'auto': csrc/sinkhorn.cu kTiles, the order of the plan's indices
TIMED = [(1024, 20, "triton", "auto"), (1024, 20, "cuda", "auto"), (1024, 20, "cuda", "128x128"),
         (1024, 2, "triton", "auto"), (1024, 2, "cuda", "auto"), (1024, 2, "cuda", "128x128"),
         (512, 20, "triton", "auto"), (512, 20, "cuda", "64x128"), (512, 20, "cuda", "128x64"),
         (512, 20, "cuda", "128x128")]
SANITIZED = [(300, "64x128"), (300, "128x64"), (300, "128x128"), (1000, "128x128"), (1024, "128x64"),
             (1024, "128x128")]


def step(x: torch.Tensor, g: torch.Tensor, backend: str, iters: int, bwd: bool):
    def fn():
        p = uk.sinkhorn(x, TAU, iters, True, backend=backend)
        return torch.autograd.grad(p, x, g)[0] if bwd else p
    return fn


def probe() -> None:
    inputs = {n: (torch.randn(n, n, device="cuda").requires_grad_(), torch.randn(n, n, device="cuda"))
              for n in (512, 1024)}
    for n in (512, 1024):
        plan = sinkhorn_cuda.cuda_ops().sinkhorn_plan(inputs[n][0], True)
        print(f"n={n}: 'auto' takes forward {NAMES[plan[0]]}, backward {NAMES[plan[1]]}")
    for rnd in range(2):
        for bwd in (False, True):
            for n, iters, backend, tile in TIMED:
                os.environ[sinkhorn_cuda.TILE_SWITCH] = tile
                us = graph_replay_us(step(*inputs[n], backend, iters, bwd), reps=50, runs=5)
                mode = "fwd+bwd" if bwd else "fwd"
                print(f"round {rnd} n={n:4d} K={iters:2d} {mode:7s} {backend:6s} tile={tile:7s} {us:8.1f} us",
                      flush=True)
    os.environ[sinkhorn_cuda.TILE_SWITCH] = "auto"
    x, g = inputs[1024]
    for sym in (True, False):
        outs = {}
        for backend in ("triton", "cuda"):
            p = uk.sinkhorn(x, TAU, 20, sym, backend=backend)
            outs[backend] = (p.detach(), torch.autograd.grad(p, x, g)[0])
        (pt, dt), (pc, dc) = outs["triton"], outs["cuda"]
        print(f"symmetric={sym}: max|P_cuda - P_triton| {(pc - pt).abs().max().item():.3e} of "
              f"{pt.abs().max().item():.3e}; max|dX_cuda - dX_triton| {(dc - dt).abs().max().item():.3e} of "
              f"{dt.abs().max().item():.3e}")


def probe_paired() -> None:
    """Symmetric n > 1024 (csrc/sinkhorn_paired.cu) against the Triton tiled kernels: n = 4096 and 2048
    at K = 20 and K = 2, forward and forward+backward, then the outputs and gradients of both against the
    fp64 reference at n = 4096, K = 20."""
    inputs = {n: (torch.randn(n, n, device="cuda").requires_grad_(), torch.randn(n, n, device="cuda"))
              for n in (2048, 4096)}
    for rnd in range(2):
        for bwd in (False, True):
            for n in (4096, 2048):
                for iters in (20, 2):
                    for backend in ("triton", "cuda"):
                        us = graph_replay_us(step(*inputs[n], backend, iters, bwd), reps=20, runs=3)
                        mode = "fwd+bwd" if bwd else "fwd"
                        print(f"round {rnd} n={n:4d} K={iters:2d} {mode:7s} {backend:6s} {us:9.1f} us",
                              flush=True)
    x, g = inputs[4096]
    x64 = x.detach().double().requires_grad_()
    p64 = uk.sinkhorn(x64, TAU, 20, True, backend="reference")
    (d64,) = torch.autograd.grad(p64, x64, g.double())
    for backend in ("triton", "cuda"):
        p = uk.sinkhorn(x, TAU, 20, True, backend=backend)
        (d,) = torch.autograd.grad(p, x, g)
        print(f"n=4096 {backend}: max|P - P64| {(p.double() - p64).abs().max().item():.3e} of "
              f"{p64.abs().max().item():.3e}; max|dX - dX64| {(d.double() - d64).abs().max().item():.3e} of "
              f"{d64.abs().max().item():.3e}", flush=True)


def sanitize_once(x: torch.Tensor, symmetric: bool, label: str) -> None:
    """Forward and backward once at K = 3, synchronised, and a line saying so."""
    p = uk.sinkhorn(x, TAU, 3, symmetric, backend="cuda")
    (dx,) = torch.autograd.grad(p, x, torch.randn_like(p))
    torch.cuda.synchronize()
    print(f"{label}: ok, P sum {p.sum().item():.3f}, |dX| max {dx.abs().max().item():.3e}", flush=True)


def sanitize_lite_global(n: int, r: int) -> None:
    """The Lite global weight's forward and backward once at K = 3: its backward's gradient written
    over the logits formed again (``sinkhorn_bwd_``: in place in the paired kernels)."""
    a_g = (torch.randn(n, r, device="cuda") / r ** 0.5).requires_grad_()
    b_g = torch.randn(r, n, device="cuda").requires_grad_()
    w = uk.lite_global_weights(a_g, b_g, TAU, 3, True, backend="cuda")
    da, db = torch.autograd.grad(w, (a_g, b_g), torch.randn_like(w))
    torch.cuda.synchronize()
    print(f"lite global n={n} r={r}: ok, W sum {w.sum().item():.3f}, |dA| max {da.abs().max().item():.3e}, "
          f"|dB| max {db.abs().max().item():.3e}", flush=True)


def sanitize_paired() -> None:
    # 1100 in a batch, 2048 (four units a block), 4096 (sixteen, four of them streamed)
    for n, batch in ((1100, 2), (2048, 1), (4096, 1)):
        sanitize_once(torch.randn(batch, n, n, device="cuda", requires_grad=True), True,
                      f"paired n={n} batch={batch}")
    for n, r in ((1100, 16), (4096, 64)):  # the backward in place over the logits
        sanitize_lite_global(n, r)


def sanitize() -> None:
    for n, tile in SANITIZED:
        os.environ[sinkhorn_cuda.TILE_SWITCH] = tile
        for sym in (True, False):
            x = torch.randn(n, n, device="cuda", requires_grad=True)
            if min(sinkhorn_cuda.cuda_ops().sinkhorn_plan(x, sym)) < 0:
                print(f"n={n} tile={tile}: does not fit at once, not run")
                break
            sanitize_once(x, sym, f"n={n} tile={tile} symmetric={sym}")
    os.environ.pop(sinkhorn_cuda.TILE_SWITCH, None)
    sanitize_lite_global(300, 16)  # the backward through a temporary copied over the logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sanitize", action="store_true", help="one small run of every tile shape")
    parser.add_argument("--paired", action="store_true", help="symmetric n > 1024 (the paired kernels)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/sinkhorn_cuda_probe.py: needs a CUDA GPU and the extension built")
    if args.sanitize:
        sanitize_paired() if args.paired else sanitize()
    else:
        probe_paired() if args.paired else probe()


if __name__ == "__main__":
    main()
