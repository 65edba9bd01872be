"""Build: the Python packages, and the CUDA extension ``unimixer_kernels._C`` when it can be built.

``triton_kernels/`` is installed as ``unimixer_kernels.triton_kernels`` so it never shadows
Triton's own top-level ``triton_kernels`` package.

The extension is described once, in ``csrc/build.json`` (sources and flags), which
``CMakeLists.txt`` reads too. It is built with ``torch.utils.cpp_extension.CUDAExtension`` when
torch is a CUDA build and a CUDA toolkit is found; build with ``--no-build-isolation`` so the
installed torch is the one compiled against. Environment:

* ``UNIMIXER_SKIP_CUDA_BUILD=1``: build no extension (the pure-Python and Triton parts still work);
* ``UNIMIXER_CUDA_ARCH``: compute capabilities, e.g. ``"9.0a"`` (default: Hopper,
  with its arch-specific instructions such as ``wgmma``), ``"9.0"`` or ``"8.0;9.0+PTX"``;
* ``MAX_JOBS``: parallel compile jobs for ninja (default: sized to the free memory);
* ``CUDA_HOME``: the toolkit (default: ``/usr/local/cuda``, else found from ``nvcc`` on PATH).

The build writes ``unimixer_kernels/_build_info.py`` (torch, CUDA, arch, git commit, or why no
extension was built); ``unimixer_kernels._cuda_ext`` checks it before loading the library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SPEC = json.loads((ROOT / "csrc" / "build.json").read_text())
SKIP_ENV = "UNIMIXER_SKIP_CUDA_BUILD"
ARCH_ENV = "UNIMIXER_CUDA_ARCH"
GB_PER_COMPILE_JOB = 3  # nvcc on the torch headers peaks around 2-3 GB per translation unit

packages = find_packages(include=["unimixer_kernels", "unimixer_kernels.*"])
packages.append("unimixer_kernels.triton_kernels")


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty.returncode == 1 else "")


def gencode_flags(arch_list: str) -> list[str]:
    """``"9.0;8.0+PTX"`` -> nvcc ``-gencode`` flags (SASS per arch; ``+PTX`` also embeds PTX), and
    ``-DUNIMIXER_SM90A`` where the list has ``9.0a``."""
    flags: list[str] = []
    for item in re.split(r"[;,\s]+", arch_list.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if m is None:
            raise ValueError(
                f"{ARCH_ENV}: expected compute capabilities like '9.0' or '8.0;9.0+PTX', got {arch_list!r}"
            )
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if m.group(4):
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    if not flags:
        raise ValueError(f"{ARCH_ENV}: no compute capability in {arch_list!r}")
    if "arch=compute_90a,code=sm_90a" in flags:
        flags.append("-DUNIMIXER_SM90A")  # the host code may launch the kernels that need sm_90a (wgmma)
    return flags


def _find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = [Path("/usr/local/cuda")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    for home in candidates:
        # a wrapper script in /usr/local/bin is not a toolkit: require the headers next to nvcc
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


def _nvcc_version(cuda_home: str) -> str:
    out = subprocess.run(
        [str(Path(cuda_home) / "bin" / "nvcc"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if m is None:
        raise RuntimeError(f"could not read the CUDA version from `nvcc --version`:\n{out}")
    return f"{m.group(1)}.{m.group(2)}"


def _max_jobs() -> str:
    if os.environ.get("MAX_JOBS"):
        return os.environ["MAX_JOBS"]
    free_gb = 4.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return str(max(1, min(os.cpu_count() or 1, int(free_gb // GB_PER_COMPILE_JOB))))


def _plan() -> tuple[list, dict, type]:
    """The extension modules, the build info to record, and the build_ext base class."""
    info: dict = {"BUILT": False, "REASON": "", "GIT_COMMIT": _git_commit()}
    if os.environ.get(SKIP_ENV, "0") == "1":
        info["REASON"] = f"the build was skipped ({SKIP_ENV}=1)"
        return [], info, build_ext
    try:
        import torch
    except ImportError:
        info["REASON"] = (
            "torch was not importable at build time "
            "(install torch first, then build with --no-build-isolation)"
        )
        return [], info, build_ext
    info["TORCH_VERSION"] = torch.__version__
    if torch.version.cuda is None:
        info["REASON"] = f"torch {torch.__version__} is not a CUDA build"
        return [], info, build_ext
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        info["REASON"] = "no CUDA toolkit was found at build time (set CUDA_HOME to one with bin/nvcc)"
        return [], info, build_ext
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported
    os.environ["CUDA_HOME"] = cuda_home
    nvcc_version = _nvcc_version(cuda_home)
    if nvcc_version.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise RuntimeError(
            f"refusing to build unimixer_kernels._C: nvcc at {cuda_home} is CUDA {nvcc_version}, but torch "
            f"{torch.__version__} was built with CUDA {torch.version.cuda}; the major versions must match. "
            f"Point CUDA_HOME at a CUDA {torch.version.cuda.split('.')[0]}.x toolkit, install a matching "
            f"torch, or set {SKIP_ENV}=1 to build without the extension."
        )
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    arch = os.environ.get(ARCH_ENV, SPEC["default_cuda_arch"])
    os.environ["MAX_JOBS"] = _max_jobs()
    lib_dirs = [str(Path(cuda_home) / d) for d in ("lib", "lib64") if (Path(cuda_home) / d).is_dir()]
    ext = CUDAExtension(
        name=SPEC["extension"],
        sources=SPEC["sources"],
        include_dirs=[str(ROOT / d) for d in SPEC["include_dirs"]],
        library_dirs=lib_dirs,
        extra_compile_args={"cxx": SPEC["cxx_flags"], "nvcc": SPEC["nvcc_flags"] + gencode_flags(arch)},
    )
    info.update(
        BUILT=True,
        TORCH_CUDA_VERSION=torch.version.cuda,
        NVCC_VERSION=nvcc_version,
        CUDA_ARCH=arch,
    )
    print(
        f"unimixer_kernels._C: building for torch {torch.__version__}, CUDA {nvcc_version} at {cuda_home}, "
        f"arch {arch}, MAX_JOBS={os.environ['MAX_JOBS']}"
    )
    return [ext], info, BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


def write_build_info(package_dir: Path, info: dict) -> None:
    doc = '"""Written by setup.py at build time (not in git): what unimixer_kernels._C was built for."""'
    lines = [doc, ""]
    lines += [f"{key} = {value!r}" for key, value in info.items()]
    package_dir.mkdir(parents=True, exist_ok=True)
    (package_dir / "_build_info.py").write_text("\n".join(lines) + "\n")


ext_modules, build_info, ext_base = _plan()
if not build_info["BUILT"]:
    print(f"unimixer_kernels._C: not built: {build_info['REASON']}")


class BuildPyWithInfo(build_py):
    """Records the build info next to the packages (in the source tree for an editable install)."""

    def run(self) -> None:
        super().run()
        editable = getattr(self, "editable_mode", False)  # setuptools < 64 has no PEP 660 mode
        target = ROOT if editable else Path(self.build_lib)
        write_build_info(target / "unimixer_kernels", build_info)


class BuildExtWithInfo(ext_base):
    """Builds ``_C``, then records what it was built for next to it."""

    def run(self) -> None:
        super().run()
        if self.extensions:
            write_build_info(Path(self.get_ext_fullpath(SPEC["extension"])).parent, build_info)


setup(
    packages=packages,
    package_dir={"unimixer_kernels.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPyWithInfo, "build_ext": BuildExtWithInfo},
)
