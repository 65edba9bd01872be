"""The floor model: bytes that must move and FLOPs that must be done, per case and mode.

Rules (PERF.md): each input is read once and each output written once; FLOPs are those of the
maths (a multiply-add is 2). Then

    floor = max(bytes / copy_rate, flops / matmul_rate)

with both rates measured in the same run (:mod:`bench.ceilings`). No kernel beats it.

Modes:

* ``fwd`` / ``infer``: read the inputs, write the outputs; ``F`` FLOPs.
* ``bwd``: read each output's gradient and the inputs (what backward needs), write the gradient
  of every differentiable input; ``2F`` (two GEMMs per forward GEMM).
* ``fwd+bwd``: the sum, ``3F``.

Sinkhorn adds its ``2K`` passes over the fp32 logits in each direction (the unavoidable traffic
once the matrix is larger than on-chip memory): on the symmetric logits every case uses, a pass
needs only one triangle of ``S0`` (``N (N + 1) / 2`` entries), since the other is its transpose.
Lite's global weight has two strategies, and its floor is the cheaper one: materialise
``A_G @ B_G`` once and pay the passes in bytes, or recompute the logits tiles on every pass (``r``
MACs per entry) and pay them in FLOPs.

Blocks count their activations and weights once and their GEMM FLOPs (UniMixing + pSwiGLU,
PFFN); the Sinkhorn inside a block counts only its parameters and result, because at the block
presets its passes can stay in L2 (N=1024) or be recomputed from the low-rank form (Lite). These
are the floors of PERF.md's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .presets import Preset

MODES = ("fwd", "bwd", "fwd+bwd", "infer")
FP32 = 4


@dataclass(frozen=True)
class Traffic:
    bytes: float
    flops: float
    note: str = ""

    def floor_s(self, copy_bps: float, matmul_flops: float) -> float:
        return max(self.bytes / copy_bps, self.flops / matmul_flops)


def floor_of(alternatives: list[Traffic], copy_bps: float, matmul_flops: float) -> tuple[float, Traffic]:
    """The cheapest strategy's floor in seconds, and that strategy."""
    best = min(alternatives, key=lambda t: t.floor_s(copy_bps, matmul_flops))
    return best.floor_s(copy_bps, matmul_flops), best


def io_traffic(mode: str, inputs: list[float], diff: list[bool], outputs: list[float], flops_fwd: float,
               extra_fwd: float = 0.0, extra_bwd: float = 0.0, note: str = "") -> Traffic:
    """The generic rule above. ``inputs``/``outputs`` are byte counts; ``diff[i]``: input ``i`` gets a
    gradient. ``extra_*`` are bytes on top (e.g. Sinkhorn passes)."""
    fwd = sum(inputs) + sum(outputs) + extra_fwd
    bwd = sum(outputs) + sum(inputs) + sum(b for b, g in zip(inputs, diff) if g) + extra_bwd
    if mode in ("fwd", "infer"):
        return Traffic(fwd, flops_fwd, note)
    if mode == "bwd":
        return Traffic(bwd, 2 * flops_fwd, note)
    if mode == "fwd+bwd":
        return Traffic(fwd + bwd, 3 * flops_fwd, note)
    raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


# --- FLOP counts of the maths -------------------------------------------------------------------


def unimixing_flops(p: Preset) -> float:
    """``2*bs*(N^2*B + N*B^2)``: the global then the local multiply-adds."""
    n, b = p["N"], p["B"]
    return 2.0 * p["bs"] * (n * n * b + n * b * b)


def pswiglu_flops(p: Preset) -> float:
    """Three per-token GEMMs ``D x h``: ``2*bs*T*3*D*h``."""
    return 2.0 * p["bs"] * p["T"] * 3 * p["D"] * p["h"]


def pffn_flops(p: Preset) -> float:
    """RankMixer PFFN: two per-token GEMMs ``D x kD``: ``2*bs*T*2*D*kD``."""
    d = p["D"]
    return 2.0 * p["bs"] * p["T"] * 2 * d * p["ffn_mult"] * d


