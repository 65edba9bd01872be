"""A CPU model of the fp32 UniMixing kernels' summation order, against torch-fp32 and fp64.

``python -m bench.accumulation`` reproduces ``test_unimixing_preset_gpu[fp32-paper-100m]`` (bs=16,
N=4096, B=4; seeds 0 and 1): the forward's global sum and the backward's ``W_G^T dY`` sum over
``N`` terms, each term one fused multiply-add (emulated exactly in fp64, rounded to fp32), in
chunks of ``BK`` terms, with 1, 2 or 4 accumulators taking the chunks in turn. On the H200 the
one-accumulator forward was 1.05e-5 from fp64 where torch-fp32 was 2.1e-6 (bench/NOTES.md).
Takes about a minute.
"""

from __future__ import annotations

import numpy as np
import torch

BS, N, B = 16, 4096, 4


def _sum(w: np.ndarray, terms: np.ndarray, nacc: int, bk: int) -> np.ndarray:
    """``sum_k w[:, k] * terms[k, :]`` in fp32, one FMA per term, ``nacc`` interleaved accumulators."""
    accs = [np.zeros((w.shape[0], terms.shape[1]), np.float32) for _ in range(nacc)]
    for c, k0 in enumerate(range(0, w.shape[1], bk)):
        acc = accs[c % nacc]
        for k in range(k0, min(k0 + bk, w.shape[1])):
            acc[...] = (acc.astype(np.float64) + w[:, k:k + 1] * terms[k:k + 1, :]).astype(np.float32)
    total = accs[0]
    for acc in accs[1:]:
        total = (total + acc).astype(np.float32)
    return total


def _mix(x, wl, wg):
    return torch.einsum("mn,snc->smc", wg, torch.einsum("snb,nbc->snc", x, wl))


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(BS, N, B)
    wl = torch.randn(N, B, B) * B ** -0.5
    wg = torch.randn(N, N) * N ** -0.5
    ref = _mix(x.double(), wl.double(), wg.double())
    print(f"forward: torch-fp32 {(_mix(x, wl, wg).double() - ref).abs().max():.3g}")
    h = torch.einsum("snb,nbc->snc", x, wl).permute(1, 0, 2).reshape(N, BS * B).double().numpy()
    ref_cols = ref.permute(1, 0, 2).reshape(N, BS * B).numpy()
    for nacc in (1, 2, 4):
        y = _sum(wg.double().numpy(), h, nacc, bk=16)
        print(f"forward: kernel order, {nacc} accumulator(s) {np.abs(y - ref_cols).max():.3g}")

    torch.manual_seed(1)
    x = torch.randn(BS, N, B, requires_grad=True)
    wl = (torch.randn(N, B, B) * B ** -0.5).requires_grad_()
    wg = (torch.randn(N, N) * N ** -0.5).requires_grad_()
    gy = torch.randn(BS, N, B)
    leaves = [t.detach().double().requires_grad_() for t in (x, wl, wg)]
    dx_ref = torch.autograd.grad(_mix(*leaves), leaves[0], gy.double())[0]
    dx_pt = torch.autograd.grad(_mix(x, wl, wg), x, gy)[0]
    print(f"dX: torch-fp32 {(dx_pt.double() - dx_ref).abs().max():.3g}")
    gcols = gy.permute(1, 0, 2).reshape(N, BS * B).double().numpy()
    g = _sum(wg.detach().double().numpy().T, gcols, 1, bk=32).reshape(N, BS, B).transpose(1, 0, 2)
    dx = np.einsum("snc,nbc->snb", g, wl.detach().numpy()).astype(np.float64)
    print(f"dX: kernel order, 1 accumulator {np.abs(dx - dx_ref.numpy()).max():.3g}")


if __name__ == "__main__":
    main()
