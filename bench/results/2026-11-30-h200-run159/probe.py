"""Probe: ``sum_partials`` at the shapes the training steps give it, with its tile rule as committed
(``[BP, BM]`` tiles of 4096 values, ``BP`` up to 128 partial rows, so a long ``P`` reads rows of only 32
values: 64 bytes of bf16, 128 of fp32) against two others: ``wide`` (rows of at least 256 bytes: ``BM``
128 bf16 / 64 fp32 values, ``BP`` the rest of the 4096) and ``wide+split`` (as ``wide``, and where that
leaves fewer than 264 programs for a long ``P``, the rows summed first in ``S`` residue classes, ``row i
-> class i % S``, by the same kernel on the ``[P / S, S * M]`` view, then the ``S`` class sums: two
launches, deterministic). Each under one captured CUDA graph; results compared with the committed rule's.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
import triton
from unimixer_kernels.triton_kernels import _partials

from bench.timing import graph_replay_us

SHAPES = [  # (what, P, M, partial dtype, output dtype)
    ("RankMixer db2: dO's rows", 2048, 16 * 768, torch.bfloat16, torch.float32),
    ("GELU pass bias partials", 32, 16 * 3072, torch.float32, torch.float32),
    ("UniMixing dW_G partials", 64, 256 * 256, torch.float32, torch.float32),
    ("UniMixing dW_B partials", 2, 256 * 48 * 48, torch.float32, torch.float32),
    ("norm weight partials", 264, 768, torch.float32, torch.float32),
    ("widen a weight gradient", 1, 16 * 768 * 3072, torch.bfloat16, torch.float32),
]
COMMITTED = _partials._rows_cols


def wide(p: int, elem: int = 4) -> tuple[int, int]:
    bm = max(256 // elem, 1)
    if p == 1:
        return 1, _partials.TILE
    bp = min(triton.next_power_of_2(max(p, 1)), _partials.TILE // bm)
    return bp, _partials.TILE // bp


def run(rule: str, part: torch.Tensor, out: torch.Tensor) -> None:
    p, m = part.shape
    elem = part.element_size()
    if rule == "committed":
        _partials._rows_cols = COMMITTED
        _partials.sum_partials((part, out))
        return
    _partials._rows_cols = lambda rows: wide(rows, elem)
    bp, bm = wide(p, elem)
    programs = triton.cdiv(m, bm)
    splits = 1
    if rule == "wide+split" and programs < 264:
        splits = min(max(264 // programs, 1), max(p // (4 * bp), 1))
        while splits > 1 and p % splits:
            splits -= 1
    if splits == 1:
        _partials.sum_partials((part, out))
    else:
        tmp = torch.empty(splits, m, device=part.device)
        _partials.sum_partials((part.view(p // splits, splits * m), tmp.view(splits * m)))
        _partials.sum_partials((tmp, out))
    _partials._rows_cols = COMMITTED


def main() -> None:
    for what, p, m, pdt, odt in SHAPES:
        part = torch.randn(p, m, device="cuda").to(pdt)
        out = torch.empty(m, device="cuda", dtype=odt)
        mb = (part.numel() * part.element_size() + out.numel() * out.element_size()) / 1e6
        ref = None
        for rule in ("committed", "wide", "wide+split"):
            run(rule, part, out)
            got = out.clone()
            ref = got if ref is None else ref
            err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            us = graph_replay_us(lambda: run(rule, part, out))  # noqa: B023
            print(f"{what} [{p} x {m}, {str(pdt)[6:]}] {rule:10s}: {us:7.1f} us ({mb / us:.2f} TB/s), "
                  f"max rel. diff to committed {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
