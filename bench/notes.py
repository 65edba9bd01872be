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
