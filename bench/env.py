"""The header every results file carries: device, versions, date, commit, ceilings."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

import torch


def git_commit() -> str:
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown (no git checkout; set BENCH_GIT_COMMIT)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:
        triton_version = f"unavailable ({type(exc).__name__})"
    import unimixer_kernels as uk

    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "unimixer_kernels": uk.__version__,
    }


def kernel_switches() -> dict:
    """The kernel and module switches set in the environment (``python -m unimixer_kernels.info`` lists them
    all), so that a results file says which kernel paths it timed."""
    from unimixer_kernels.triton_kernels._launch import SWITCHES

    from unimixer_kernels.nn._common import SWITCHES as MODULE_SWITCHES

    return {name: os.environ[name] for name in (*SWITCHES, *MODULE_SWITCHES) if name in os.environ}


def header(device: torch.device, ceilings=None, **extra) -> dict:
    h = {
        "device": device_name(device),
        "device_type": device.type,
        **versions(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "argv": " ".join(sys.argv),
        "switches": kernel_switches(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        h["sm_count"] = props.multi_processor_count
        h["l2_bytes"] = getattr(props, "L2_cache_size", None)
    if ceilings is not None:
        h["ceilings"] = ceilings.as_dict()
    h.update(extra)
    return h


def describe_device(device: torch.device) -> str:
    v = versions()
    return (f"{device_name(device)}: torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, "
            f"python {v['python']}")
