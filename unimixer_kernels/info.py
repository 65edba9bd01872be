"""``python -m unimixer_kernels.info``: what this installation can run, and why not.

Prints the versions (package, torch, CUDA, Triton, Python), the device, the build of the CUDA
extension ``_C``, the status of every backend, the ops x backends matrix, and what
``backend="auto"`` picks on CUDA tensors.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

from . import _cuda_ext
from ._registry import _ENV_VAR, BACKENDS, OPS, Op, backend_status, parse_backend
from ._version import __version__


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "unimixer-kernels": __version__,
        "torch": torch.__version__,
        "CUDA (torch)": torch.version.cuda or "none (CPU build of torch)",
        "triton": _triton_version(),
        "python": f"{platform.python_version()} ({sys.executable})",
    }


def device_description() -> str:
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return "none: torch is a CPU build"
        return f"none: torch {torch.__version__} is a CUDA build but no CUDA device is visible"
    index = torch.cuda.current_device()
    cap = torch.cuda.get_device_capability(index)
    return f"cuda:{index} {torch.cuda.get_device_name(index)} (compute capability {cap[0]}.{cap[1]})"


def extension_description() -> list[str]:
    """The build record of ``_C``, and whether it loads here."""
    info = _cuda_ext.build_info()
    lines: list[str] = []
    if info is None:
        lines.append("build record: none (the package was not built by setup.py)")
    elif not info.BUILT:
        lines.append(f"not built: {info.REASON}")
    else:
        lines.append(
            f"built for torch {info.TORCH_VERSION}, CUDA {info.TORCH_CUDA_VERSION} "
            f"(nvcc {info.NVCC_VERSION}), arch {info.CUDA_ARCH}, commit {info.GIT_COMMIT}"
        )
    path = _cuda_ext.library_path()
    if path is not None:
        lines.append(f"library: {path}")
    ok, why = _cuda_ext.status()
    lines.append("loads: yes" if ok else f"loads: no: {why}")
    return lines


def cell(op: Op, backend: str) -> str:
    """``yes`` / ``no: reason`` / ``-`` (no such implementation) for one op and backend."""
    if backend not in op.impls:
        return "-"
    ok, why = op.status(backend)
    return "yes" if ok else f"no: {why}"


# how each autocast policy (unimixer_kernels._registry) treats an op's inputs, in the table's words
AUTOCAST_WORDS = {"lower": "autocast dtype", "fp32": "fp32", None: "input dtypes"}


def auto_choice_on_cuda(op: Op) -> str:
    """What ``backend="auto"`` runs on CUDA tensors, ignoring ``UNIMIXER_BACKEND`` and contexts.

    With a device: the usable backends of the op's ``cuda_auto`` list in the order tried, up to the
    first that takes every call, else the reference. Without one: the preference order itself.
    """
    def label(b: str) -> str:
        return f"{b} (the calls it takes)" if b in op.auto_accepts else b

    if not torch.cuda.is_available():
        order = [b for b in op.cuda_auto if b in op.impls and b != "reference"]
        return " > ".join([*map(label, order), "reference"])
    return " > ".join(map(label, op.auto_order(torch.device("cuda"))))


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def report() -> str:
    # import every op so the registry is complete
    from . import ops  # noqa: F401

    lines = ["unimixer-kernels info", "", "versions:"]
    lines += [f"  {k}: {v}" for k, v in versions().items()]
    lines += ["", f"device: {device_description()}", "", "CUDA extension (unimixer_kernels._C):"]
    lines += [f"  {line}" for line in extension_description()]
    lines += ["", "backends:"]
    for name in BACKENDS:
        ok, why = backend_status(name)
        lines.append(f"  {name}: {'available' if ok else 'unavailable'}: {why}")
    env = os.environ.get(_ENV_VAR)
    if env:
        try:
            parse_backend(env, f"environment variable {_ENV_VAR}")
            lines.append(f"  {_ENV_VAR}: {env!r}")
        except ValueError as exc:
            lines.append(f"  {_ENV_VAR}: {env!r}: invalid, every op call raises: {exc}")
    else:
        lines.append(f"  {_ENV_VAR}: not set (auto)")
    lines.append("  a backend= value may also be per op, e.g. 'triton+sinkhorn=cuda/triton': Sinkhorn on the "
                 "cuda kernels where they take the call, else Triton; every other op on Triton")
    from ._cuda_ext import SWITCHES as CUDA_SWITCHES
    from .nn._common import SWITCHES as MODULE_SWITCHES
    from .triton_kernels._launch import SWITCHES  # torch only: no kernel module is imported

    for title, switches in (("Triton kernel", SWITCHES), ("CUDA kernel", CUDA_SWITCHES),
                            ("Module", MODULE_SWITCHES)):
        lines += ["", f"{title} switches (environment):"]
        for var, (default, what) in switches.items():
            value = os.environ.get(var)
            shown = repr(value) if value else f"not set ({default})"
            lines.append(f"  {var}: {shown}: {what}")
    auto_header = "auto on CUDA" if torch.cuda.is_available() else "auto on CUDA (order; no device here)"
    rows = [["op", *BACKENDS, auto_header, "under autocast"]]
    reasons: list[str] = []  # long reasons become numbered notes under the table
    for name in sorted(OPS):
        op = OPS[name]
        row = [name]
        for b in BACKENDS:
            text = cell(op, b)
            if text.startswith("no: "):
                if text[4:] not in reasons:
                    reasons.append(text[4:])
                text = f"no [{reasons.index(text[4:]) + 1}]"
            row.append(text)
        rows.append([*row, auto_choice_on_cuda(op), AUTOCAST_WORDS[op.autocast]])
    lines += ["", "ops x backends (yes / no [reason] / '-' not implemented):"]
    lines += [f"  {line}" for line in _table(rows)]
    lines += [f"  [{k}] {why}" for k, why in enumerate(reasons, 1)]
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
