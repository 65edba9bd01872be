"""The floor model printed at the presets (``python -m bench floors``), for NOTES.md."""

from __future__ import annotations

from .cases import CASES
from .model import floor_of, traffic
from .presets import GPU_PRESETS, PRESETS

ELEM = {"bf16": 2, "fp16": 2, "fp32": 4}


def floors_table(presets: list[str] | None, copy_tbps: float, matmul_tflops: float,
                 dtype: str = "bf16") -> str:
    copy, mm = copy_tbps * 1e12, matmul_tflops * 1e12
    lines = [f"Ceilings: copy {copy_tbps} TB/s, matmul {matmul_tflops} TFLOP/s; activations {dtype}.", "",
             "| case | preset | mode | MB | GFLOP | floor ms | bound | strategy |",
             "|---|---|---|---|---|---|---|---|"]
    for case in CASES.values():
        for pname in presets or GPU_PRESETS:
            preset = PRESETS[pname]
            if not case.applies_to(preset):
                continue
            for mode in case.modes:
                if mode == "bwd":
                    continue
                seconds, t = floor_of(traffic(case.name, preset, mode, ELEM[dtype]), copy, mm)
                bound = "memory" if t.bytes / copy >= t.flops / mm else "compute"
                lines.append(f"| {case.name} | {pname} | {mode} | {t.bytes / 1e6:.1f} | "
                             f"{t.flops / 1e9:.2f} | {seconds * 1e3:.4f} | {bound} | {t.note} |")
    return "\n".join(lines)


FORMULAS = {
    "unimixing": "bytes: x, W_B (N·B²·4), W_G (N²·4) read, y written; bwd adds dy, dx, dW_B, dW_G. "
                 "FLOPs 2·bs·(N²·B + N·B²) fwd, ×3 fwd+bwd.",
    "unimixing_rmsnorm": "as UniMixing plus the norm weight; the norm's FLOPs are negligible.",
    "unimixing_rmsnorm_pswiglu": "z and the weights of both sub-layers read, o written (the intermediate "
                                 "u never); FLOPs those of UniMixing and pSwiGLU.",
    "sinkhorn": "2K passes in each direction (K=20: 40 fwd, 40 bwd) over one triangle of the symmetric "
                "N×N fp32 logits (the other is its transpose) plus the logits read and P written; ~4 "
                "element-wise FLOPs per entry per pass (never the bound).",
    "lite_weights": "the cheaper of: materialised (A_G@B_G once, 2N²r FLOPs; passes over HBM as for "
                    "Sinkhorn) and matrix-free (only A_G, B_G, omega, Z read and W_B, W_G written; "
                    "every pass recomputes its logits tiles, 2K·2N²r FLOPs each way; dA, dB GEMMs in bwd).",
    "lite_global_materialised": "SK(A_G @ B_G) with the N×N logits written, read back and passed over "
                                "(one triangle) 2K times each way (the baseline for the matrix-free Lite "
                                "global weight).",
    "lite_local_weights": "SK(omega Z) alone (lite_weights' local half): omega and Z read, the N local "
                          "weights written; the passes stay on chip.",
    "lite_global_weights": "SK(A_G @ B_G) alone (lite_weights' global half): the cheaper of the "
                           "materialised and the matrix-free ways, as for lite_weights.",
    "rms_norm": "x and weight read, y written (bwd: dy, x, weight read; dx, dw written).",
    "add_rms_norm": "x, residual, weight read; y and the sum written.",
    "pswiglu": "u and W_gate, W_up, W_down (fp32) read, o written. FLOPs 2·bs·T·3·D·h fwd.",
    "pgelu_ffn": "u, W1, b1, W2, b2 read, v written. FLOPs 2·bs·T·2·D·kD fwd.",
    "fm_interaction": "x [bs,n,d] and y [n,k] read, out [bs,n,k] written. FLOPs 4·bs·n·d·k (X^T Y, then X·).",
    "dot_interaction": "x read, the n(n-1)/2 pairs written. FLOPs 2·bs·d per pair.",
    "token_mixer": "a permutation: x read, out written, no FLOPs.",
    "token_mixer_residual_norm": "x, LN weight and bias read, out written.",
    "residual_norm": "x, r, LN weight and bias read, out written (bwd: one gradient for both addends).",
    "unimixer-block": "activations: x read, (Xbar', Ybar') written; parameters (theta_B, theta_G, 3 norms, "
                      "pSwiGLU) read once, their gradients written once. FLOPs: UniMixing + pSwiGLU, ×3 "
                      "fwd+bwd. Sinkhorn counts only its parameters and result (passes stay in L2 at "
                      "N=1024). infer: cached W_B, W_G, no gradients.",
    "unimixer-block-lite": "as the full block with Lite parameters (omega, Z, A_G, B_G) and the A_G@B_G GEMM "
                           "(2N²r, plus its two gradient GEMMs).",
    "rankmixer-block": "x and parameters read, x' written; FLOPs of the PFFN, 2·bs·T·2·D·kD fwd "
                       "(TokenMixer and LayerNorms are free next to it).",
}


def notes_sections(copy_tbps: float = 4.14, matmul_tflops: float = 680.0, dtype: str = "bf16") -> str:
    """Per case: its floor model in words and its floor at each SPEC §10 preset it applies to."""
    copy, mm = copy_tbps * 1e12, matmul_tflops * 1e12
    out = []
    for case in CASES.values():
        presets = [p for p in GPU_PRESETS if case.applies_to(PRESETS[p])]
        if not presets:
            continue
        modes = [m for m in ("fwd", "fwd+bwd", "infer") if m in case.modes]
        out.append(f"### {case.name}: {case.title}\n\n{FORMULAS.get(case.name, '')}\n")
        out.append("| preset | " + " | ".join(f"{m} floor ms (MB, GFLOP)" for m in modes) + " |")
        out.append("|---|" + "---|" * len(modes))
        for pname in presets:
            cells = []
            for m in modes:
                seconds, t = floor_of(traffic(case.name, PRESETS[pname], m, ELEM[dtype]), copy, mm)
                tag = "mem" if t.bytes / copy >= t.flops / mm else "com"
                cells.append(f"{seconds * 1e3:.4g} {tag} ({t.bytes / 1e6:.0f}, {t.flops / 1e9:.3g})")
            out.append(f"| {pname} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- floors:begin", "<!-- floors:end -->"


def write_notes(path, sections: str) -> None:
    """Replace the text between the floors markers of NOTES.md with ``sections``."""
    from pathlib import Path

    text = Path(path).read_text()
    start = text.index(BEGIN)
    start = text.index("-->", start) + 3
    end = text.index(END)
    Path(path).write_text(text[:start] + "\n\n" + sections.strip() + "\n\n" + text[end:])
