"""Probe: the fused FFN backward's activation-gradient kernel at ``paper-small``, with the norm in
front of the FFN done by the norm's own kernels or inside it (``python -m bench.ffn_act_probe``, CUDA).

One token pass of the UniMixer block's ``pSwiGLU(RMSNorm(s))`` backward (8 of 32 tokens, bs = 2048,
D = 128, h = 176, bf16, no biases, ``ds`` into a buffer of its own so that ``s`` stays the same
across replays), each timed alone as a captured CUDA graph's replay:

- per tile of the autotuner's list: the plain kernel and the ``PRENORM`` one, with the registers
  and spills of each as compiled here;
- the two routes of a pass with the autotuner's own choice: ``TokenPassNorm.rows``, the plain
  kernel and ``TokenPassNorm.grads`` (three launches) against the ``PRENORM`` kernel alone;
- ``sum_partials`` of the norm weight's partial rows as each route leaves them;
- the whole pass of the plain FFN backward (act kernel, weight kernel, partial sums) for each output
  tile of the weight kernel (``WEIGHT_SHAPES``), each tile of its list, and, with the fastest tile of
  each, each number of sample ranges its partials are split into.

``--weight-only``: the last item alone; ``--act-only``: all but it. Tiles named in ``EXTRA_ACT_TILES``
and ``EXTRA_WEIGHT_TILES`` are timed beside the autotuners' lists.
"""

from __future__ import annotations

import contextlib
import json

import torch
import triton

from .env import header
from .timing import graph_replay_us

BS, T, D, H, PASS = 2048, 32, 128, 176, 8
# (BLOCK_S, BLOCK_H, warps, stages[, maxnreg]) of the act kernel, and (BLOCK_S, warps, stages) of the
# weight kernel, outside their autotuners' lists. With maxnreg, ptxas caps the registers a thread (and
# spills the rest) so that more programs fit an SM: at 128 a thread, 8 warps, two an SM (16 warps, against
# the 4-warp tiles' 8 at 255 registers); at 168, 4 warps, three an SM where the shared memory allows
EXTRA_ACT_TILES = [(64, 32, 8, 2), (64, 16, 4, 2), (128, 16, 8, 2), (64, 32, 4, 1),
                   (64, 32, 8, 2, 128), (64, 16, 8, 2, 128), (64, 16, 8, 3, 128), (64, 32, 8, 3, 128),
                   (64, 16, 4, 3, 168), (64, 16, 4, 2, 168)]
EXTRA_WEIGHT_TILES = [(32, 4, 3), (32, 8, 2), (32, 8, 3), (64, 4, 4), (128, 8, 3)]
# (BLOCK_D, BLOCK_H): the weight kernel's output tile (its three fp32 accumulators), timed in turn
WEIGHT_SHAPES = [(64, 64), (128, 64), (128, 32)]
SPLITS = [2, 3, 4, 5, 6, 8, 11, 16]


@contextlib.contextmanager
def _only(tuner, cfg):
    """``tuner`` (a kernel's ``TileTuner``) with the one tile ``cfg`` and no tile chosen inside the block
    (a tile alone is not tuned, just run); its list and its choices again after it."""
    configs, tiles = tuner.configs, dict(tuner.tiles)
    tuner.configs = [cfg]
    tuner.tiles.clear()
    try:
        yield
    finally:
        tuner.configs = configs
        tuner.tiles.clear()
        tuner.tiles.update(tiles)


def _inputs():
    from unimixer_kernels.triton_kernels import rms_norm as norms

    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    s = torch.randn(BS, T, D, device=dev, dtype=dt)
    nw = torch.randn(D, device=dev, dtype=dt)
    w1, w3 = (torch.randn(T, D, H, device=dev, dtype=dt) / D ** 0.5 for _ in range(2))
    w2 = torch.randn(T, H, D, device=dev, dtype=dt) / H ** 0.5
    do = torch.randn(BS, T, D, device=dev, dtype=dt)
    rstd = norms.rms_norm_fwd(s, None, nw, 1e-6)[2].view(BS, T)
    return s, nw, w1, w3, w2, do, rstd


