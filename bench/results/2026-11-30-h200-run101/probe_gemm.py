"""UniMixing's three memory-path GEMMs at paper-100m (bs 2048, B 4, N 4096, bf16), each tile config
timed alone: is the forward GEMM's extra time its B operand's layout (W_G^T, K contiguous) or its
epilogue (the [bs, T, D] rearrangement)? cuBLAS on the same products for reference."""
import torch
import triton
from unimixer_kernels.triton_kernels import unimixing as k

torch.manual_seed(0)
bs, b, n = 2048, 4, 4096
t, d = 32, 512
L = t * d
m = bs * b
dev = "cuda"
dt = torch.bfloat16
ht = torch.randn(bs, b, n, device=dev, dtype=dt)
wg = torch.randn(n, n, device=dev, dtype=dt) / 64
wgt = wg.t().contiguous()
y = torch.empty(bs, t, d, device=dev, dtype=dt)
flat = torch.empty(m, n, device=dev, dtype=dt)
dwg32 = torch.empty(1, n, n, device=dev, dtype=torch.float32)
dwg16 = torch.empty(1, n, n, device=dev, dtype=dt)
FLOP = 2 * m * n * n


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2 * reps)]
    for i in range(reps):
        ev[2 * i].record()
        fn()
        ev[2 * i + 1].record()
    torch.cuda.synchronize()
    ts = sorted(ev[2 * i].elapsed_time(ev[2 * i + 1]) * 1e3 for i in range(reps))
    return ts[len(ts) // 2]


def launch(kind, a, bm_, out, sa, sb, block, cfg, splits=(1, None)):
    (kw, warps, stages) = cfg
    kw = dict(kw)
    kk = n if kind != 2 else m
    mm, nc = (m, n) if kind != 2 else (n, n)
    p, per = splits[0], (splits[1] or kk)
    grid = (triton.cdiv(mm, kw["BM"]) * triton.cdiv(nc, kw["BN"]), p)
    return lambda: k.unimixing_gemm_kernel[grid](
        a, bm_, out, out, mm, nc, kk, per, *sa, *sb, L, m, KIND=kind, BLOCK=block, HAS_RESIDUAL=False,
        GROUP=8, DOT_DTYPE=k.tl.bfloat16, PRECISION="tf32", num_warps=warps, num_stages=stages, **kw)


variants = {
    "fwd kind0, B=W_G^T via strides (1,n) [current]": (0, ht, wg, y, (n, 1), (1, n), b),
    "fwd kind0, B row-major (W_G^T copied)": (0, ht, wgt, y, (n, 1), (n, 1), b),
    "fwd kind1-epilogue, B strides (1,n)": (1, ht, wg, flat, (n, 1), (1, n), 1),
    "fwd kind1-epilogue, B row-major": (1, ht, wgt, flat, (n, 1), (n, 1), 1),
    "bwd G kind1 [current]": (1, ht, wg, flat, (n, 1), (n, 1), 1),
    "dW_G kind2 bf16 out [current]": (2, ht, ht, dwg16, (1, n), (n, 1), 1),
    "dW_G kind2 fp32 out": (2, ht, ht, dwg32, (1, n), (n, 1), 1),
}
for name, (kind, a, bm_, out, sa, sb, block) in variants.items():
    res = []
    for cfg in k._gemm_configs(True):
        try:
            us = timed(launch(kind, a, bm_, out, sa, sb, block, cfg))
            res.append((us, cfg))
        except Exception as e:  # noqa: BLE001
            res.append((float("inf"), (cfg, type(e).__name__)))
    res.sort(key=lambda r: r[0])
    print(f"{name}: best {res[0][0]:.1f} us ({FLOP / res[0][0] / 1e6:.0f} TFLOP/s) "
          + "; ".join(f"{dict(c[0])['BM']}x{dict(c[0])['BN']}x{dict(c[0])['BK']} w{c[1]} s{c[2]} {u:.1f}"
                      for u, c in res if u != float('inf')), flush=True)

a2 = ht.view(m, n)
print(f"cuBLAS H^T W_G^T (B transposed): {timed(lambda: torch.mm(a2, wg.t(), out=flat)):.1f} us")
print(f"cuBLAS H^T W_G (B row-major): {timed(lambda: torch.mm(a2, wg, out=flat)):.1f} us")
print(f"cuBLAS dW_G = dY^T H (A transposed): {timed(lambda: torch.mm(a2.t(), a2, out=dwg16[0])):.1f} us")
try:
    print(f"cuBLAS dW_G fp32 out_dtype: "
          f"{timed(lambda: torch.mm(a2.t(), a2, out_dtype=torch.float32)):.1f} us")
except Exception as e:  # noqa: BLE001
    print("out_dtype:", type(e).__name__, e)
print(f"cast W_G fp32->bf16: {timed(lambda: wg.float().to(dt)):.1f} us (includes the float())")
w32 = wg.float()
print(f"cast W_G fp32->bf16 alone: {timed(lambda: w32.to(dt)):.1f} us")
print(f"cast dW_G bf16->fp32 alone: {timed(lambda: dwg16.to(torch.float32)):.1f} us")
print(f"transpose-cast fp32->bf16 W_G^T: {timed(lambda: w32.t().contiguous().to(dt)):.1f} us")
print(f"cast fp32->bf16 into W_G^T: {timed(lambda: wgt.copy_(w32.t())):.1f} us")
