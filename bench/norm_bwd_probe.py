"""Probe: the RMSNorm backward kernel at ``paper-small``'s rows (``[65536, 128]`` bf16) by programs per
SM and tile size, without and with ``dsum`` (``python -m bench.norm_bwd_probe``, CUDA).

``rms_norm_bwd_partials`` alone, 16 calls per CUDA-graph replay over 4 sets of inputs in turn (64 MB a
set with ``dsum``: the L2 does not hold a set from one call of it to the next, as in a training step),
median of 15 replays. The launcher's programs per SM (``BWD_PROGRAMS_PER_SM``) and tile
(``BWD_TILE_ELEMENTS``) are patched per row.
"""

from __future__ import annotations

import json
from unittest import mock

import torch

from .env import header
from .timing import graph_replay_us

M, D, SETS, CALLS = 2048 * 32, 128, 4, 16
GRIDS = [(4, 4096), (8, 2048), (8, 4096), (16, 2048), (10**6, 4096)]


def main() -> None:
    from unimixer_kernels.triton_kernels import rms_norm as k

    dev = torch.device("cuda")
    print(f"# env {json.dumps(header(dev))}")
    print("\n| programs a SM | tile | dsum | µs a call |\n|---:|---:|---|---:|")
    torch.manual_seed(0)
    sets = [dict(s=torch.randn(M, D, device=dev, dtype=torch.bfloat16),
                 dy=torch.randn(M, D, device=dev, dtype=torch.bfloat16),
                 dsum=torch.randn(M, D, device=dev, dtype=torch.bfloat16)) for _ in range(SETS)]
    w = torch.randn(D, device=dev, dtype=torch.bfloat16)
    rstd = torch.rand(M, device=dev) + 0.5
    for per_sm, tile in GRIDS:
        for has_dsum in (False, True):
            def calls(has_dsum=has_dsum):
                for i in range(CALLS):
                    t = sets[i % SETS]
                    k.rms_norm_bwd_partials(t["dy"], t["dsum"] if has_dsum else None, t["s"], w, rstd)

            grid = mock.patch.object(k, "BWD_PROGRAMS_PER_SM", per_sm)
            with grid, mock.patch.object(k, "BWD_TILE_ELEMENTS", tile):
                us = graph_replay_us(calls, reps=1, runs=15) / CALLS
            label = "one tile each" if per_sm >= 10**6 else str(per_sm)
            print(f"| {label} | {tile} | {has_dsum} | {us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
