"""Probe: the fused FFN backward's activation-gradient kernel at ``paper-small``, with the norm in
front of the FFN done by the norm's own kernels or inside it (``python -m bench.ffn_act_probe``, CUDA).

One token pass of the UniMixer block's ``pSwiGLU(RMSNorm(s))`` backward (8 of 32 tokens, bs = 2048,
D = 128, h = 176, bf16, no biases, ``ds`` into a buffer of its own so that ``s`` stays the same
across replays), each timed alone as a captured CUDA graph's replay:

- per tile of the autotuner's list: the plain kernel and the ``PRENORM`` one, with the registers
  and spills of each as compiled here;
- the two routes of a pass with the autotuner's own choice: ``TokenPassNorm.rows``, the plain
  kernel and ``TokenPassNorm.grads`` (three launches) against the ``PRENORM`` kernel alone;
- ``sum_partials`` of the norm weight's partial rows as each route leaves them.
"""

from __future__ import annotations

import torch

from .timing import graph_replay_us

BS, T, D, H, PASS = 2048, 32, 128, 176, 8


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


def main() -> None:
    from unimixer_kernels.triton_kernels import pswiglu as k
    from unimixer_kernels.triton_kernels._partials import sum_partials
    from unimixer_kernels.triton_kernels.rms_norm import TokenPassNorm

    s, nw, w1, w3, w2, do, rstd = _inputs()
    sl = slice(0, PASS)
    w1_c, w3_c, w2_c, do_c = k._part(w1, sl), k._part(w3, sl), k._part(w2, sl), k._part(do, sl, 1)
    hidden = [torch.empty(PASS, BS, H, device=s.device, dtype=s.dtype) for _ in range(3)]
    ds = torch.empty_like(s)
    fused = TokenPassNorm(s, nw, 1e-6, ds, rstd=rstd)
    fused.plan([sl], rows_per_token=-(-BS // k.PARTIAL_GRANULE))
    split = TokenPassNorm(s, nw, 1e-6, ds)
    split.plan([sl])
    u_c = split.rows(sl)  # the pass's u: the plain kernel's input, the PRENORM kernel's output

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

    kernel = k.ffn_bwd_act_kernel
    for fn, name in ((plain_kernel, "plain"), (prenorm, "prenorm")):
        fn()
        print(f"{name}: autotuned to {kernel.best_config}")
    torch.cuda.synchronize()
    configs, cache = kernel.configs, dict(kernel.cache)
    print("| BLOCK_S | BLOCK_H | warps | stages | plain us | regs | spill | prenorm us | regs | spill |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for cfg in configs:
            kernel.configs = [cfg]
            row = [cfg.kwargs["BLOCK_S"], cfg.kwargs["BLOCK_H"], cfg.num_warps, cfg.num_stages]
            for fn in (plain_kernel, prenorm):
                kernel.cache.clear()
                try:
                    handle = fn()
                    torch.cuda.synchronize()
                    row += [f"{graph_replay_us(fn):.1f}", handle.n_regs, handle.n_spills]
                except Exception as e:  # a tile over the shared memory: say so and go on
                    row += [f"({type(e).__name__})", "", ""]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
    finally:
        kernel.configs = configs
        kernel.cache.clear()
        kernel.cache.update(cache)
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


if __name__ == "__main__":
    main()
