"""Loading the compiled CUDA extension ``unimixer_kernels._C``, and why it is not there.

The library registers the operator namespace ``torch.ops.unimixer_C``. Before it is loaded,
``_build_info.py`` (written by ``setup.py``) is compared with the running torch: a library built
for another torch or another CUDA major version would fail with unreadable symbol errors, or
worse, so loading it raises a message that names both versions instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Callable
from types import ModuleType

import torch

EXTENSION = "unimixer_kernels._C"

# Environment switches the compiled kernels read at each call (C++ ``getenv``): variable -> (default,
# what it does). ``python -m unimixer_kernels.info`` lists them.
SWITCHES = {
    "UNIMIXER_SINKHORN_CUDA_TILE": (
        "auto", "the cuda backend's Sinkhorn (csrc/sinkhorn.cu), a block's tile: 'auto' (the first of "
                "128x64, 64x128 and 128x128 whose thread-block clusters all fit the device at once), "
                "or one of them (an error where it does not fit)"),
    "UNIMIXER_PSWIGLU_CUDA_CHUNK": (
        "16", "the cuda backend's pswiglu forward (csrc/pswiglu.cu): hidden units a pipeline step, '16' or "
              "'32' (twice the independent accumulator chains a warp, two blocks an SM instead of three)"),
    "UNIMIXER_PSWIGLU_CUDA_MMA": (
        "sync", "the cuda backend's pswiglu forward: 'sync' (mma.sync, four warps of 16 samples) or 'wgmma' "
                "(warpgroup instructions; needs the extension built for 9.0a, the default, and a compute "
                "capability 9.0 device)"),
    "UNIMIXER_SINKHORN_CHECK": ("0", "the cuda backend's Sinkhorn: '1' synchronises after each launch and "
                                     "raises if a wait for another block's partials timed out (the tests; "
                                     "not while a CUDA graph is captured)"),
}
REBUILD_HINT = "rebuild it: pip install -e . --no-build-isolation (or set UNIMIXER_SKIP_CUDA_BUILD=1)"


class ExtensionMismatchError(RuntimeError):
    """The compiled extension was built for a different torch or CUDA than the running one."""


def _base_version(version: str) -> str:
    """``"2.11.0+cu130"`` -> ``"2.11.0"``: the C++ ABI follows the release, not the local tag."""
    return version.split("+")[0]


def build_info() -> ModuleType | None:
    """The build record written by ``setup.py``, or None when the package was not built by it."""
    try:
        return importlib.import_module("unimixer_kernels._build_info")
    except ImportError:
        return None


def library_path() -> str | None:
    """Where the compiled library is, or None when there is none."""
    try:
        spec = importlib.util.find_spec(EXTENSION)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def check_build_matches(info: ModuleType, torch_version: str, torch_cuda: str | None) -> None:
    """Raise :class:`ExtensionMismatchError` naming both versions when the build does not fit."""
    built_torch = getattr(info, "TORCH_VERSION", "unknown")
    built_cuda = getattr(info, "TORCH_CUDA_VERSION", None) or "unknown"
    if _base_version(built_torch) != _base_version(torch_version):
        raise ExtensionMismatchError(
            f"{EXTENSION} was built for torch {built_torch} (CUDA {built_cuda}), but torch {torch_version} "
            f"(CUDA {torch_cuda}) is installed; {REBUILD_HINT}"
        )
    if torch_cuda is None or built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        raise ExtensionMismatchError(
            f"{EXTENSION} was built for CUDA {built_cuda} (torch {built_torch}), but the installed torch "
            f"{torch_version} uses CUDA {torch_cuda}; {REBUILD_HINT}"
        )


@functools.cache
def load() -> str:
    """Load the library once (registering ``torch.ops.unimixer_C``) and return its path.

    Raises ``ImportError`` when it was not built, :class:`ExtensionMismatchError` when it was
    built for another torch or CUDA.
    """
    info = build_info()
    path = library_path()
    if info is not None and not info.BUILT:
        raise ImportError(f"{EXTENSION} is not built: {info.REASON}")
    if path is None:
        raise ImportError(
            f"{EXTENSION} is not built (install with a CUDA toolkit and a CUDA build of torch, with "
            "--no-build-isolation and without UNIMIXER_SKIP_CUDA_BUILD=1)"
        )
    if info is None:
        raise ImportError(f"{EXTENSION} at {path} has no build record (_build_info.py); {REBUILD_HINT}")
    check_build_matches(info, torch.__version__, torch.version.cuda)
    torch.ops.load_library(path)
    for register in _ON_LOAD:
        register()
    return path


_ON_LOAD: list[Callable[[], None]] = []


def on_load(register: Callable[[], None], *names: str) -> None:
    """Run ``register`` (a backend module's fakes and autograd formulas, cached) once the library is
    loaded: now if it already defines ``names`` (torch loads it through the C++ pystub when it needs a
    fake, before the backend modules are imported), else right after :func:`load` loads it, wherever
    that happens (``backend_status`` under ``torch.compile``'s tracing included)."""
    if defines(*names):
        register()
    else:
        _ON_LOAD.append(register)


def ops_with(register: Callable[[], None]):
    """``torch.ops.unimixer_C`` with the library loaded and ``register`` run (a backend module's fakes and
    autograd formulas, registered once: ``register`` is cached)."""
    load()
    register()
    return torch.ops.unimixer_C


def defines(*names: str) -> bool:
    """Whether the library is already loaded with these ops (torch loads it through the C++ pystub when
    it needs a fake, before the module that registers them is imported)."""
    return all(hasattr(torch.ops.unimixer_C, name) for name in names)


def arch_runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether code built for ``arch_list`` (``UNIMIXER_CUDA_ARCH`` syntax) runs on ``capability``.

    Machine code for ``X.Y`` runs on ``X.Z`` with ``Z >= Y`` (``X.Ya`` only on ``X.Y``); with
    ``+PTX`` it is also compiled just in time for any newer device.
    """
    for item in re.split(r"[;,\s]+", arch_list.strip()):
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if m is None:
            continue
        built = (int(m.group(1)), int(m.group(2)))
        if m.group(3):
            if built == capability:
                return True
        elif built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if m.group(4) and built <= capability:
            return True
    return False


@functools.cache
def status() -> tuple[bool, str]:
    """Whether the extension is loaded (loading it if needed) and can run here, and if not, why."""
    try:
        load()
    except (ImportError, OSError, RuntimeError) as exc:
        return False, str(exc)
    info = build_info()
    if torch.cuda.is_available() and info is not None:
        capability = torch.cuda.get_device_capability()
        if not arch_runs_on(info.CUDA_ARCH, capability):
            cap = f"{capability[0]}.{capability[1]}"
            return False, (
                f"{EXTENSION} was built for compute capability {info.CUDA_ARCH}, but the device is {cap}; "
                f"rebuild with UNIMIXER_CUDA_ARCH={cap}"
            )
    return True, ""
