"""Loading the compiled CUDA extension ``unimixer_kernels._C``, and why it is not there."""

from __future__ import annotations

import functools
import importlib


@functools.cache
def status() -> tuple[bool, str]:
    try:
        importlib.import_module("unimixer_kernels._C")
    except ImportError as exc:
        return False, (
            "the CUDA extension is not built (install with a CUDA toolkit and without "
            f"UNIMIXER_SKIP_CUDA_BUILD=1): {exc}"
        )
    return True, ""
