"""The split-bf16 fp32 GEMM (``triton_kernels/gemm_fp32.py``) against cuBLAS's IEEE fp32 GEMM.

``python -m bench.gemm_fp32 [--preset paper-100m,paper-small] [--config BMxBNxBKxWxSxSPLIT ...]``
times the three GEMMs of the Lite global weight at each preset's ``N`` and ``r``:

* ``form``: ``A_G @ B_G``, ``[N, r] @ [r, N]`` (once per direction);
* ``dA``: ``dM @ B_G^T``, ``[N, N] @ [N, r]`` (``B_G^T`` a transposed view);
* ``dB``: ``A_G^T @ dM``, ``[r, N] @ [N, N]`` (``A_G^T`` a transposed view);

each by cuBLAS (TF32 off), by the kernel with its own plan (``mm_fp32``: both operands split into
bf16 parts, then the GEMM), by its GEMM alone on parts split beforehand (``mm_parts``), and by that
GEMM with every ``--config``; and its error, ``max|C - C64| / max|cuBLAS - C64|`` over ``--seeds``
draws (the SPEC §8 output rule allows 2). Prints a markdown table, also written to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.presets import get_preset  # noqa: E402
from bench.timing import time_ms  # noqa: E402


def _config(text: str):
    from unimixer_kernels.triton_kernels.gemm_fp32 import GemmConfig

    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) != 6:
        raise argparse.ArgumentTypeError(f"--config: expected BMxBNxBKxWARPSxSTAGESxSPLIT, got {text!r}")
    return GemmConfig(*parts)


def _operands(kind: str, n: int, r: int, device, gen):
    a_g = torch.randn(n, r, device=device, generator=gen) * r ** -0.5
    b_g = torch.randn(r, n, device=device, generator=gen)
    if kind == "form":
        return a_g, b_g
    dm = torch.randn(n, n, device=device, generator=gen)
    return (dm, b_g.t()) if kind == "dA" else (a_g.t(), dm)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper-100m,paper-small")
    ap.add_argument("--config", type=_config, nargs="*", default=[])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from unimixer_kernels.triton_kernels.gemm_fp32 import mm_fp32, mm_parts, plan, split_parts

    if not torch.cuda.is_available():
        print("bench.gemm_fp32: needs a CUDA GPU (it times the kernel against cuBLAS)")
        return 1
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = ["| preset | GEMM | M x N x K | provider | ms | TFLOP/s (fp32) | error / cuBLAS's (worst of "
            "seeds) |", "|---|---|---|---|---|---|---|"]
    for name in args.preset.split(","):
        p = get_preset(name)
        n, r = p["N"], p["r"]
        for kind in ("form", "dA", "dB"):
            a, b = _operands(kind, n, r, device, torch.Generator(device).manual_seed(0))
            m, k, nn = a.shape[0], a.shape[1], b.shape[1]
            cfg = tuple(plan(m, nn, k, device))
            # (label, fn, whether fn takes the operands' parts rather than the operands)
            providers = [("cuBLAS", torch.mm, False), (f"split + GEMM {cfg}", mm_fp32, False)]
            providers += [(f"GEMM {tuple(c or cfg)}", lambda x, y, c=c: mm_parts((x, y), config=c)[0], True)
                          for c in [None, *args.config]]
            for label, fn, on_parts in providers:
                prep = (lambda t: split_parts(t)[0]) if on_parts else (lambda t: t)
                worst = 0.0
                for seed in range(args.seeds):
                    x, y = _operands(kind, n, r, device, torch.Generator(device).manual_seed(seed))
                    ref = x.double() @ y.double()
                    e_cublas = (torch.mm(x, y).double() - ref).abs().max().item()
                    worst = max(worst, (fn(prep(x), prep(y)).double() - ref).abs().max().item() / e_cublas)
                x, y = prep(a), prep(b)
                ms = time_ms(lambda fn=fn, x=x, y=y: fn(x, y), device, 25, 100)
                rows.append(f"| {name} | {kind} | {m} x {nn} x {k} | {label} | {ms:.4f} | "
                            f"{2 * m * nn * k / ms / 1e9:.1f} | {worst:.2f} |")
                print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
