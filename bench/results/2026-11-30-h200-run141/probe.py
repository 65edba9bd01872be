"""Probe: the backward of ``LN(TokenMixer(x) + x)`` (``tm_norm_bwd``) at ``rankmixer-1b`` (bs 512, T 32,
D 1536, bf16 activations, fp32 LayerNorm weights), where the workspace cap leaves one program an SM:
warps a program and row tiles, and two programs an SM with the cap lifted (a 104 MB workspace),
against the committed defaults; ``dx`` compared bit for bit with the defaults'. Each under one captured
CUDA graph (``bench.timing.graph_replay_us``).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import torch
from unimixer_kernels.triton_kernels import token_mixer as tm

from bench.timing import graph_replay_us


def main() -> None:
    bs, t, d = 512, 32, 1536
    x = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    w = torch.randn(d, device="cuda")
    dy = torch.randn(bs, t, d, device="cuda").to(torch.bfloat16)
    _, mean, rstd = tm.tm_norm_fwd(x, t, w, None, 1e-6, False)
    mb = 3 * x.numel() * 2 / 1e6  # x and dy read, dx written (bf16)
    ref = tm.tm_norm_bwd(dy, x, t, w, mean, rstd, False)
    us = graph_replay_us(lambda: tm.tm_norm_bwd(dy, x, t, w, mean, rstd, False))
    print(f"defaults (committed): {us:7.1f} us ({mb / us:.2f} TB/s at {mb:.0f} MB)", flush=True)
    cap = tm.TM_BWD_META["workspace_bytes"]
    for per_sm, cap_bytes in ((1, cap), (2, 256 << 20)):
        tm.TM_BWD_META["workspace_bytes"] = cap_bytes
        for warps in (4, 8, 16):
            for rows in (1, 2, 4):
                def run():
                    return tm.tm_norm_bwd(dy, x, t, w, mean, rstd, False, rows=rows,  # noqa: B023
                                          num_warps=warps, per_sm=per_sm)  # noqa: B023
                out = run()
                same = torch.equal(out[0], ref[0])
                us = graph_replay_us(run)
                print(f"programs an SM {per_sm}, warps {warps:2d}, rows {rows}: {us:7.1f} us "
                      f"({mb / us:.2f} TB/s), dx equal {same}", flush=True)
        tm.TM_BWD_META["workspace_bytes"] = cap


if __name__ == "__main__":
    main()
