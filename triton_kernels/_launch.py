"""Launch helpers shared by the kernels: 2-d row views, grid sizing, autotune-key bucketing."""

from __future__ import annotations

import functools
import os

import torch

POISON_ENV = "UNIMIXER_POISON_OUTPUTS"

# Environment switches that change how a kernel runs, not what it computes: variable -> (default,
# what it does). The kernel modules read them; ``python -m unimixer_kernels.info`` lists them.
# Set them before the first kernel call (Sinkhorn reads its switch when its module is imported).
NORM_SWITCH = "UNIMIXER_UNIMIXING_NORM"
PERSISTENT_SWITCH = "UNIMIXER_SINKHORN_PERSISTENT"
FFN_BACKWARD_SWITCH = "UNIMIXER_FFN_BACKWARD"
PDL_SWITCH = "UNIMIXER_PDL"
TILE_SWITCH = "UNIMIXER_SINKHORN_TILE"
PAIRS_SWITCH = "UNIMIXER_SINKHORN_PAIRS"
UNIMIXING_BWD_SWITCH = "UNIMIXER_UNIMIXING_BACKWARD"
UNIMIXING_FWD_SWITCH = "UNIMIXER_UNIMIXING_FORWARD"
LOCAL_TILE_SWITCH = "UNIMIXER_UNIMIXING_LOCAL_TILE"
UNIMIXING_GEMM_SWITCH = "UNIMIXER_UNIMIXING_GEMM"
UNIMIXING_TMA_SWITCH = "UNIMIXER_UNIMIXING_TMA"
POLL_SWITCH = "UNIMIXER_SINKHORN_POLL"
FFN_TMA_SWITCH = "UNIMIXER_FFN_TMA"
FFN_GEMM_SWITCH = "UNIMIXER_FFN_GEMM"
FFN_CHUNK_SWITCH = "UNIMIXER_FFN_TOKEN_CHUNK"
LITE_GEMM_SWITCH = "UNIMIXER_LITE_GEMM"
UNIMIXING_SAVE_H_SWITCH = "UNIMIXER_UNIMIXING_SAVE_H"
UNIMIXING_BWD_GLOBAL_SWITCH = "UNIMIXER_UNIMIXING_BWD_GLOBAL"
SWITCHES = {
    NORM_SWITCH: ("composed", "unimixing_rmsnorm: 'composed' (the mixing with its residual, then one RMSNorm "
                              "pass, as two autograd nodes so that the norm's backward frees its input and "
                              "gradient before the mixing backward) or 'fused' (the RMSNorm in the mixing "
                              "kernel's epilogue, one node; slower on the H200)"),
    PERSISTENT_SWITCH: ("auto", "tiled Sinkhorn (n > 64): 'auto' (one cooperative launch per direction with "
                                "every tile held by its own program where they all fit the GPU at once, "
                                "e.g. n = 1024; else one launch per half-step) or '0' (one launch per "
                                "half-step)"),
    FFN_BACKWARD_SWITCH: ("buffers", "pswiglu / pgelu_ffn backward with whole-row tiles (D <= 256): "
                                     "'buffers' (A, dG, dV pass through [T, bs, h] buffers between its two "
                                     "kernels) or 'recompute' (the weight-gradient kernel forms them again: "
                                     "no such buffers, more FLOPs; slower on the H200: the full block "
                                     "trains in 1.88 against 1.54 ms, with a 185 against 209 MiB peak)"),
    UNIMIXING_BWD_SWITCH: ("auto", "unimixing / unimixing_rmsnorm backward: 'auto' (the in-register kernels, "
                                   "which build G = W_G^T dY and H = X W_B beside their dots, for B < 16 "
                                   "and N < 1024 or fp32; else G and H through memory, two GEMMs and a "
                                   "per-block kernel) or 'gemm' (the memory path at every B and N)"),
    UNIMIXING_FWD_SWITCH: ("auto", "unimixing forward (and the mixing of unimixing_rmsnorm's composed path): "
                                   "'register' (one kernel that builds H = X W_B in registers beside the "
                                   "global GEMM), 'gemm' (H written once, then a plain GEMM Y = W_G H) or "
                                   "'auto' (gemm for 16-bit activations at B >= 16 or N >= 1024, where it "
                                   "measured faster on the H200)"),
    UNIMIXING_GEMM_SWITCH: ("auto", "the plain GEMMs of the unimixing memory path: at B < 16 the "
                                    "backward's two (G^T = dY^T W_G and dW_G = dY H^T, c-major operands), "
                                    "at B >= 16 the global products without a residual (Y = W_G H, "
                                    "G = W_G^T dY, batched over the samples): 'triton' (the project's "
                                    "kernels), 'cublas' (torch.mm / torch.bmm; 16-bit activations on "
                                    "CUDA) or 'auto' (cublas where it can run: 12% faster per GEMM on the "
                                    "H200 at paper-100m, 14% at rankmixer-100m; else triton)"),
    UNIMIXING_TMA_SWITCH: ("auto", "the unimixing memory-path forward GEMM at B < 16 (Y^T = H^T W_G^T, "
                                   "16-bit): 'auto' (the plain product reads its operands through TMA "
                                   "tensor descriptors, about one program per SM walking the tiles, "
                                   "wherever they allow it; the residual epilogue x + UniMixing(x) keeps "
                                   "pointers, which measured as fast), '1' (descriptors for both, and an "
                                   "error where the operands do not allow them) or '0' (pointer loads, "
                                   "one program per tile)"),
    UNIMIXING_SAVE_H_SWITCH: ("auto", "the unimixing memory path at B >= 16 (natural layout): 'auto' (the "
                                      "forward's H = X W_B, written for its GEMM anyway, is saved for the "
                                      "backward, whose per-block kernel then reads G and X and writes only "
                                      "dX: one [bs, T, D] buffer more from forward to backward) or "
                                      "'recompute' (the backward forms and writes H again)"),
    UNIMIXING_BWD_GLOBAL_SWITCH: ("auto", "the unimixing memory-path backward at B >= 16 with the "
                                          "forward's H saved: 'auto' (for 16-bit activations at "
                                          "N <= 256, one kernel forms G = W_G^T dY and the dW_G = dY H^T "
                                          "partials from one read of dY: at rankmixer-100m on the H200 "
                                          "73.6 against 86.0 us for cuBLAS's G and the split dW_G GEMM, "
                                          "run152; else those two), 'fused' (the one kernel at any "
                                          "dtype; an error where N > 256 or H is not saved) or 'split' "
                                          "(the two GEMMs)"),
    LOCAL_TILE_SWITCH: ("auto", "the memory path's per-block kernel at B < 16 (one block per lane): "
                                "'auto' (4 warps, with 2 samples per loop step in the forward and 4 in "
                                "the backward, the fastest of eight tiles each on the H200) or "
                                "'WARPSxSAMPLES' (powers of two, 1..16) for both"),
    PDL_SWITCH: ("auto", "launch the tiled Sinkhorn kernels and the per-token FFN backward's token passes "
                         "(fused path) with programmatic dependent launch (sm_90+, CUDA): each waits for "
                         "its predecessor inside the kernel, so its launch, and its reads of what no kernel "
                         "in flight writes (a Sinkhorn launch's logits tile; a later FFN pass's rows of "
                         "dO and s), overlap the previous kernel's tail. 'auto' while capturing a CUDA "
                         "graph (eager PDL launches cost host time), '1' always, '0' never"),
    POLL_SWITCH: ("thread", "the resident Sinkhorn kernels' wait for the other programs' partials: 'thread' "
                            "(each thread polls its own words, inline PTX) or 'block' (the program polls as "
                            "a whole, a block-wide count of missing words per round; the CPU interpreter, "
                            "which has no inline assembly, always does)"),
    FFN_CHUNK_SWITCH: ("auto", "the per-token FFN backward: tokens per pass through its [tokens, bs, h] "
                               "hidden buffers: 'auto' (the wide-token path, D > 256, in one pass, or behind "
                               "the folded norm of unimixing_rmsnorm_pswiglu in about six backward and two "
                               "forward passes; the fused path in up to four passes of at least 8 tokens), "
                               "'all' (one pass) or a "
                               "positive integer, which shrinks the buffers and the training peak for "
                               "smaller, slower launches (RankMixer "
                               "block on the H200, 4 tokens per pass: 709 against 1009 MiB, 3.32 against "
                               "3.12 ms, run44)"),
    FFN_TMA_SWITCH: ("auto", "the project's wide-token per-token FFN GEMM (D > 256; 16-bit operands take it "
                             "with UNIMIXER_FFN_GEMM=triton): 'auto' (operands and "
                             "result through TMA tensor descriptors where their addresses and strides allow "
                             "it and the TMA tile divides the GEMM's M, N and K; elsewhere pointer loads "
                             "and autotuned tiles), '1' (TMA wherever allowed) or '0' (pointer loads only)"),
    FFN_GEMM_SWITCH: ("auto", "the wide-token per-token FFN GEMMs (D > 256): 'auto' (cuBLAS strided-batched "
                              "GEMMs through torch.bmm for 16-bit operands on CUDA: inside the RankMixer "
                              "block's training step on the H200 they took about 210 us each where the "
                              "project's Triton GEMM took 260, run126; else the Triton GEMM), 'triton' "
                              "(the project's GEMM kernel) or 'cublas' (torch.bmm; fp16 or bf16 operands, "
                              "on any device)"),
    PAIRS_SWITCH: ("auto", "one-launch-per-half-step Sinkhorn kernels on symmetric logits: 'auto' (square "
                           "tiles: one program per pair of mirrored tiles, which are each other's "
                           "transpose, so every half-step reads half of the logits' workspace and the "
                           "last backward launch writes both tiles of dM without a symmetrising pass) "
                           "or '0' (one program per tile)"),
    TILE_SWITCH: ("auto", "tile of the one-launch-per-half-step Sinkhorn kernels (the resident ones use "
                          "64x128): 'auto' (64x64, 2 warps) or 'BMxBN' "
                          "(powers of two, 16..256, BM*BN <= 16384; 2 warps up to 4096 entries, 4 below "
                          "8192, else 8)"),
    LITE_GEMM_SWITCH: ("split", "the Lite global weight's fp32 GEMMs (A_G @ B_G, formed once per direction "
                                "for fp32 factors of rank > 32, and dA_G = dM B_G^T, dB_G = A_G^T dM): "
                                "'split' (the project's GEMM on bf16 tensor cores, each fp32 operand "
                                "split exactly into three bf16 parts, six products: fp32's accuracy) or "
                                "'cublas' (torch.mm in IEEE fp32, TF32 off); the cuda backend forms its "
                                "logits by it too (its dA_G, dB_G: cuBLAS in IEEE fp32 either way)"),
}


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``; Triton reads it when
    a kernel is defined, so it must be set before the kernel modules are imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def switch(name: str) -> str:
    """The value of a kernel switch: the environment's, else its default."""
    return os.environ.get(name, SWITCHES[name][0])