def main(weight_only: bool = False, act_only: bool = False) -> None:
    from unimixer_kernels.triton_kernels import pswiglu as k
    from unimixer_kernels.triton_kernels._partials import sum_partials
    from unimixer_kernels.triton_kernels.rms_norm import TokenPassNorm

    s, nw, w1, w3, w2, do, rstd = _inputs()
    print(f"# env {json.dumps(header(s.device))}")  # the GPU, versions, date and commit of this output
    sl = slice(0, PASS)
    w1_c, w3_c, w2_c, do_c = k._part(w1, sl), k._part(w3, sl), k._part(w2, sl), k._part(do, sl, 1)
    hidden = [torch.empty(PASS, BS, H, device=s.device, dtype=s.dtype) for _ in range(3)]
    ds = torch.empty_like(s)
    fused = TokenPassNorm(s, nw, 1e-6, ds, rstd=rstd)
    fused.plan([sl], rows_per_token=triton.cdiv(BS, k._MIN_BLOCK_S))
    split = TokenPassNorm(s, nw, 1e-6, ds)
    split.plan([sl])
    u_c = split.rows(sl)  # the pass's u: the plain kernel's input, the PRENORM kernel's output
    if weight_only:
        return _weight_pass(k, u_c, do_c, w1_c, w3_c, w2_c)

    def plain():
        u = split.rows(sl)
        du = torch.empty_like(u)
        k._ffn_bwd_act_fused(do_c, u, w1_c, w3_c, w2_c, None, None, None, None, du, *hidden, s.dtype, True)
        split.grads(sl, du)

    def prenorm():
        s_c, ds_c, rstd_c, _ = fused.fused_pass(sl)
        fused._accumulate = False  # every replay is a first pass
        return k._ffn_bwd_act_fused(do_c, s_c, w1_c, w3_c, w2_c, None, None, None, None, u_c, *hidden,
                                    s.dtype, True, norm=(ds_c, rstd_c, nw, fused.partial, False))

    def plain_kernel():
        return k._ffn_bwd_act_fused(do_c, u_c, w1_c, w3_c, w2_c, None, None, None, None, ds[:, sl], *hidden,
                                    s.dtype, True)

    tuner = k.ffn_bwd_act
    for fn, name in ((plain_kernel, "plain"), (prenorm, "prenorm")):
        fn()
        print(f"{name}: tuned to {list(tuner.tiles.values())[-1]}")  # prenorm: on k._prenorm_scratch
    torch.cuda.synchronize()
    extra = [triton.Config({"BLOCK_S": t[0], "BLOCK_H": t[1]}, num_warps=t[2], num_stages=t[3],
                           maxnreg=t[4] if len(t) > 4 else None) for t in EXTRA_ACT_TILES]
    print("| BLOCK_S | BLOCK_H | warps | stages | maxnreg | plain us | regs | spill | prenorm us | regs "
          "| spill |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in tuner.configs + extra:
        row = [cfg.kwargs["BLOCK_S"], cfg.kwargs["BLOCK_H"], cfg.num_warps, cfg.num_stages,
               cfg.maxnreg or "–"]
        for fn in (plain_kernel, prenorm):
            with _only(tuner, cfg):
                try:
                    handle = fn()
                    torch.cuda.synchronize()
                    row += [f"{graph_replay_us(fn):.1f}", handle.n_regs, handle.n_spills]
                except Exception as e:  # a tile over the shared memory: say so and go on
                    row += [f"({type(e).__name__})", "", ""]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)
    print()
    print("| route (one pass of 8 tokens, autotuned) | us |")
    print("|---|---:|")
    plain(), prenorm()
    torch.cuda.synchronize()
    print(f"| norm kernels + plain act kernel (3 launches) | {graph_replay_us(plain):.1f} |")
    print(f"| PRENORM act kernel | {graph_replay_us(prenorm):.1f} |")
    for name, norm in (("rms_norm_bwd grid", split), ("PRENORM granules", fused)):
        us = graph_replay_us(lambda norm=norm: sum_partials(norm.weight_grad_pair()))
        print(f"| sum_partials of {tuple(norm.partial.shape)} ({name}) into dw | {us:.1f} |")
    if not act_only:
        _weight_pass(k, u_c, do_c, w1_c, w3_c, w2_c)


def _weight_pass(k, u_c, do_c, w1_c, w3_c, w2_c) -> None:
    """The plain FFN backward of one pass (``k.ffn_bwd``) per weight-kernel output tile
    (``WEIGHT_SHAPES``), per tile of its list and per number of sample ranges."""
    kernel, tiles, splits = k.ffn_bwd_weight, k._weight_tiles, k._num_splits
    chosen = []  # the library's own number of sample ranges, as each default pass chose it

    def run(n_split=None):
        return k.ffn_bwd(do_c, u_c, w1_c, w3_c, w2_c, None, None, None, None, n_split=n_split)

    print()
    print(f"weight kernel: the library's output tile {tiles(D, H, False)}")
    print()
    print("| BLOCK_D | BLOCK_H | BLOCK_S | warps | stages | default splits | pass us (act + weight + sums) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    extra = [triton.Config({"BLOCK_S": b}, num_warps=w, num_stages=st) for b, w, st in EXTRA_WEIGHT_TILES]
    best = {}
    try:
        k._num_splits = lambda *a: chosen.append(splits(*a)) or chosen[-1]
        for bd, bh in WEIGHT_SHAPES:
            k._weight_tiles = lambda d, h, recompute, bd=bd, bh=bh: (bd, bh)
            pruned = k._prune_weight(kernel.configs, dict(BS_KEY=BS), RECOMPUTE=False, BLOCK_D=bd, BLOCK_H=bh,
                                     CDT=triton.language.bfloat16)
            for cfg in pruned + [c for c in extra if c not in pruned]:
                with _only(kernel, cfg):
                    try:
                        us = graph_replay_us(run)
                        if us < best.get((bd, bh), (1e9,))[0]:
                            best[(bd, bh)] = (us, cfg)
                        shown = f"{us:.1f}"
                    except Exception as e:  # a tile over the shared memory: say so and go on
                        shown = f"({type(e).__name__})"
                default = chosen[-1] if chosen else "–"
                row = (bd, bh, cfg.kwargs["BLOCK_S"], cfg.num_warps, cfg.num_stages, default, shown)
                print("| " + " | ".join(map(str, row)) + " |", flush=True)
        print()
        print("| BLOCK_D | BLOCK_H | fastest tile | sample ranges (n_split) | pass us |")
        print("|---:|---:|---|---:|---:|")
        for (bd, bh), (_, cfg) in best.items():
            k._weight_tiles = lambda d, h, recompute, bd=bd, bh=bh: (bd, bh)
            tile = f"{cfg.kwargs['BLOCK_S']} x {cfg.num_warps} x {cfg.num_stages}"
            with _only(kernel, cfg):
                for n in SPLITS:
                    us = graph_replay_us(lambda n=n: run(n))
                    print(f"| {bd} | {bh} | {tile} | {n} | {us:.1f} |", flush=True)
    finally:
        k._weight_tiles, k._num_splits = tiles, splits


if __name__ == "__main__":
    import sys

    main(weight_only="--weight-only" in sys.argv[1:], act_only="--act-only" in sys.argv[1:])
