"""Probe: the UniMixing op at ``rankmixer-100m`` (bs 2048, T 16, D 768, B 48, bf16 autocast, fp32 weights).

1. The training step with the ``dW_B`` partials summed in the same launch as the ``dW_G`` partials
   (the current code, where one kernel forms ``G`` and ``dW_G``) against the same code with the
   ``dW_B`` partials summed at once in a launch of their own (the previous order, emulated by wrapping
   ``_unimixing_bwd_memory``), and against ``UNIMIXER_UNIMIXING_BWD_GLOBAL=split``; under one captured
   CUDA graph each, alternating, three rounds; gradients compared bit for bit.
2. ``unimixing_bwd_global_kernel`` alone at its tile, with and without Triton's warp specialisation
   of its loop (``tl.range(..., warp_specialize=True)``, where this Triton has it).

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root)
"""

import os

import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels import unimixing as kernels
from unimixer_kernels.triton_kernels._partials import sum_partials

import unimixer_kernels as uk
from bench.timing import graph_replay_us

SWITCH = "UNIMIXER_UNIMIXING_BWD_GLOBAL"
BS, T, D, B = 2048, 16, 768, 48


def step_rounds() -> None:
    n = T * D // B
    x = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(n, B, B, device="cuda") * B ** -0.5).requires_grad_()
    wg = torch.softmax(torch.randn(n, n, device="cuda"), 0).requires_grad_()
    gy = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16)
    merged = kernels._unimixing_bwd_memory

    def separate(*args):
        dx, dwl, dwg_part, pending = merged(*args)
        for pair in pending:
            sum_partials(pair)
        return dx, dwl, dwg_part, []

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = uk.unimixing(x, wl, wg, backend="triton")
        return torch.autograd.grad(y, (x, wl, wg), gy)

    settings = {"one sum launch": ("auto", merged), "dW_B summed first": ("auto", separate),
                "split": ("split", merged)}
    grads = {}
    for label, (mode, fn) in settings.items():
        os.environ[SWITCH] = mode
        kernels._unimixing_bwd_memory = fn
        grads[label] = step()
    base = grads["one sum launch"]
    for label in ("dW_B summed first", "split"):
        same = all(torch.equal(a, e) for a, e in zip(base, grads[label]))
        print(f"gradients bit for bit equal to '{label}': {same}", flush=True)
    for rnd in range(3):
        for label, (mode, fn) in settings.items():
            os.environ[SWITCH] = mode
            kernels._unimixing_bwd_memory = fn
            us = graph_replay_us(step)
            print(f"round {rnd} {label:18s}: step {us:7.1f} us", flush=True)
    kernels._unimixing_bwd_memory = merged
    os.environ.pop(SWITCH)


@triton.jit
def ws_kernel(WG, DY, H, G, DWG_PART, BS, N, L, samples_per_split, swm, swt,
              B: tl.constexpr, NP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr,
              PRECISION: tl.constexpr, WS: tl.constexpr):
    # unimixing_bwd_global_kernel with its loop as tl.range(warp_specialize=WS)
    pid_t = tl.program_id(0)
    pid_p = tl.program_id(1)
    rt = pid_t * BM + tl.arange(0, BM)
    t_ok = rt < N
    rn = tl.arange(0, NP)
    n_ok = rn < N
    wgt = tl.load(WG + rn[None, :] * swm + rt[:, None] * swt, mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    wgt = wgt.to(DOT_DTYPE)
    s_begin = pid_p.to(tl.int64) * samples_per_split
    s_end = tl.minimum(s_begin + samples_per_split, BS)
    acc = tl.zeros([NP, BM], dtype=tl.float32)
    for k0 in tl.range(s_begin * B, s_end * B, BK, warp_specialize=WS):
        kk = k0 + tl.arange(0, BK)
        samp = kk // B
        c = kk % B
        k_ok = samp < s_end
        dy = tl.load(DY + samp[None, :] * L + rn[:, None] * B + c[None, :],
                     mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(DOT_DTYPE)
        g = tl.dot(wgt, dy, input_precision=PRECISION)
        tl.store(G + samp[None, :] * L + rt[:, None] * B + c[None, :], g.to(G.dtype.element_ty),
                 mask=t_ok[:, None] & k_ok[None, :])
        h = tl.load(H + samp[:, None] * L + rt[None, :] * B + c[:, None],
                    mask=k_ok[:, None] & t_ok[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(dy, h, acc, input_precision=PRECISION)
    part = DWG_PART + pid_p.to(tl.int64) * N * N + rn[:, None] * N + rt[None, :]
    tl.store(part, acc.to(DWG_PART.dtype.element_ty), mask=n_ok[:, None] & t_ok[None, :])


def kernel_alone() -> None:
    n = T * D // B
    dy = torch.randn(BS, T, D, device="cuda").to(torch.bfloat16)
    h = torch.randn_like(dy)
    wg = torch.softmax(torch.randn(n, n, device="cuda"), 0).to(torch.bfloat16)
    g = torch.empty_like(dy)
    us = graph_replay_us(lambda: kernels._bwd_global(wg, dy, h, g, torch.float32))
    print(f"unimixing_bwd_global_kernel (library launcher, {kernels.BWD_GLOBAL_TILE[True]}): {us:6.1f} us",
          flush=True)
    ref = kernels._bwd_global(wg, dy, h, g, torch.float32).clone()
    g_ref = g.clone()
    bm, bk, warps, stages = kernels.BWD_GLOBAL_TILE[True]
    p, per = kernels._splits(BS, triton.cdiv(n, bm), dy.device, n * n, per_sm=1)
    part = torch.empty(p, n, n, device="cuda")
    for ws, w, st in ((False, warps, stages), (True, warps, stages), (True, 8, 2), (True, 4, 3)):
        def run():
            ws_kernel[(triton.cdiv(n, bm), p)](wg, dy, h, g, part, BS, n, T * D, per, n, 1, B=B, NP=256,  # noqa: B023
                                               BM=bm, BK=bk, DOT_DTYPE=tl.bfloat16, PRECISION="tf32", WS=ws,  # noqa: B023
                                               num_warps=w, num_stages=st)  # noqa: B023
        try:
            g.fill_(float("nan"))
            run()
            same = torch.equal(part, ref) and torch.equal(g, g_ref)
            us = graph_replay_us(run)
            print(f"probe kernel warp_specialize={ws}, {w} warps, {st} stages: {us:6.1f} us, equal {same}",
                  flush=True)
        except Exception as exc:  # not available in this Triton, or does not compile
            print(f"probe kernel warp_specialize={ws}, {w} warps, {st} stages: {type(exc).__name__}: "
                  f"{str(exc)[:300]}", flush=True)


if __name__ == "__main__":
    step_rounds()
    kernel_alone()
