"""Run every Triton op once, forward and backward, at a small size: the script that
``compute-sanitizer --tool memcheck|racecheck`` wraps in ``bench/gpu_run.sh``.

    python bench/sanitize.py [--op NAME ...] [--dtype bf16|fp32|fp16]

Shapes are small and not powers of two (masks, tails and more than one program are exercised)
and bounded so that a run under the sanitizer stays short. Prints one line per op; exits non-zero
when any op raises. Set ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` under memcheck so that an
out-of-bounds access cannot land in a cached block.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SANITIZE_SIZES = dict(bs=5, T=5, D=40, B=4, r=7, nb=3, h=24, ffn_mult=2, n=11, d=40, fm_k=6, iters=3,
                      tau=0.05)


@contextlib.contextmanager
def _patched(module, attrs: dict, env: dict, sizes: dict | None = None, also=None):
    """A module's attributes, environment switches and other sanitizer sizes (``SANITIZE_SIZES`` is
    read inside the path's ``with``), and ``also``, another context, entered with them."""
    with contextlib.ExitStack() as stack:
        if also is not None:
            stack.enter_context(also)
        if attrs:
            stack.enter_context(mock.patch.multiple(module, **attrs))
        stack.enter_context(mock.patch.dict(os.environ, env))
        stack.enter_context(mock.patch.dict(SANITIZE_SIZES, sizes or {}))
        yield


