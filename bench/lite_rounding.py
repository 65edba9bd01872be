"""How often the Lite local gradient ``d omega`` misses SPEC §8's 5x rule, kernel against torch.

``python -m bench.lite_rounding [--seeds N]`` reruns the analysis in ``bench/NOTES.md`` at the shape
where the GPU hypothesis sweep failed (``n=4, nb=1, B=46, r=4, iters=4, tau=0.05``, fp32, not
symmetric), on the CPU. For each seed it prints nothing unless a check fails, then:

* ``kernel``: ``max|kernel - fp64| / max|torch-fp32 - fp64|`` for ``d omega`` (the Triton backend
  through the interpreter, which this script switches on);
* ``torch, permuted``: the same ratio for torch-fp32 on the blocks with rows and columns permuted
  (an equally valid summation order), against torch-fp32 as it is.

The run7 numbers (200 kernel seeds, 300 torch seeds) took about ten minutes; the default of 40
seeds takes two.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(n=4, nb=1, bsz=46, r=4)
TAU, ITERS = 0.05, 4


def _d_omega(inputs, grads, dtype, backend, perm=None):
    import torch

    import unimixer_kernels as uk

    ins = [t.detach().to(dtype).requires_grad_() for t in inputs]
    basis = ins[1] if perm is None else ins[1][:, perm][:, :, perm]
    w_local, w_global = uk.lite_weights(ins[0], basis, ins[2], ins[3], TAU, ITERS, False,
                                        backend=backend)
    if perm is not None:
        inv = torch.argsort(perm)
        w_local = w_local[:, inv][:, :, inv]
    g = torch.autograd.grad((w_local, w_global), ins, [x.to(dtype) for x in grads])
    return g[0].double()


def _summary(name: str, ratios: list[float]) -> str:
    r = sorted(ratios)
    return (f"{name}: {len(r)} seeds, ratio max {r[-1]:.2f}, 95% {r[int(0.95 * (len(r) - 1))]:.2f}, "
            f"median {r[len(r) // 2]:.2f}, above 5: {sum(x > 5 for x in r)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=40)
    args = parser.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernel runs on the CPU
    import torch

    from unimixer_kernels.testing import lite_weights_inputs

    kernel, permuted = [], []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        inputs = lite_weights_inputs(*SHAPE.values(), torch.float32)
        n, bsz = SHAPE["n"], SHAPE["bsz"]
        grads = [torch.randn(n, bsz, bsz, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)]
        ref = _d_omega(inputs, grads, torch.float64, "reference")
        pt_err = (_d_omega(inputs, grads, torch.float32, "reference") - ref).abs().max().item()
        k_err = (_d_omega(inputs, grads, torch.float32, "triton") - ref).abs().max().item()
        perm = torch.randperm(bsz)
        p_err = (_d_omega(inputs, grads, torch.float32, "reference", perm) - ref).abs().max().item()
        kernel.append(k_err / pt_err)
        permuted.append(p_err / pt_err)
        if k_err / pt_err > 5:
            print(f"seed {seed}: kernel {k_err:.3e} against torch {pt_err:.3e} ({k_err / pt_err:.1f}x)")
    print(_summary("kernel", kernel))
    print(_summary("torch, permuted", permuted))


if __name__ == "__main__":
    main()