def sinkhorn_pass_bytes(n: int, iters: int) -> float:
    """``2K`` passes (rows, then columns, K times) over one triangle of the symmetric ``N x N`` fp32
    logits (the benchmark's cases are symmetric, SPEC's default)."""
    return 2.0 * iters * (n * (n + 1) / 2) * FP32


def sinkhorn_flops(n: int, iters: int) -> float:
    """About 4 element-wise FLOPs per entry per pass (subtract, exp, add, compare); never the bound."""
    return 4.0 * 2 * iters * n * n


# --- per case ------------------------------------------------------------------------------------


def _act(p: Preset, e: int) -> float:
    return float(p["bs"] * p["T"] * p["D"] * e)


def _pswiglu_weights(p: Preset) -> list[float]:
    t, d, h = p["T"], p["D"], p["h"]
    return [t * d * h * FP32, t * d * h * FP32, t * h * d * FP32]


def m_unimixing(p: Preset, mode: str, e: int) -> list[Traffic]:
    n, b = p["N"], p["B"]
    return [io_traffic(mode, [_act(p, e), n * b * b * FP32, n * n * FP32], [True, True, True], [_act(p, e)],
                       unimixing_flops(p))]


def m_unimixing_rmsnorm(p: Preset, mode: str, e: int) -> list[Traffic]:
    n, b = p["N"], p["B"]
    return [io_traffic(mode, [_act(p, e), n * b * b * FP32, n * n * FP32, p["D"] * FP32], [True] * 4,
                       [_act(p, e)], unimixing_flops(p))]


def m_unimixing_rmsnorm_pswiglu(p: Preset, mode: str, e: int) -> list[Traffic]:
    n, b = p["N"], p["B"]
    params = [n * b * b * FP32, n * n * FP32, p["D"] * FP32, *_pswiglu_weights(p)]
    return [io_traffic(mode, [_act(p, e), *params], [True] * (1 + len(params)), [_act(p, e)],
                       unimixing_flops(p) + pswiglu_flops(p))]


def m_sinkhorn(p: Preset, mode: str, e: int) -> list[Traffic]:
    n, k = p["N"], p["iters"]
    mat = float(n * n * FP32)
    passes = sinkhorn_pass_bytes(n, k)
    flops = sinkhorn_flops(n, k)
    t = io_traffic(mode, [mat], [True], [mat], 0.0, extra_fwd=passes, extra_bwd=passes,
                   note=f"2K={2 * k} passes over a triangle of {n}x{n} fp32 each way")
    scale = {"fwd": 1, "infer": 1, "bwd": 2, "fwd+bwd": 3}[mode]
    return [Traffic(t.bytes, scale * flops, t.note)]


def m_lite_weights(p: Preset, mode: str, e: int) -> list[Traffic]:
    n, r, nb, b, k = p["N"], p["r"], p["nb"], p["B"], p["iters"]
    ins = [n * nb * FP32, nb * b * b * FP32, n * r * FP32, r * n * FP32]
    outs = [n * b * b * FP32, n * n * FP32]
    form = 2.0 * n * n * r  # A_G @ B_G once
    passes = sinkhorn_pass_bytes(n, k)
    bwd_factor = {"fwd": 0, "infer": 0, "bwd": 1, "fwd+bwd": 1}[mode]
    fwd_factor = {"fwd": 1, "infer": 1, "bwd": 0, "fwd+bwd": 1}[mode]
    base = io_traffic(mode, ins, [True] * 4, outs, 0.0)
    # materialised: logits formed once (and dA = dM B^T, dB = A^T dM in backward), passes in bytes
    mat = Traffic(base.bytes + n * n * FP32 * (fwd_factor + 2 * bwd_factor)
                  + passes * (fwd_factor + bwd_factor),
                  form * (fwd_factor + 2 * bwd_factor), "materialised A_G@B_G, passes over HBM")
    free = Traffic(base.bytes, _matrix_free_flops(n, r, k, mode), "matrix-free: logits recomputed per pass")
    return [mat, free]


