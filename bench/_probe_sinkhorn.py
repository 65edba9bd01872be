import sys, time, itertools
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import unimixer_kernels  # noqa
from unimixer_kernels.triton_kernels import sinkhorn as k

n, tau = 1024, 0.05
torch.manual_seed(0)
x = torch.randn(1, n, n, device="cuda")
dp = torch.randn(1, n, n, device="cuda")
k.PERSISTENT_CHECK = False

def timed(fn, reps=40):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True); b = torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts)//2]

ref = None
configs = [("tiled", dict(RESIDENT=False)),
           ("res 64x128 w16 poll", dict(RESIDENT=True, RESIDENT_TILE=(64,128), RESIDENT_WARPS=16, RESIDENT_SPIN=False)),
           ("res 64x128 w16 spin", dict(RESIDENT=True, RESIDENT_TILE=(64,128), RESIDENT_WARPS=16, RESIDENT_SPIN=True)),
           ("res 64x128 w8 spin", dict(RESIDENT=True, RESIDENT_TILE=(64,128), RESIDENT_WARPS=8, RESIDENT_SPIN=True)),
           ("res 128x64 w16 spin", dict(RESIDENT=True, RESIDENT_TILE=(128,64), RESIDENT_WARPS=16, RESIDENT_SPIN=True)),
           ("res 128x128 w16 spin", dict(RESIDENT=True, RESIDENT_TILE=(128,128), RESIDENT_WARPS=16, RESIDENT_SPIN=True)),
           ("res 128x128 w8 spin", dict(RESIDENT=True, RESIDENT_TILE=(128,128), RESIDENT_WARPS=8, RESIDENT_SPIN=True)),
           ("res 64x128 w4 spin", dict(RESIDENT=True, RESIDENT_TILE=(64,128), RESIDENT_WARPS=4, RESIDENT_SPIN=True)),
           ]
for sym in (True, False):
  for name, cfg in configs:
    for kk, vv in cfg.items(): setattr(k, kk, vv)
    try:
        row = []
        for K in (20, 2):
            p, u, v = k.sinkhorn_fwd(x, tau, K, sym)
            dx = k.sinkhorn_bwd(dp, x, u, v, tau, K, sym)
            if K == 20:
                if ref is None or ref[0] != sym: ref = (sym, p.clone(), dx.clone())
                err = ((p - ref[1]).abs().max().item(), (dx - ref[2]).abs().max().item())
            tf = timed(lambda: k.sinkhorn_fwd(x, tau, K, sym))
            tb = timed(lambda: k.sinkhorn_bwd(dp, x, u, v, tau, K, sym))
            row += [tf, tb]
        print(f"sym={sym} {name:24s} K=20 fwd {row[0]*1e3:7.1f} us bwd {row[1]*1e3:7.1f} us | K=2 fwd {row[2]*1e3:6.1f} bwd {row[3]*1e3:6.1f} | per half-step fwd {(row[0]-row[2])/36*1e3:5.2f} bwd {(row[1]-row[3])/36*1e3:5.2f} us | err {err[0]:.2e} {err[1]:.2e}", flush=True)
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:300], flush=True)
