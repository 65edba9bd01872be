"""Probe: persistent launches of the wide-token per-token FFN GEMMs (TMA descriptors; one program per SM
walking the tiles in one flattened loop, so that a tile's epilogue overlaps the next tile's loads) against
one program per tile, pointer loads (autotuned) and torch.bmm (cuBLAS), at rankmixer-100m (GELU FFN) and
paper-100m (pSwiGLU), bf16; then the whole op (fwd+bwd) with each launch scheme, and its outputs' largest
relative difference to UNIMIXER_FFN_TMA=0. Writes probe_ffn_persistent.json."""

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
# (label, tile, persistent, programs per SM)
SCHEMES = [("tile/prog", (128, 128, 64, 8, 3), False, 1), ("pers 128x128 s3", (128, 128, 64, 8, 3), True, 1),
           ("pers 128x128 s4", (128, 128, 64, 8, 4), True, 1),
           ("pers 128x256 s3", (128, 256, 64, 8, 3), True, 1),
           ("pers 128x128 k128 s2", (128, 128, 128, 8, 2), True, 1),
           ("pers 128x64 s4 x2", (128, 64, 64, 4, 4), True, 2)]
rows = []


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=10, rep=50)
    except Exception as ex:  # noqa: BLE001
        return f"{type(ex).__name__}: {str(ex)[:200]}"


def scheme(tile, persistent, per_sm):
    k._TMA_TILE, k._PERSISTENT, k._PERSISTENT_PER_SM = tile, persistent, per_sm


def gemms(bs, T, D, H, gated):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    u, do = r(bs, T, D), r(bs, T, D)
    w1, w3, w2, b1 = r(T, D, H) * 0.03, r(T, D, H) * 0.03, r(T, H, D) * 0.03, r(T, H)
    g, a, dg, dv = r(T, bs, H), r(T, bs, H), r(T, bs, H), r(T, bs, H)
    o, du, dw1, dw2 = r(bs, T, D), r(bs, T, D), r(T, D, H), r(T, H, D)
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
    ]


t_start = time.time()
for preset, (bs, T, D, H, gated) in PRESETS.items():
    for name, flops, launch, ref in gemms(bs, T, D, H, gated):
        row = dict(preset=preset, gemm=name, gflop=flops / 1e9, bmm=bench(ref),
                   ptr=bench(lambda f=launch: f(False)))
        for label, tile, persistent, per_sm in SCHEMES:
            scheme(tile, persistent, per_sm)
            row[label] = bench(lambda f=launch: f(True))
        scheme((128, 128, 64, 8, 3), True, 1)
        print(f"[{time.time() - t_start:4.0f}s] {preset} {name} {row['gflop']:.1f} GFLOP:",
              {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in row.items()
               if kk not in ("preset", "gemm", "gflop")}, flush=True)
        rows.append(row)
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
    for flag, persistent in (("0", False), ("auto", False), ("1", False), ("auto", True), ("1", True)):
        os.environ["UNIMIXER_FFN_TMA"] = flag
        scheme((128, 128, 64, 8, 3), persistent, 1)
        name = flag + (" persistent" if persistent else "")
        res[name] = bench(step)
        outs[name] = [x for x in (k.ffn_fwd(u, w1, w3, w2, b1, b3, b2, False)[0],
                                  *k.ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None)) if x is not None]
    rel = {name: max(((x.float() - y.float()).abs().max() / y.float().abs().max()).item()
                     for x, y in zip(outs[name], outs["0"])) for name in outs}
    print(f"{preset} op fwd+bwd ms: {res}; largest relative difference to '0': {rel}", flush=True)
    rows.append(dict(preset=preset, gemm="op fwd+bwd", **{f"ms {kk}": vv for kk, vv in res.items()},
                     **{f"rel {kk}": vv for kk, vv in rel.items()}))
    os.environ["UNIMIXER_FFN_TMA"] = "auto"
    torch.cuda.empty_cache()

with open(os.path.join(OUT, "probe_ffn_persistent.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, triton=triton.__version__, device=torch.cuda.get_device_name(),
                   rows=rows), f, indent=1)
print("done in", round(time.time() - t_start), "s", file=sys.stderr)
