"""Probe: the per-token FFN GEMMs' TMA launch, second round. At rankmixer-100m (GELU FFN): 128 x 256 tiles
one per program against persistent, and 256 x 128 persistent. At paper-100m's shapes (pSwiGLU, D = 512)
with h = 688 (the preset: tiles clip, rows of [., h] operands 1376 bytes, not 128-byte aligned), 704 (rows
aligned, tiles still clip) and 768 (neither): pointer loads (autotuned) against TMA, to tell which of the
two makes TMA lose there. torch.bmm (cuBLAS) beside each. Writes probe_ffn_tma2.json."""

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
PRESETS = {"rankmixer-100m": (2048, 16, 768, 3072, False), "paper-100m h688": (2048, 32, 512, 688, True),
           "paper-100m h704": (2048, 32, 512, 704, True), "paper-100m h768": (2048, 32, 512, 768, True)}
# (label, tile (M, N, K, warps, stages), persistent); two products take 128 x 128 tiles one per program
SCHEMES = {"rankmixer-100m": [("128x256 tile/prog", (128, 256, 64, 8, 3), False),
                              ("128x256 pers", (128, 256, 64, 8, 3), True),
                              ("256x128 pers", (256, 128, 64, 8, 3), True)],
           "paper": [("128x256 pers", (128, 256, 64, 8, 3), True),
                     ("128x128 tile/prog", (128, 128, 64, 8, 3), False)]}
rows = []


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=10, rep=50)
    except Exception as ex:  # noqa: BLE001
        return f"{type(ex).__name__}: {str(ex)[:200]}"


DEFAULT = dict(k._TMA_LAUNCH)


def scheme(tile, persistent):
    k._TMA_LAUNCH[False] = (*tile, persistent)


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
        for label, tile, persistent in SCHEMES["rankmixer-100m" if "rank" in preset else "paper"]:
            scheme(tile, persistent)
            row[label] = bench(lambda f=launch: f(True))
        k._TMA_LAUNCH.update(DEFAULT)
        print(f"[{time.time() - t_start:4.0f}s] {preset} {name} {row['gflop']:.1f} GFLOP:",
              {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in row.items()
               if kk not in ("preset", "gemm", "gflop")}, flush=True)
        rows.append(row)
    torch.cuda.empty_cache()

with open(os.path.join(OUT, "probe_ffn_tma2.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, triton=triton.__version__, device=torch.cuda.get_device_name(),
                   rows=rows), f, indent=1)
print("done in", round(time.time() - t_start), "s", file=sys.stderr)
