"""Diagnosis: run42's RankMixer block did not move with the per-token GEMMs' persistent 128 x 256 TMA launch
that run41/run42's probes timed 10% faster per GEMM. The GELU FFN op at rankmixer-100m under bf16 autocast
(as the benchmark runs it): which path each GEMM takes (the TMA decision, which operands a descriptor can
address, dtypes, strides), then the op's fwd+bwd time with the default launch, with 128 x 128 tiles one per
program, and with UNIMIXER_FFN_TMA=0. Writes diag_ffn_op.json."""

import json
import os

import torch
import triton
from triton.testing import do_bench
from unimixer_kernels.triton_kernels import pswiglu as k

import unimixer_kernels as uk

OUT = os.environ.get("OUT", ".")
bs, t, d = 2048, 16, 768
kd = 4 * d
dev = "cuda"
u = torch.randn(bs, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
w1 = (torch.randn(t, d, kd, device=dev) * d ** -0.5).requires_grad_()
b1 = torch.randn(t, kd, device=dev).requires_grad_()
w2 = (torch.randn(t, kd, d, device=dev) * kd ** -0.5).requires_grad_()
b2 = torch.randn(t, d, device=dev).requires_grad_()
do = torch.randn(bs, t, d, device=dev, dtype=torch.bfloat16)

log = []
orig = k._token_gemm


def logged(a, b, c, tt, m, n, kk, sa, sb, sc, cdt, **kw):
    dual = kw.get("a2") is not None
    tma = kw.get("tma")
    decision = k._use_tma(m, n, kk, dual) if tma is None else tma
    ops = ((a, m, kk, (sa[0], sa[1], sa[2])), (b, kk, n, (sb[1], sb[0], sb[2])), (c, m, n, sc))
    descs = [k._operand_desc(x, r, tt, cc, st, cdt) for x, r, cc, st in ops]
    log.append(dict(m=m, n=n, k=kk, dual=dual, decision=str(decision), cdt=str(cdt),
                    addressable=[dd is not None for dd in descs], c_trans=descs[2][1] if descs[2] else None,
                    dtypes=[str(x.dtype) for x, *_ in ops], strides=[list(st) for *_, st in ops],
                    ptr_mod16=[x.data_ptr() % 16 for x, *_ in ops]))
    return orig(a, b, c, tt, m, n, kk, sa, sb, sc, cdt, **kw)


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        o = uk.pgelu_ffn(u, w1, b1, w2, b2, backend="triton")
    o.backward(do)


k._token_gemm = logged
step()
torch.cuda.synchronize()
k._token_gemm = orig
for row in log:
    print(row, flush=True)

times = {}
default = dict(k._TMA_LAUNCH)
VARIANTS = (("default", default[False], "auto"), ("128x128 tile/prog", (128, 128, 64, 8, 3, False), "auto"),
            ("128x256 tile/prog", (128, 256, 64, 8, 3, False), "auto"), ("TMA=0", default[False], "0"))
for name, launch, flag in VARIANTS:
    os.environ["UNIMIXER_FFN_TMA"] = flag
    k._TMA_LAUNCH[False] = launch
    times[name] = do_bench(step, warmup=10, rep=100)
    print(name, round(times[name], 4), flush=True)
k._TMA_LAUNCH.update(default)
os.environ["UNIMIXER_FFN_TMA"] = "auto"

prof = {}
for name, launch in (("default", default[False]), ("128x128 tile/prog", (128, 128, 64, 8, 3, False))):
    k._TMA_LAUNCH[False] = launch
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    ev = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA and "gemm" in e.name]
    prof[name] = [round(e.device_time / 1e3, 4) for e in ev[:7]]
    print(name, "per-GEMM ms (first step):", prof[name], flush=True)
k._TMA_LAUNCH.update(default)

with open(os.path.join(OUT, "diag_ffn_op.json"), "w") as f:
    json.dump(dict(torch=torch.__version__, triton=triton.__version__, device=torch.cuda.get_device_name(),
                   log=log, times=times, profile=prof), f, indent=1)
