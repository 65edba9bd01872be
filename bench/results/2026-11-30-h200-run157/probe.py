"""Probe: the GELU activation pass (``ffn_act_kernel``) at the RankMixer block's shapes (``[16, 2048, 3072]``
bf16 buffers, fp32 ``b1``) after its tail-polynomial CDF (run156): its tile swept again, since the
previous sweep (run125) chose ``(BLOCK_S, BLOCK_H, warps) = (16, 128, 4)`` and 64 samples a program when
the kernel issued a third more instructions. Forward and backward, each under one captured CUDA graph
(``bench.timing.graph_replay_us``), outputs compared bit for bit with the committed tile's.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import pswiglu

from bench.timing import graph_replay_us

TILES = [(16, 128, 4), (8, 128, 4), (8, 256, 4), (16, 256, 8), (32, 128, 8), (8, 128, 2), (16, 64, 2),
         (4, 256, 4), (8, 512, 8)]
ROWS = [64, 128, 32]


def main() -> None:
    t, bs, h = 16, 2048, 3072
    g = torch.randn(t, bs, h, device="cuda").to(torch.bfloat16)
    da = torch.randn_like(g)
    b1 = torch.randn(t, h, device="cuda") * 0.1
    a, dg = torch.empty_like(g), torch.empty_like(g)
    mb_f, mb_b = 2 * g.numel() * 2 / 1e6, 4 * g.numel() * 2 / 1e6
    ref = None
    kept = pswiglu._ACT_TILE, pswiglu.ACT_ROWS
    for rows in ROWS:
        for tile in TILES:
            pswiglu._ACT_TILE, pswiglu.ACT_ROWS = tile, rows
            pb1 = torch.empty(-(-bs // rows), t, h, device="cuda")
            try:
                pswiglu._act_pass(g, None, b1, None, None, a)
                a_f = a.clone()
                pswiglu._act_pass(g, None, b1, None, da, a, dg, None, pb1)
                got = (a_f, a.clone(), dg.clone())
                ref = got if ref is None else ref
                same = all(torch.equal(x, y) for x, y in zip(got, ref))
                fwd = graph_replay_us(lambda: pswiglu._act_pass(g, None, b1, None, None, a))
                bwd = graph_replay_us(lambda: pswiglu._act_pass(g, None, b1, None, da, a, dg, None, pb1))  # noqa: B023
                print(f"rows {rows:3d} tile {tile}: forward {fwd:6.1f} us ({mb_f / fwd:.2f} TB/s), backward "
                      f"{bwd:6.1f} us ({mb_b / bwd:.2f} TB/s), outputs equal {same}", flush=True)
            except Exception as exc:  # a tile that does not compile
                print(f"rows {rows} tile {tile}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    pswiglu._ACT_TILE, pswiglu.ACT_ROWS = kept


if __name__ == "__main__":
    main()