def _variants(name: str) -> list[tuple[str, contextlib.AbstractContextManager]]:
    """The kernel paths an op can take at these sizes: the default one, plus each path that the
    small shapes would not reach by themselves (forced here, so that the sanitizer sees it)."""
    # the kernel modules as the ops import them (the package maps the checkout's triton_kernels/):
    # a plain ``import triton_kernels`` from the repo root would be a second copy, which no op reads
    from unimixer_kernels.triton_kernels import gemm_fp32, pswiglu, sinkhorn, token_mixer
    from unimixer_kernels.triton_kernels._launch import (
        FFN_BACKWARD_SWITCH,
        FFN_CHUNK_SWITCH,
        FFN_GEMM_SWITCH,
        FFN_TMA_SWITCH,
        NORM_SWITCH,
        PAIRS_SWITCH,
        PDL_SWITCH,
        PERSISTENT_SWITCH,
        TILE_SWITCH,
        UNIMIXING_BWD_GLOBAL_SWITCH,
        UNIMIXING_BWD_SWITCH,
        UNIMIXING_FWD_SWITCH,
        UNIMIXING_GEMM_SWITCH,
        UNIMIXING_SAVE_H_SWITCH,
    )

    paths: list[tuple[str, contextlib.AbstractContextManager]] = [("", contextlib.nullcontext())]
    if name in ("pswiglu", "pgelu_ffn"):
        # the tiled per-token GEMMs that tokens wider than FUSED_MAX_D take
        paths.append((" [wide-token GEMM path]", mock.patch.object(pswiglu, "FUSED_MAX_D", 0)))
        for tma in ("0", "1"):  # the project's GEMM kernel (16-bit operands on CUDA take cuBLAS by
            # default): every GEMM by pointers; every GEMM through tensor descriptors, which then start
            # inside the tensors (one token per pass)
            env = {FFN_GEMM_SWITCH: "triton", FFN_TMA_SWITCH: tma, FFN_CHUNK_SWITCH: "1"}
            paths.append((f" [wide-token GEMM path, {FFN_GEMM_SWITCH}=triton, {FFN_TMA_SWITCH}={tma}, "
                          f"{FFN_CHUNK_SWITCH}=1]", _patched(pswiglu, dict(FUSED_MAX_D=0), env)))
        paths.append((f" [{FFN_BACKWARD_SWITCH}=recompute]",
                      mock.patch.dict(os.environ, {FFN_BACKWARD_SWITCH: "recompute"})))
    if name in ("pswiglu", "unimixing_rmsnorm_pswiglu") and torch.cuda.is_available() \
            and torch.cuda.get_device_capability() >= (9, 0):
        # the backward's token passes chained by programmatic dependent launch (three passes at T = 5):
        # the act kernels that read their rows before the wait, the sums that release first
        paths.append((f" [{PDL_SWITCH}=1, {FFN_CHUNK_SWITCH}=2]",
                      mock.patch.dict(os.environ, {PDL_SWITCH: "1", FFN_CHUNK_SWITCH: "2"})))
    if name == "token_mixer_residual_norm":
        # several samples a program in the backward, so that its workspace's two slots alternate
        paths.append((" [300 samples, 1 backward program an SM]",
                      _patched(token_mixer, dict(TM_BWD_META=dict(token_mixer.TM_BWD_META, per_sm=1)), {},
                               sizes=dict(bs=300))))
    if name in ("sinkhorn", "lite_weights"):
        # tiled matrices with several tiles per axis: one launch per half-step, and the resident
        # kernels (a program per tile)
        tiled = dict(TILE_OVERRIDE=(16, 16), SMALL_MAX_N=4, RESIDENT=False)
        paths.append((f" [tiled, 16x16 tiles, {PERSISTENT_SWITCH}=0]",
                      mock.patch.multiple(sinkhorn, **tiled)))
        # symmetric logits take one program per pair of mirrored tiles by default; one per tile too
        paths.append((f" [tiled, 16x16 tiles, {PAIRS_SWITCH}=0]",
                      _patched(sinkhorn, tiled, {PAIRS_SWITCH: "0"})))
        paths.append((" [tiled, resident, 16x16 tiles]",
                      mock.patch.multiple(sinkhorn, **dict(tiled, RESIDENT=True, RESIDENT_CHECK=True))))
        # the resident build N = 1024 runs (64 x 128 tiles, RESIDENT_WARPS), whose partial blocks are
        # sized so that no word is replicated across warps (racecheck would see their reductions)
        paths.append((" [tiled, resident, 64x128 tiles]",
                      mock.patch.multiple(sinkhorn, **dict(tiled, TILE_OVERRIDE=(64, 128), RESIDENT=True,
                                                           RESIDENT_CHECK=True))))
        if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0):
            paths.append((f" [tiled, {PDL_SWITCH}=1]", _patched(sinkhorn, tiled, {PDL_SWITCH: "1"})))
        # the switch's own tile shape, on matrices past SMALL_MAX_N
        paths.append((f" [tiled, {TILE_SWITCH}=16x32]",
                      _patched(sinkhorn, dict(SMALL_MAX_N=4, RESIDENT=False), {TILE_SWITCH: "16x32"})))
    if name == "lite_weights":
        # fp32 factors of rank > LOWRANK_MATERIALISE_MIN_RANK (r = 7 here): A_G @ B_G, dA_G and dB_G by
        # the split GEMM, here in 16 x 32 tiles with K = N = 50 split in four for dA_G and dB_G (fp32
        # partials, sum_partials), whatever the plan would pick at these sizes
        split = dict(SMALL_MAX_N=4, LOWRANK_MATERIALISE_MIN_RANK=0, TILE_OVERRIDE=(16, 16), RESIDENT=False)
        tiles = gemm_fp32.GemmConfig(16, 32, 16, 4, 2, 4)
        gemm = mock.patch.object(gemm_fp32, "plan", lambda m, n, k, device: tiles)
        paths.append((" [fp32 factors as bf16 parts: the split GEMM, K split in four]",
                      _patched(sinkhorn, split, {}, also=gemm)))
    if name == "unimixing_rmsnorm_pswiglu":
        # the backward's token passes (three of two tokens and one of one at T = 5), and the
        # wide-token FFN path with them
        paths.append((f" [{FFN_CHUNK_SWITCH}=2]", mock.patch.dict(os.environ, {FFN_CHUNK_SWITCH: "2"})))
        paths.append((f" [wide-token GEMM path, {FFN_CHUNK_SWITCH}=2]",
                      _patched(pswiglu, dict(FUSED_MAX_D=0), {FFN_CHUNK_SWITCH: "2"})))
    if name in ("unimixing_rmsnorm", "unimixing_rmsnorm_pswiglu"):
        paths.append((f" [{NORM_SWITCH}=fused]", mock.patch.dict(os.environ, {NORM_SWITCH: "fused"})))
    if name in ("unimixing", "unimixing_rmsnorm"):
        gemms = {UNIMIXING_BWD_SWITCH: "gemm", UNIMIXING_FWD_SWITCH: "gemm"}
        paths.append((f" [{UNIMIXING_BWD_SWITCH}=gemm, {UNIMIXING_FWD_SWITCH}=gemm]",
                      mock.patch.dict(os.environ, gemms)))
        # the project's GEMM kernel in place of cuBLAS, its G GEMM reading the forward's W_G^T
        label = f" [{UNIMIXING_BWD_SWITCH}=gemm, {UNIMIXING_FWD_SWITCH}=gemm, {UNIMIXING_GEMM_SWITCH}=triton]"
        paths.append((label, mock.patch.dict(os.environ, {**gemms, UNIMIXING_GEMM_SWITCH: "triton"})))
        # D = 96: N = 120, rows of 240 bytes, so that the forward GEMM reads 16-bit operands through
        # tensor descriptors (at D = 40, N = 50, they take pointers)
        paths.append((f" [{UNIMIXING_FWD_SWITCH}=gemm, D=96: the forward GEMM's descriptors in 16-bit]",
                      _patched(None, {}, {UNIMIXING_FWD_SWITCH: "gemm"}, sizes=dict(D=96))))
        # B = 20: the natural-layout memory path (dots per block), the forward's H saved for the
        # backward (its G and dW_G in one kernel, or as two GEMMs), or formed and written again there
        paths.append((" [B=20: the per-block dots, the forward's H saved, G and dW_G in one kernel]",
                      _patched(None, {}, {}, sizes=dict(B=20))))
        paths.append((f" [B=20, {UNIMIXING_BWD_GLOBAL_SWITCH}=split]",
                      _patched(None, {}, {UNIMIXING_BWD_GLOBAL_SWITCH: "split"}, sizes=dict(B=20))))
        paths.append((f" [B=20, {UNIMIXING_SAVE_H_SWITCH}=recompute]",
                      _patched(None, {}, {UNIMIXING_SAVE_H_SWITCH: "recompute"}, sizes=dict(B=20))))
    return paths