def m_lite_local_weights(p: Preset, mode: str, e: int) -> list[Traffic]:
    """``SK(omega Z)``: the factors read, the ``N`` local weights written (the passes stay on chip)."""
    n, nb, b = p["N"], p["nb"], p["B"]
    return [io_traffic(mode, [n * nb * FP32, nb * b * b * FP32], [True, True], [n * b * b * FP32], 0.0)]


def _matrix_free_flops(n: int, r: int, k: int, mode: str) -> float:
    """FLOPs of the matrix-free Lite global weight: each of the ``2K`` passes each way forms its
    logits tiles from ``A_G``, ``B_G`` (``2 N^2 r``); the backward adds the ``dA``, ``dB`` GEMMs."""
    form = 2.0 * n * n * r
    fwd_f = {"fwd": 1, "infer": 1, "bwd": 0, "fwd+bwd": 1}[mode]
    bwd_f = {"fwd": 0, "infer": 0, "bwd": 1, "fwd+bwd": 1}[mode]
    return form * 2 * k * (fwd_f + bwd_f) + 2 * form * bwd_f


def m_lite_global_materialised(p: Preset, mode: str, e: int) -> list[Traffic]:
    """``SK(A_G @ B_G)`` the materialised way only: the logits written and read back, the passes over HBM."""
    n, r, k = p["N"], p["r"], p["iters"]
    mat = float(n * n * FP32)
    base = io_traffic(mode, [n * r * FP32, r * n * FP32], [True, True], [mat], 0.0)
    fwd_f = {"fwd": 1, "infer": 1, "bwd": 0, "fwd+bwd": 1}[mode]
    bwd_f = {"fwd": 0, "infer": 0, "bwd": 1, "fwd+bwd": 1}[mode]
    passes = sinkhorn_pass_bytes(n, k)
    return [Traffic(base.bytes + 2 * mat * (fwd_f + bwd_f) + passes * (fwd_f + bwd_f),
                    2.0 * n * n * r * (fwd_f + 2 * bwd_f), "materialised logits, passes over HBM")]


def m_lite_global_weights(p: Preset, mode: str, e: int) -> list[Traffic]:
    """``SK(A_G @ B_G)`` alone, the cheaper of materialised and matrix free (as ``lite_weights``)."""
    n, r, k = p["N"], p["r"], p["iters"]
    base = io_traffic(mode, [n * r * FP32, r * n * FP32], [True, True], [float(n * n * FP32)], 0.0)
    free = Traffic(base.bytes, _matrix_free_flops(n, r, k, mode), "matrix-free: logits recomputed per pass")
    return [*m_lite_global_materialised(p, mode, e), free]


def m_rms_norm(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a, p["D"] * FP32], [True, True], [a], 4.0 * a / e)]


def m_add_rms_norm(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a, a, p["D"] * FP32], [True, True, True], [a, a], 5.0 * a / e)]


def m_pswiglu(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a, *_pswiglu_weights(p)], [True] * 4, [a], pswiglu_flops(p))]


def m_fm_interaction(p: Preset, mode: str, e: int) -> list[Traffic]:
    bs, n, d, k = p["bs"], p["n"], p["d"], p["fm_k"]
    return [io_traffic(mode, [bs * n * d * e, n * k * FP32], [True, True], [bs * n * k * e],
                       4.0 * bs * n * d * k)]


def m_dot_interaction(p: Preset, mode: str, e: int) -> list[Traffic]:
    bs, n, d = p["bs"], p["n"], p["d"]
    pairs = n * (n - 1) // 2
    return [io_traffic(mode, [bs * n * d * e], [True], [bs * pairs * e], 2.0 * bs * pairs * d)]


def m_token_mixer(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a], [True], [a], 0.0)]


def m_token_mixer_residual_norm(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a, p["D"] * FP32, p["D"] * FP32], [True] * 3, [a], 8.0 * a / e)]


