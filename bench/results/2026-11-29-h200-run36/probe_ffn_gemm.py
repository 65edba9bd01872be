"""Probe: the wide-token per-token FFN GEMMs (ffn_token_gemm_kernel) at rankmixer-100m (GELU FFN) and
paper-100m (pSwiGLU), each launch of the forward and backward timed alone: the autotuned pointer
kernel, a list of tiles with pointer loads and with TMA descriptors, and torch.bmm (cuBLAS) on the
same shapes. Then the whole op, fwd+bwd, with UNIMIXER_FFN_TMA=0 and 1. Writes probe_ffn_gemm.json."""

import json
import os
import sys
import time

import torch
import triton
from triton.testing import do_bench
from unimixer_kernels.triton_kernels import pswiglu as k

OUT = os.environ.get("OUT", ".")
TILES = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4),
         (128, 128, 64, 4, 4), (256, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4)]
PLAIN_ONLY = {(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3)}
dt = torch.bfloat16
rows = []


def gemms(bs, T, D, H, gated):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    u, do = r(bs, T, D), r(bs, T, D)
    w1, w3, w2 = r(T, D, H) * 0.03, r(T, D, H) * 0.03, r(T, H, D) * 0.03
    b1, b3, b2 = r(T, H), r(T, H), r(T, D)
    e = lambda *s: torch.empty(*s, device="cuda", dtype=dt)  # noqa: E731
    act, g, v, a, dg, dv = (e(T, bs, H) for _ in range(6))
    o, du = e(bs, T, D), e(bs, T, D)
    dw1, dw2 = e(T, D, H), e(T, H, D)
    su = (u.stride(0), u.stride(1), u.stride(2))
    hid = (H, bs * H, 1)
    ut = u.transpose(0, 1)
    dot = do.transpose(0, 1)
    fl = 2.0 * bs * D * H * T
    out = [
        ("hidden", fl * (2 if gated else 1), lambda tma, cfg: k._token_gemm(
            k.MODE_HIDDEN, u, w1, act, T, bs, H, D, su, (D * H, H, 1), hid, dt, b2=w3 if gated else None,
            bias=b1, bias2=b3 if gated else None, g=g, v=v if gated else None, gated=gated, save=True,
            tma=tma, config=cfg), lambda: torch.bmm(ut, w1)),
        ("down", fl, lambda tma, cfg: k._token_gemm(
            k.MODE_DOWN, act, w2, o, T, bs, D, H, hid, (H * D, D, 1), (T * D, D, 1), dt, bias=b2, tma=tma,
            config=cfg), lambda: torch.bmm(act, w2)),
        ("dact", fl, lambda tma, cfg: k._token_gemm(
            k.MODE_DACT, do, w2, a, T, bs, H, D, su, (H * D, 1, D), hid, dt, g=g, v=v if gated else None,
            dg=dg, dv=dv if gated else None, gated=gated, tma=tma, config=cfg),
         lambda: torch.bmm(dot, w2.transpose(1, 2))),
        ("du", fl * (2 if gated else 1), lambda tma, cfg: k._token_gemm(
            k.MODE_DU, dg, w1, du, T, bs, D, H, hid, (D * H, 1, H), (T * D, D, 1), dt,
            a2=dv if gated else None, b2=w3 if gated else None, gated=gated, tma=tma, config=cfg),
         lambda: torch.bmm(dg, w1.transpose(1, 2))),
        ("dw1", fl, lambda tma, cfg: k._token_gemm(
            k.MODE_DU, u, dg, dw1, T, D, H, bs, (u.stride(2), u.stride(1), u.stride(0)), (bs * H, H, 1),
            (H, D * H, 1), dt, tma=tma, config=cfg), lambda: torch.bmm(ut.transpose(1, 2), dg)),
        ("dw2", fl, lambda tma, cfg: k._token_gemm(
            k.MODE_DU, a, do, dw2, T, H, D, bs, (1, bs * H, H), (do.stride(1), do.stride(0), do.stride(2)),
            (D, H * D, 1), dt, tma=tma, config=cfg), lambda: torch.bmm(a.transpose(1, 2), dot)),
    ]
    return out


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench(fn, warmup=10, rep=40)
    except Exception as ex:  # noqa: BLE001
        return f"{type(ex).__name__}: {str(ex)[:120]}"


t_start = time.time()
for preset, (bs, T, D, H, gated) in {"rankmixer-100m": (2048, 16, 768, 3072, False),
                                     "paper-100m": (2048, 32, 512, 688, True)}.items():
    for name, flops, launch, ref in gemms(bs, T, D, H, gated):
        row = dict(preset=preset, gemm=name, gflop=flops / 1e9)
        row["bmm"] = bench(ref)
        row["ptr-autotuned"] = bench(lambda f=launch: f(False, None))
        for cfg in TILES:
            plain = name in ("down", "dw1", "dw2") or (name == "du" and not gated)
            if cfg in PLAIN_ONLY and not plain:
                continue
            for tma in (False, True):
                key = f"{'tma' if tma else 'ptr'}-{'x'.join(map(str, cfg))}"
                row[key] = bench(lambda f=launch, x=tma, c=cfg: f(x, c))
        times = {kk: vv for kk, vv in row.items() if isinstance(vv, float) and kk != "gflop"}
        best = min(times, key=times.get)
        print(f"[{time.time() - t_start:5.0f}s] {preset} {name}: {row['gflop']:.1f} GFLOP; "
              f"bmm {row['bmm']:.3f} ms "
              f"({flops / row['bmm'] / 1e9:.0f} TF/s), ptr-autotuned {row['ptr-autotuned']:.3f}, "
              f"best {best} {times[best]:.3f} ms ({flops / times[best] / 1e9:.0f} TF/s)", flush=True)
        print("   ", {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in row.items()},
              flush=True)
        rows.append(row)
        torch.cuda.empty_cache()

# the whole ops, fwd+bwd, TMA off and on (default tiles)
from unimixer_kernels.triton_kernels.pswiglu import ffn_bwd, ffn_fwd  # noqa: E402

for preset, (bs, T, D, H, gated) in {"rankmixer-100m": (2048, 16, 768, 3072, False),
                                     "paper-100m": (2048, 32, 512, 688, True)}.items():
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    u, do = r(bs, T, D), r(bs, T, D)
    w1, w3, w2 = r(T, D, H) * 0.03, (r(T, D, H) * 0.03 if gated else None), r(T, H, D) * 0.03
    b1, b3, b2 = r(T, H), (r(T, H) if gated else None), r(T, D)

    def step(u=u, do=do, w1=w1, w3=w3, w2=w2, b1=b1, b3=b3, b2=b2):
        ffn_fwd(u, w1, w3, w2, b1, b3, b2, False)
        ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None)

    res = {}
    outs = {}
    for flag in ("0", "1"):
        os.environ["UNIMIXER_FFN_TMA"] = flag
        res[flag] = bench(step)
        outs[flag] = [x for x in ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None) if x is not None]
    diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(outs["0"], outs["1"]))
    print(f"{preset} op fwd+bwd: TMA=0 {res['0']} ms, TMA=1 {res['1']} ms; "
          f"max |diff| of the grads {diff:.3g}", flush=True)
    rows.append(dict(preset=preset, gemm="op fwd+bwd", tma0=res["0"], tma1=res["1"], grad_diff=diff))
    os.environ["UNIMIXER_FFN_TMA"] = "0"

with open(os.path.join(OUT, "probe_ffn_gemm.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, triton=triton.__version__, rows=rows), f, indent=1)
print("done in", round(time.time() - t_start), "s", file=sys.stderr)
