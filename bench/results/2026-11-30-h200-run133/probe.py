"""Probe: the backward of ``LN(TokenMixer(x) + x)`` at the RankMixer block's shapes (bs 2048, T 16,
D 768, bf16; LayerNorm weights fp32), three ways, each under one captured CUDA graph
(``bench.timing.graph_replay_us``), ``dx`` compared bit for bit with the first:

1. before run132: the norm's backward writing the fp32 ``ds``, then the gather ``dx = ds +
   TokenMixer^T(ds)`` (two launches);
2. run132's ``tm_norm_bwd_mix_kernel``: whole samples, ``ds`` through a per-program fp32 workspace,
   at run132's best setting (4 warps, 2 programs an SM, 4-row tiles);
3. ``tm_norm_bwd_sample_kernel``: whole samples, two scalars a row between its passes, the second
   pass forming both terms of ``dx`` from ``x`` and ``dy`` again, over its launch settings.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import token_mixer as tm

from bench.timing import graph_replay_us


def main() -> None:
    bs, t, d = 2048, 16, 768
    c = d // t
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    w = torch.randn(d, device="cuda")
    b = torch.randn(d, device="cuda")
    dy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    _, mean, rstd = tm.tm_norm_fwd(x, t, w, b, 1e-6, False)
    mb = 3 * x.numel() * 2 / 1e6  # x and dy read, dx written once each

    def before():
        ds, dw, db = tm._norm_bwd(dy, x, None, c, w, mean, rstd, False, torch.float32, None, None, None)
        return tm.token_mix(ds, t, c, add_self=True, out_dtype=x.dtype), dw, db

    ref = before()
    print(f"before: norm backward + gather                    {graph_replay_us(before):7.1f} us", flush=True)

    def workspace():
        return tm.tm_norm_bwd_workspace(dy, x, t, w, mean, rstd, False, rows=4, num_warps=4, per_sm=2)

    same = torch.equal(workspace()[0], ref[0])
    print(f"run132 workspace, warps 4 per_sm 2 rows 4          {graph_replay_us(workspace):7.1f} us, "
          f"dx equal {same}", flush=True)
    for warps in (4, 8):
        for per_sm in (2, 4, 8, 16):
            for rows in (1, 2, 4):
                def sample():
                    return tm.tm_norm_bwd(dy, x, t, w, mean, rstd, False, rows=rows,  # noqa: B023
                                          num_warps=warps, per_sm=per_sm)  # noqa: B023
                out = sample()
                same = torch.equal(out[0], ref[0])
                err = (out[0].float() - ref[0].float()).abs().max().item()
                dw_err = (out[1] - ref[1]).abs().max().item()
                us = graph_replay_us(sample)
                print(f"two scalars a row, warps {warps} per_sm {per_sm:2d} rows {rows}  {us:7.1f} us "
                      f"({mb / us:.2f} TB/s at {mb:.0f} MB), dx equal {same} (max diff {err:.1e}), "
                      f"max|dw diff| {dw_err:.1e}", flush=True)


if __name__ == "__main__":
    main()
