"""Per-phase time stamps of the paired Sinkhorn kernels, from a build with `stamps.diff` applied: n = 4096,
K = 2 and 20, graph-replay times first, then per phase the median and latest stamp over the 130 x 16 warps
(globaltimer, from the earliest start) and the median time a warp spent in it. Run from the repo root:
`python bench/results/2026-12-01-h200-run186/paired_stamps.py`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402

import unimixer_kernels as uk  # noqa: E402
from bench.timing import graph_replay_us  # noqa: E402

TAU = 0.05
WARPS = 16


def labels(K: int) -> list[str]:
    out = ["start", "loaded"]
    for s in range(2 * K):
        out += [f"s{s} fetched", f"s{s} computed", f"s{s} reduced"]
    return out + ["last fetched", "end"]


def report(path: str, K: int, name: str) -> None:
    nst = 6 * K + 4
    st = np.fromfile(path, dtype=np.int64).reshape(-1, nst).astype(np.float64)
    grid = st.shape[0] // WARPS
    t0 = st[:, 0][st[:, 0] > 0].min()
    rel = np.where(st > 0, (st - t0) / 1e3, np.nan)
    print(f"== {name} K={K}: {grid} blocks; span {np.nanmax(rel):.1f} us; start spread "
          f"{np.nanmax(rel[:, 0]):.2f} us", flush=True)
    warp = np.arange(st.shape[0]) % WARPS
    prev = None
    for k, lab in enumerate(labels(K)):
        col = rel[:, k]
        if np.all(np.isnan(col)):
            continue
        med, mx = np.nanmedian(col), np.nanmax(col)
        d = col - rel[:, k - 1] if k > 0 else col
        dsm = np.nanmedian(d[warp < 12]) if k > 0 else 0.0
        dst = np.nanmedian(d[warp >= 12]) if k > 0 else 0.0
        step = med - prev if prev is not None else 0.0
        print(f"{lab:14s} median {med:8.1f} max {mx:8.1f} us  (+{step:6.1f}; own delta smem {dsm:6.1f} "
              f"streamed {dst:6.1f})", flush=True)
        prev = med


def main() -> None:
    n = 4096
    x = torch.randn(n, n, device="cuda", requires_grad=True)
    g = torch.randn(n, n, device="cuda")

    def fb(K):
        p = uk.sinkhorn(x, TAU, K, True, backend="cuda")
        return torch.autograd.grad(p, x, g)[0]

    for K in (2, 20):
        for bwd in (False, True):
            def fn(K=K, bwd=bwd):
                return fb(K) if bwd else uk.sinkhorn(x, TAU, K, True, backend="cuda")
            us = graph_replay_us(fn, reps=20, runs=3)
            print(f"graph replay K={K} {'fwd+bwd' if bwd else 'fwd'}: {us:.1f} us", flush=True)
    for K in (2, 20):
        fb(K)
        torch.cuda.synchronize()
        os.environ["UNIMIXER_PAIRED_STAMPS"] = f"/tmp/stamps_{K}"
        fb(K)
        torch.cuda.synchronize()
        del os.environ["UNIMIXER_PAIRED_STAMPS"]
        report(f"/tmp/stamps_{K}_fwd.bin", K, "forward")
        report(f"/tmp/stamps_{K}_bwd.bin", K, "backward")


if __name__ == "__main__":
    main()