def cublas_switch(name: str, usable: bool, by_default: bool, needs: str) -> bool:
    """Whether a GEMM switch (``'auto'``, ``'triton'`` or ``'cublas'``) picks cuBLAS: ``'cublas'``
    where ``usable`` (else it raises, saying it ``needs`` what is missing), ``'auto'`` where
    ``by_default``, ``'triton'`` never."""
    mode = switch(name)
    if mode not in ("auto", "triton", "cublas"):
        raise ValueError(f"{name}: expected 'auto', 'triton' or 'cublas', got {mode!r}")
    if mode == "cublas" and not usable:
        raise ValueError(f"{name}=cublas: needs {needs}. Set it to 'auto' or 'triton'")
    return mode == "cublas" or (mode == "auto" and by_default)


@functools.cache
def triton_launch_option(name: str) -> bool:
    """Whether this Triton's CUDA backend takes the launch option ``name`` (``launch_pdl``,
    ``launch_cooperative_grid``); never under the interpreter, which runs programs one by one."""
    if interpreting():
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return name in getattr(CUDAOptions, "__dataclass_fields__", {})


def pdl_launch(device: torch.device) -> bool:
    """Whether to launch with programmatic dependent launch (the ``UNIMIXER_PDL`` switch): '1'
    always, and asked for where it cannot work (the interpreter, a GPU before sm_90, a Triton
    without it), it raises rather than quietly launching without it; 'auto' while the current
    stream is capturing a CUDA graph, where it can work (eager launches through Triton's PDL path
    cost more host time than they save on the device); '0' never."""
    mode = switch(PDL_SWITCH)
    if mode not in ("0", "1", "auto"):
        raise ValueError(f"{PDL_SWITCH}: expected '0', '1' or 'auto', got {mode!r}")
    if mode == "0":
        return False
    why = _pdl_unavailable(device)
    if mode == "auto":
        return why is None and torch.cuda.is_current_stream_capturing()
    if why is not None:
        raise RuntimeError(f"{PDL_SWITCH}=1 needs {why}")
    return True


