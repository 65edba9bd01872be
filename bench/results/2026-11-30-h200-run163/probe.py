"""Probe: where the cuda backend's Sinkhorn crashed in run162 (a host segmentation fault with
UNIMIXER_SINKHORN_CUDA_WARPS set). Each case in its own process: n, the warps switch, forward and
backward; the exit status and the last lines of its output; then gdb's backtrace of the first case
that crashed, where gdb is installed.

    PYTHONPATH=$PWD python probe.py   (on a GPU, from the repository root, the extension built)
"""

import os
import shutil
import subprocess
import sys

CASE = """
import faulthandler, os, sys, torch
faulthandler.enable()
import unimixer_kernels as uk
n, warps = int(sys.argv[1]), sys.argv[2]
os.environ["UNIMIXER_SINKHORN_CUDA_WARPS"] = warps
os.environ["UNIMIXER_SINKHORN_CHECK"] = "1"
x = torch.randn(n, n, device="cuda", requires_grad=True)
try:
    p = uk.sinkhorn(x, 0.05, 20, True, backend="cuda")
    torch.cuda.synchronize()
    print("forward ok", float(p.sum()), flush=True)
    (dx,) = torch.autograd.grad(p, x, torch.randn_like(p))
    torch.cuda.synchronize()
    print("backward ok", float(dx.abs().max()), flush=True)
except Exception as exc:
    print("raised", type(exc).__name__, str(exc)[:600], flush=True)
"""

crashed = None
for n, warps in [(300, "auto"), (300, "8"), (300, "16"), (1024, "auto"), (1024, "16"), (1024, "8")]:
    r = subprocess.run([sys.executable, "-c", CASE, str(n), warps], capture_output=True, text=True,
                       timeout=120)
    tail = (r.stdout + r.stderr).strip().splitlines()[-6:]
    print(f"n={n} warps={warps}: rc={r.returncode}", *tail, sep="\n    ", flush=True)
    if r.returncode != 0 and crashed is None:
        crashed = (n, warps)

if crashed and shutil.which("gdb"):
    n, warps = crashed
    r = subprocess.run(["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", CASE,
                        str(n), warps], capture_output=True, text=True, timeout=200,
                       env=dict(os.environ))
    print("gdb:", *[ln for ln in r.stdout.splitlines() if ln.startswith("#") or "SIG" in ln][:40], sep="\n")
elif crashed:
    print("no gdb here")