def main(argv: list[str] | None = None) -> int:
    import unimixer_kernels as uk
    from bench.cases import case_of_op
    from bench.presets import Preset

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", action="append", help="only these ops (repeatable)")
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--autocast", action="store_true",
                        help="run under torch.autocast(--dtype), as the benchmarks do: the GEMM-like ops "
                        "then get 16-bit weights too and take their tensor-core paths (without it, "
                        "16-bit activations with fp32 weights take the fp32 paths)")
    args = parser.parse_args(argv)
    from unimixer_kernels._registry import triton_interpreter_on

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif triton_interpreter_on():  # a dry run of this script on a CPU
        device = torch.device("cpu")
    else:
        print("sanitize: no CUDA device (and TRITON_INTERPRET is not 1); nothing to run")
        return 0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    failures = 0
    runs = []
    for name in sorted(uk.OPS):
        if args.op and name not in args.op:
            continue
        if args.backend not in uk.OPS[name].impls:
            continue
        case = case_of_op(name)
        if case is None:
            print(f"{name}: no inputs in bench/cases.py, not run")
            continue
        runs += [(rank, name, case, label, path) for rank, (label, path) in enumerate(_variants(name))]
    # every op's default path first, the forced paths after
    for _, name, case, label, path in sorted(runs, key=lambda r: r[0]):
        t0 = time.perf_counter()
        try:
            with path:
                setup = case.factory(Preset("sanitize", dict(SANITIZE_SIZES)), device, dtype)
                impl = setup.impls[args.backend]()
                inputs = setup.make_inputs()
                autocast = args.autocast and dtype != torch.float32
                with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                    out = impl.fwd(*inputs)
                outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,))
                        if isinstance(o, torch.Tensor) and o.requires_grad]
                leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
                torch.autograd.grad(outs, leaves, [torch.randn_like(o) for o in outs], allow_unused=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            print(f"{name}{label}: ok fwd+bwd ({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as exc:
            failures += 1
            print(f"{name}{label}: ERROR {type(exc).__name__}: {exc}".splitlines()[0][:400], flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