def _pdl_unavailable(device: torch.device) -> str | None:
    """Why programmatic dependent launch cannot work here, or ``None``."""
    if interpreting() or device.type != "cuda":
        return "a CUDA device and compiled kernels (not the Triton interpreter); unset it here"
    cap = torch.cuda.get_device_capability(device)
    if cap < (9, 0):
        return f"sm_90 or newer, this GPU is sm_{cap[0]}{cap[1]}; unset it"
    if not triton_launch_option("launch_pdl"):
        return "a Triton with programmatic dependent launch (3.4 or newer); unset it or upgrade Triton"
    return None


def new_output(shape, *, like: torch.Tensor | None = None, device=None, dtype=None) -> torch.Tensor:
    """Allocate a kernel output. With ``UNIMIXER_POISON_OUTPUTS=1`` (set by the tests) it is
    filled with NaN first, so an element the kernel forgets to write fails every check."""
    device = like.device if device is None else device
    dtype = like.dtype if dtype is None else dtype
    if os.environ.get(POISON_ENV, "0") == "1":
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def rows_2d(t: torch.Tensor) -> torch.Tensor:
    """``t [..., D]`` as ``[M, D]`` with unit stride along ``D``.

    A view when the strides allow one (any row stride); otherwise one documented copy.
    """
    d = t.shape[-1]
    if t.stride(-1) != 1:
        t = t.contiguous()
    try:
        return t.view(-1, d)
    except RuntimeError:
        return t.contiguous().view(-1, d)


@functools.cache
def _sm_count_of(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 elsewhere (the interpreter runs programs in turn)."""
    if device.type != "cuda":
        return 1
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


def num_programs_for(rows: int, device: torch.device, per_sm: int = 4) -> int:
    """A persistent grid: a few programs per SM on a GPU, a handful in the CPU interpreter."""
    cap = sm_count(device) * per_sm if device.type == "cuda" else 4
    return max(1, min(rows, cap))


def bucket(n: int) -> int:
    """Round a batch-like size up to a power of two, so autotune keys do not change every step."""
    return 1 << max(0, (int(n) - 1).bit_length())
