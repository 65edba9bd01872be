"""Probe: the wide-token per-token FFN after the split (plain GEMMs + one elementwise activation pass), at
rankmixer-100m (GELU FFN) and paper-100m (pSwiGLU), bf16. Each GEMM of a training step timed alone with
pointer loads (autotuned), with TMA descriptors in memory order, and with TMA descriptors token first
(non-monotonic strides), against torch.bmm (cuBLAS) on the same shapes; the activation passes; then the
whole op (fwd+bwd) under UNIMIXER_FFN_TMA=0 / auto / 1, with the gradients' largest relative difference
to the '0' run. Writes probe_ffn_split.json."""

import json
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench
from unimixer_kernels.triton_kernels import pswiglu as k

OUT = os.environ.get("OUT", ".")
dt = torch.bfloat16
PRESETS = {"rankmixer-100m": (2048, 16, 768, 3072, False), "paper-100m": (2048, 32, 512, 688, True)}
rows = []


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=10, rep=50)
    except Exception as ex:  # noqa: BLE001
        return f"{type(ex).__name__}: {str(ex)[:200]}"


def gemms(bs, T, D, H, gated):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    e = lambda *s: torch.empty(*s, device="cuda", dtype=dt)  # noqa: E731
    u, do = r(bs, T, D), r(bs, T, D)
    w1, w3, w2, b1 = r(T, D, H) * 0.03, r(T, D, H) * 0.03, r(T, H, D) * 0.03, r(T, H)
    g, a, dg, dv = r(T, bs, H), r(T, bs, H), r(T, bs, H), r(T, bs, H)
    o, du, dw1, dw2 = e(bs, T, D), e(bs, T, D), e(T, D, H), e(T, H, D)
    su, hid = (u.stride(0), u.stride(1), u.stride(2)), (H, bs * H, 1)
    ut, dot = u.transpose(0, 1), do.transpose(0, 1)
    fl = 2.0 * bs * D * H * T
    return [
        ("pre", fl, lambda tma: k._token_gemm(u, w1, g, T, bs, H, D, su, (D * H, H, 1), hid, dt, bias=b1,
                                              tma=tma),
         lambda: torch.bmm(ut, w1)),
        ("down", fl, lambda tma: k._token_gemm(a, w2, o, T, bs, D, H, hid, (H * D, D, 1), (T * D, D, 1), dt,
                                               bias=b1[:, :D].contiguous(), tma=tma),
         lambda: torch.bmm(a, w2)),
        ("dA", fl, lambda tma: k._token_gemm(do, w2, dg, T, bs, H, D, su, (H * D, 1, D), hid, dt, tma=tma),
         lambda: torch.bmm(dot, w2.transpose(1, 2))),
        ("du", fl * (2 if gated else 1), lambda tma: k._token_gemm(
            dg, w1, du, T, bs, D, H, hid, (D * H, 1, H), (T * D, D, 1), dt, a2=dv if gated else None,
            b2=w3 if gated else None, tma=tma),
         lambda: torch.bmm(dg, w1.transpose(1, 2))),
        ("dw1", fl, lambda tma: k._token_gemm(u, dg, dw1, T, D, H, bs,
                                              (u.stride(2), u.stride(1), u.stride(0)), (bs * H, H, 1),
                                              (H, D * H, 1), dt, tma=tma),
         lambda: torch.bmm(ut.transpose(1, 2), dg)),
        ("dw2", fl, lambda tma: k._token_gemm(a, do, dw2, T, H, D, bs, (1, bs * H, H),
                                              (do.stride(1), do.stride(0), do.stride(2)), (D, H * D, 1), dt,
                                              tma=tma),
         lambda: torch.bmm(a.transpose(1, 2), dot)),
    ], (g, dv if gated else None, dg, a)


t_start = time.time()
for preset, (bs, T, D, H, gated) in PRESETS.items():
    table, (g, v, da, a) = gemms(bs, T, D, H, gated)
    for name, flops, launch, ref in table:
        row = dict(preset=preset, gemm=name, gflop=flops / 1e9, bmm=bench(ref))
        row["ptr"] = bench(lambda f=launch: f(False))
        for first in (False, True):
            k._TOKEN_FIRST = first
            row["tma-token-first" if first else "tma"] = bench(lambda f=launch: f(True))
        k._TOKEN_FIRST = False
        print(f"[{time.time() - t_start:4.0f}s] {preset} {name} {row['gflop']:.1f} GFLOP:",
              {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in row.items()
               if kk not in ("preset", "gemm", "gflop")}, flush=True)
        rows.append(row)
    fwd = bench(lambda g=g, v=v, a=a: k._act_pass(g, v, None, a))
    bwd = bench(lambda g=g, v=v, a=a, da=da: k._act_pass(g, v, da, a, torch.empty_like(da), a if v is not None
                                                         else None))
    print(f"{preset} activation pass: fwd {fwd:.4f} ms, bwd {bwd:.4f} ms", flush=True)
    rows.append(dict(preset=preset, gemm="activation pass", fwd=fwd, bwd=bwd))
    del table, g, v, da, a
    torch.cuda.empty_cache()

for preset, (bs, T, D, H, gated) in PRESETS.items():
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    u, do = r(bs, T, D), r(bs, T, D)
    w1, w3, w2 = r(T, D, H) * 0.03, (r(T, D, H) * 0.03 if gated else None), r(T, H, D) * 0.03
    b1, b3, b2 = r(T, H), (r(T, H) if gated else None), r(T, D)

    def step(u=u, do=do, w1=w1, w3=w3, w2=w2, b1=b1, b3=b3, b2=b2):
        k.ffn_fwd(u, w1, w3, w2, b1, b3, b2, False)
        k.ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None)

    res, outs = {}, {}
    for flag, first in (("0", False), ("auto", False), ("1", False), ("auto", True), ("1", True)):
        os.environ["UNIMIXER_FFN_TMA"] = flag
        k._TOKEN_FIRST = first
        name = flag + ("-token-first" if first else "")
        res[name] = bench(step)
        outs[name] = [x for x in (k.ffn_fwd(u, w1, w3, w2, b1, b3, b2, False)[0],
                                  *k.ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None)) if x is not None]
    rel = {name: max(((x.float() - y.float()).abs().max() / y.float().abs().max()).item()
                     for x, y in zip(outs[name], outs["0"])) for name in outs}
    print(f"{preset} op fwd+bwd ms: {res}; largest relative difference to '0': {rel}", flush=True)
    rows.append(dict(preset=preset, gemm="op fwd+bwd", **{f"ms {kk}": vv for kk, vv in res.items()},
                     **{f"rel {kk}": vv for kk, vv in rel.items()}))
    os.environ["UNIMIXER_FFN_TMA"] = "auto"
    k._TOKEN_FIRST = False
    torch.cuda.empty_cache()

with open(os.path.join(OUT, "probe_ffn_split.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, triton=triton.__version__, rows=rows), f, indent=1)
print("done in", round(time.time() - t_start), "s", file=sys.stderr)