def m_residual_norm(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    return [io_traffic(mode, [a, a, p["D"] * FP32, p["D"] * FP32], [True] * 4, [a], 8.0 * a / e)]


def m_pgelu_ffn(p: Preset, mode: str, e: int) -> list[Traffic]:
    t, d, kd = p["T"], p["D"], p["ffn_mult"] * p["D"]
    ins = [_act(p, e), t * d * kd * FP32, t * kd * FP32, t * kd * d * FP32, t * d * FP32]
    return [io_traffic(mode, ins, [True] * 5, [_act(p, e)], pffn_flops(p))]


def _block_params_full(p: Preset) -> list[float]:
    n, b, d = p["N"], p["B"], p["D"]
    return [n * b * b * FP32, n * n * FP32, 3 * d * FP32, *_pswiglu_weights(p)]


def _block_params_lite(p: Preset) -> list[float]:
    n, b, d, r, nb = p["N"], p["B"], p["D"], p["r"], p["nb"]
    return [n * nb * FP32, nb * b * b * FP32, n * r * FP32, r * n * FP32, 3 * d * FP32, *_pswiglu_weights(p)]


def _block(p: Preset, mode: str, e: int, params: list[float], extra_flops: float) -> list[Traffic]:
    a = _act(p, e)
    flops = unimixing_flops(p) + pswiglu_flops(p)
    if mode == "infer":  # cached W_B, W_G: no Sinkhorn, no parameter gradients
        n, b, d = p["N"], p["B"], p["D"]
        ins = [a, n * b * b * FP32, n * n * FP32, 3 * d * FP32, *_pswiglu_weights(p)]
        return [io_traffic(mode, ins, [False] * len(ins), [a, a], flops, note="cached weights")]
    return [io_traffic(mode, [a, *params], [True] * (1 + len(params)), [a, a], flops + extra_flops)]


def m_unimixer_block(p: Preset, mode: str, e: int) -> list[Traffic]:
    return _block(p, mode, e, _block_params_full(p), 0.0)


def m_unimixer_block_lite(p: Preset, mode: str, e: int) -> list[Traffic]:
    return _block(p, mode, e, _block_params_lite(p), 2.0 * p["N"] ** 2 * p["r"])


def m_rankmixer_block(p: Preset, mode: str, e: int) -> list[Traffic]:
    a = _act(p, e)
    t, d, kd = p["T"], p["D"], p["ffn_mult"] * p["D"]
    params = [4 * d * FP32, t * d * kd * FP32, t * kd * FP32, t * kd * d * FP32, t * d * FP32]
    diff = [mode != "infer"] * len(params)
    return [io_traffic(mode, [a, *params], [mode != "infer", *diff], [a], pffn_flops(p))]


MODELS: dict[str, Callable[[Preset, str, int], list[Traffic]]] = {
    "unimixing": m_unimixing,
    "unimixing_rmsnorm": m_unimixing_rmsnorm,
    "unimixing_rmsnorm_pswiglu": m_unimixing_rmsnorm_pswiglu,
    "sinkhorn": m_sinkhorn,
    "lite_weights": m_lite_weights,
    "lite_global_materialised": m_lite_global_materialised,
    "lite_global_weights": m_lite_global_weights,
    "lite_local_weights": m_lite_local_weights,
    "rms_norm": m_rms_norm,
    "add_rms_norm": m_add_rms_norm,
    "pswiglu": m_pswiglu,
    "fm_interaction": m_fm_interaction,
    "dot_interaction": m_dot_interaction,
    "token_mixer": m_token_mixer,
    "token_mixer_residual_norm": m_token_mixer_residual_norm,
    "residual_norm": m_residual_norm,
    "pgelu_ffn": m_pgelu_ffn,
    "unimixer-block": m_unimixer_block,
    "unimixer-block-lite": m_unimixer_block_lite,
    "rankmixer-block": m_rankmixer_block,
}


def traffic(case: str, preset: Preset, mode: str, elem_bytes: int) -> list[Traffic]:
    return MODELS[case](preset, mode, elem_bytes)
