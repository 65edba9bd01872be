"""The two ceilings every floor divides by, measured in the same run: a large device-to-device copy
(bytes read plus bytes written, per second) and a random bf16 8192^3 matmul (FLOP/s). On the CPU
the sizes are smaller (64 MiB copy, 1024^3 fp32 matmul) and the numbers only make the CPU table
self-consistent."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .timing import time_ms

# PERF.md's H200 numbers, for the floor tables in NOTES.md (``python -m bench floors``)
H200_COPY_BPS = 4.14e12
H200_MATMUL_FLOPS = 680e12


@dataclass
class Ceilings:
    copy_bytes_per_s: float
    matmul_flops_per_s: float
    copy_desc: str
    matmul_desc: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["copy_TBps"] = self.copy_bytes_per_s / 1e12
        d["matmul_TFLOPs"] = self.matmul_flops_per_s / 1e12
        return d


def _copy_rate(device: torch.device, nbytes: int, warmup: float, rep: float) -> float:
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / (time_ms(lambda: dst.copy_(src), device, warmup, rep) * 1e-3)


def _matmul_rate(device: torch.device, n: int, dtype: torch.dtype, warmup: float, rep: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / (time_ms(lambda: a @ b, device, warmup, rep) * 1e-3)


def measure(device: torch.device) -> Ceilings:
    gpu = device.type == "cuda"
    warmup, rep = (25, 100) if gpu else (50, 300)
    copy_bytes = (1 << 30) if gpu else (64 << 20)
    copy = _copy_rate(device, copy_bytes, warmup, rep)
    n = 8192 if gpu else 1024
    dtype = torch.bfloat16 if gpu else torch.float32
    mm = _matmul_rate(device, n, dtype, warmup, rep)
    if gpu:
        torch.cuda.empty_cache()
    return Ceilings(copy, mm, f"copy_ of {copy_bytes >> 20} MiB fp32, read+write",
                    f"{n}^3 {str(dtype).replace('torch.', '')} matmul, random data")


def reference_h200() -> Ceilings:
    return Ceilings(H200_COPY_BPS, H200_MATMUL_FLOPS, "PERF.md H200 copy", "PERF.md H200 bf16 matmul")
