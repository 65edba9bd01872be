"""Probe at the RankMixer block's shapes (bs 2048, T 16, D 768, bf16; LayerNorm weights fp32):

1. the backward of ``LN(TokenMixer(x) + x)``: the former two launches (the norm's backward writing the
   fp32 ``ds``, then the gather ``dx = ds + TokenMixer^T(ds)``) against ``tm_norm_bwd_mix_kernel``
   (whole samples, ``ds`` through a per-program workspace), over its launch settings, with ``dx``
   compared bit for bit;
2. the gradient's widening cast of one FFN weight ([16, 768, 3072] bf16 to fp32): torch's converting
   copy against ``_partials.widen`` (``sum_partials``' one-row case);
3. the whole block's training step with the PFFN's hidden pre-activation recomputed or saved.

Each under one captured CUDA graph (``bench.timing.graph_replay_us``).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import _partials
from unimixer_kernels.triton_kernels import token_mixer as tm

from bench.timing import graph_replay_us


def norm_backward() -> None:
    bs, t, d = 2048, 16, 768
    c = d // t
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    w = torch.randn(d, device="cuda")
    b = torch.randn(d, device="cuda")
    dy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    _, mean, rstd = tm.tm_norm_fwd(x, t, w, b, 1e-6, False)
    mb = 4 * x.numel() * 2 / 1e6  # x (own and gathered), dy read; dx written

    def before():
        ds, dw, db = tm._norm_bwd(dy, x, None, c, w, mean, rstd, False, torch.float32, None, None, None)
        return tm.token_mix(ds, t, c, add_self=True, out_dtype=x.dtype), dw, db

    ref = before()
    us = graph_replay_us(before)
    print(f"tm_norm backward, before (norm backward + gather)       {us:7.1f} us", flush=True)
    for warps in (4, 8):
        for per_sm in (1, 2, 4, 8):
            for rows in (1, 2, 4):
                def after():
                    return tm.tm_norm_bwd(dy, x, t, w, mean, rstd, False, rows=rows,  # noqa: B023
                                          num_warps=warps, per_sm=per_sm)  # noqa: B023
                out = after()
                same = torch.equal(out[0], ref[0])
                dw_err = (out[1] - ref[1]).abs().max().item()
                us = graph_replay_us(after)
                print(f"tm_norm bwd, whole samples warps {warps} per_sm {per_sm} rows {rows} {us:7.1f} us "
                      f"({mb / us:.2f} TB/s at {mb:.0f} MB), dx equal {same}, max|dw diff| {dw_err:.2e}",
                      flush=True)


def widen() -> None:
    g = torch.randn(16, 768, 3072, device="cuda").to(torch.bfloat16)
    mb = g.numel() * 6 / 1e6
    torch_us = graph_replay_us(lambda: g.to(torch.float32))
    ours_us = graph_replay_us(lambda: _partials.widen(g, torch.float32))
    same = torch.equal(_partials.widen(g, torch.float32), g.float())
    print(f"widen [16, 768, 3072] bf16 -> fp32 ({mb:.0f} MB): torch {torch_us:.1f} us, _partials.widen "
          f"{ours_us:.1f} us ({mb / ours_us:.2f} TB/s), equal {same}", flush=True)


def rankmixer_recompute() -> None:
    """The RankMixer block (``backend="triton"``, bf16 autocast, ``rankmixer-100m``) trained one step
    (forward, then ``autograd.grad`` of the input and every parameter) with the PFFN's hidden
    pre-activation recomputed (default) or saved: step time under one CUDA graph, and the step's peak
    above what was allocated before it."""
    from bench.timing import peak_mib
    from unimixer_kernels import nn as uknn

    x = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16).requires_grad_()
    g = torch.randn(2048, 16, 768, device="cuda").to(torch.bfloat16)
    for recompute in (True, False):
        torch.manual_seed(0)
        m = uknn.RankMixerBlock(16, 768, recompute=recompute, backend="triton").cuda()
        leaves = [x, *m.parameters()]

        def step():
            with torch.autocast("cuda", torch.bfloat16):
                y = m(x)  # noqa: B023
            return torch.autograd.grad(y, leaves, g)  # noqa: B023

        step()
        peak = peak_mib(step, x.device)
        us = graph_replay_us(step, reps=10)
        print(f"RankMixer block recompute={recompute}: {us / 1e3:.3f} ms a step, peak {peak:.1f} MiB",
              flush=True)


if __name__ == "__main__":
    norm_backward()
    widen()
    rankmixer_recompute()
