"""Probe: the RMSNorm backward kernel at ``paper-small``'s rows (``[65536, 128]`` bf16) by programs per
SM and tile size, without and with ``dsum`` (``python -m bench.norm_bwd_probe``, CUDA); then the full
UniMixer block's training step on its spec with the same grids, side by side in one process.

``rms_norm_bwd_partials`` alone, 16 calls per CUDA-graph replay over 4 sets of inputs in turn (64 MB a
set with ``dsum``: the L2 does not hold a set from one call of it to the next, as in a training step),
median of 15 replays, with the registers a thread of the compiled kernel holds and the programs an SM
they allow (of 64 Ki registers). The launcher's programs per SM (``BWD_PROGRAMS_PER_SM``) and tile
(``BWD_TILE_ELEMENTS``) are patched per row. A grid asks for more programs than fit an SM at once when
the kernel's registers allow fewer: the rest run as a second, partial wave.

The block (``UniMixerBlock`` at ``paper-small``, ``triton+sinkhorn=cuda/triton``, graphed fwd+bwd as
``bench.overlap_probe`` times it: both of its norm backwards take ``dsum``) is timed with each grid of
``BLOCK_GRIDS``, the grids alternating twice. ``--kernel-only`` leaves the block out.
"""

from __future__ import annotations

import json
import sys
from unittest import mock

import torch

from .env import header
from .timing import graph_replay_us

M, D, SETS, CALLS = 2048 * 32, 128, 4, 16
# (programs per SM, tile elements): the launcher's default first
GRIDS = [(8, 2048), (4, 4096), (5, 2048), (7, 2048), (16, 2048), (8, 1024), (10, 1024), (12, 1024),
         (16, 1024), (8, 512), (16, 512), (10**6, 4096)]
BLOCK_GRIDS = [(8, 2048), (8, 1024), (10, 1024), (5, 2048)]
REGISTERS = 65536


def _grid(k, per_sm: int, tile: int):
    return mock.patch.multiple(k, BWD_PROGRAMS_PER_SM=per_sm, BWD_TILE_ELEMENTS=tile)


def kernel_rows() -> None:
    from unimixer_kernels.triton_kernels import rms_norm as k

    dev = torch.device("cuda")
    print("\n| programs a SM | tile | dsum | registers a thread | programs an SM fit | µs a call |\n"
          "|---:|---:|---|---:|---:|---:|")
    torch.manual_seed(0)
    sets = [dict(s=torch.randn(M, D, device=dev, dtype=torch.bfloat16),
                 dy=torch.randn(M, D, device=dev, dtype=torch.bfloat16),
                 dsum=torch.randn(M, D, device=dev, dtype=torch.bfloat16)) for _ in range(SETS)]
    w = torch.randn(D, device=dev, dtype=torch.bfloat16)
    rstd = torch.rand(M, device=dev) + 0.5
    run_bwd = k._run_bwd
    for per_sm, tile in GRIDS:
        for has_dsum in (False, True):
            seen = []

            def recording(*args, seen=seen, **kwargs):
                seen.append(run_bwd(*args, **kwargs))

            def calls(has_dsum=has_dsum):
                for i in range(CALLS):
                    t = sets[i % SETS]
                    k.rms_norm_bwd_partials(t["dy"], t["dsum"] if has_dsum else None, t["s"], w, rstd)

            with _grid(k, per_sm, tile), mock.patch.object(k, "_run_bwd", recording):
                us = graph_replay_us(calls, reps=1, runs=15) / CALLS
            regs = getattr(seen[0], "n_regs", None) if seen else None
            warps = k._tile(D, tile)[2]
            fit = REGISTERS // (regs * 32 * warps) if regs else "?"
            label = "one tile each" if per_sm >= 10**6 else str(per_sm)
            print(f"| {label} | {tile} | {has_dsum} | {regs} | {fit} | {us:.1f} |", flush=True)


def block_rows(rounds: int = 2) -> None:
    from unimixer_kernels.triton_kernels import rms_norm as k

    from .overlap_probe import _module, _step_ms
    from .presets import get_preset

    preset = get_preset("paper-small")
    backend = "triton+sinkhorn=cuda/triton"
    times = {g: [] for g in BLOCK_GRIDS}
    for _ in range(rounds):
        for g in BLOCK_GRIDS:
            with _grid(k, *g):
                module = _module(preset, False, 1, backend, True)
                times[g].append(_step_ms(module, preset))
            del module
            torch.cuda.empty_cache()
    base = min(times[BLOCK_GRIDS[0]])
    print(f"\nUniMixerBlock, paper-small, `{backend}`, graphed fwd+bwd, by the norm backward's grid\n\n"
          "| programs a SM | tile | ms | against the first row, µs |\n|---:|---:|---:|---:|")
    for g, t in times.items():
        print(f"| {g[0]} | {g[1]} | {' / '.join(f'{x:.4f}' for x in t)} | {(min(t) - base) * 1e3:+.1f} |")


def main(block: bool = True) -> None:
    print(f"# env {json.dumps(header(torch.device('cuda')))}")
    kernel_rows()
    if block:
        block_rows()


if __name__ == "__main__":
    main(block="--kernel-only" not in sys.argv[1:])
