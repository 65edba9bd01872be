"""Probe: rms_norm_bwd_partials at paper-small ([65536, 128] bf16) by programs per SM and tile."""

import json
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.getcwd())
from unimixer_kernels.triton_kernels import _launch  # noqa: E402
from unimixer_kernels.triton_kernels import rms_norm as k  # noqa: E402

m, d = 2048 * 32, 128
dev = torch.device("cuda")
s = torch.randn(m, d, device=dev, dtype=torch.bfloat16)
dy = torch.randn_like(s)
dsum = torch.randn_like(s)
w = torch.randn(d, device=dev, dtype=torch.bfloat16)
rstd = torch.rand(m, device=dev) + 0.5
orig = _launch.num_programs_for
out = {}
for per_sm in (4, 8, 16, 10**6):
    for tile in (4096, 8192, 2048):
        for has_dsum in (False, True):
            def f(has_dsum=has_dsum):
                return k.rms_norm_bwd_partials(dy, dsum if has_dsum else None, s, w, rstd)

            with mock.patch.object(k, "num_programs_for", lambda r, dv, per_sm=per_sm: orig(r, dv, per_sm)), \
                 mock.patch.object(k, "TILE_ELEMENTS", tile):
                for _ in range(3):
                    f()
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    for _ in range(20):
                        f()
                for _ in range(3):
                    g.replay()
                torch.cuda.synchronize()
                ts = []
                for _ in range(15):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    g.replay()
                    b.record()
                    b.synchronize()
                    ts.append(a.elapsed_time(b) * 1000 / 20)
                ts.sort()
                key = f"per_sm={per_sm} tile={tile} dsum={has_dsum}"
                out[key] = ts[len(ts) // 2]
                print(key, f"{out[key]:.1f} us", flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "probe_norm_bwd.json"), "w"), indent=1)
