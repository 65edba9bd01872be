"""Probe: the batched small-matrix Sinkhorn kernels with tl.exp against _exp_accurate, under the
GPU test rule (kernel error <= 5 x torch-fp32 error + tiny, gradients), on random small cases."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from unimixer_kernels.triton_kernels import sinkhorn as k  # noqa: E402

import unimixer_kernels as uk  # noqa: E402
from unimixer_kernels.testing import _full_precision_gemms  # noqa: E402,F401


def grads(x, g, tau, iters, sym):
    out = {}
    for name, acc in (("fast", False), ("accurate", True)):
        k.SMALL_EXP_ACCURATE = acc
        xx = x.clone().requires_grad_(True)
        out[name] = torch.autograd.grad(uk.sinkhorn(xx, tau, iters, sym, backend="triton"), xx, g)[0]
    for name, dt in (("ref", torch.float64), ("torch", torch.float32)):
        xx = x.to(dt).clone().requires_grad_(True)
        ref = uk.sinkhorn(xx, tau, iters, sym, backend="reference")
        out[name] = torch.autograd.grad(ref, xx, g.to(dt))[0]
    return out


stats = {"fast": [0, 0.0], "accurate": [0, 0.0]}
gen = torch.Generator().manual_seed(0)
cases = 0
for trial in range(600):
    n = int(torch.randint(1, 9, (1,), generator=gen))
    batch = int(torch.randint(1, 4, (1,), generator=gen))
    iters = int(torch.randint(1, 8, (1,), generator=gen))
    tau = [0.05, 0.1, 0.5][int(torch.randint(0, 3, (1,), generator=gen))]
    sym = bool(torch.randint(0, 2, (1,), generator=gen))
    torch.manual_seed(trial)
    x = torch.randn(batch, n, n, device="cuda")
    g = torch.randn(batch, n, n, device="cuda")
    o = grads(x, g, tau, iters, sym)
    ref = o["ref"].cpu()
    base = (o["torch"].double().cpu() - ref).abs().max().item()
    tiny = max(1e-6, 0.5 * torch.finfo(torch.float32).eps) * max(ref.abs().max().item(), 1.0)
    cases += 1
    for name in ("fast", "accurate"):
        err = (o[name].double().cpu() - ref).abs().max().item()
        stats[name][0] += err > 5 * base + tiny
        stats[name][1] = max(stats[name][1], (err - tiny) / max(base, 1e-30))
    if trial % 100 == 99:
        print(trial + 1, {kk: (v[0], round(v[1], 2)) for kk, v in stats.items()}, flush=True)
print(f"{cases} random cases (n 1..8, batch 1..3, K 1..7, tau 0.05/0.1/0.5, symmetric or not):")
for name, (fails, worst) in stats.items():
    print(f"  {name:9s} fails the 5x rule in {fails}; largest (err - tiny) / torch-fp32 err {worst:.2f}")
