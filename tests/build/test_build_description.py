"""``csrc/build.json`` is the one description of the extension: setup.py and CMakeLists.txt read it,
and it lists every CUDA/C++ source in ``csrc/`` (a new op file that is not listed is never built)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = json.loads((ROOT / "csrc" / "build.json").read_text())


def test_every_source_is_listed_and_exists():
    sources = (p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cu", ".cpp"))
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in sources)
    assert sorted(SPEC["sources"]) == on_disk


def test_one_registration_file():
    registering = [s for s in SPEC["sources"] if "TORCH_LIBRARY(" in (ROOT / s).read_text()]
    assert registering == ["csrc/registration.cpp"]


def test_setup_and_cmake_read_the_description():
    assert "build.json" in (ROOT / "setup.py").read_text()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "csrc/build.json" in cmake
    for source in SPEC["sources"]:
        assert source not in cmake, f"{source} is listed in CMakeLists.txt too"


def _setup_function(name: str):
    """One function of setup.py, without running the build that importing setup.py starts."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"re": re, "ARCH_ENV": "UNIMIXER_CUDA_ARCH"}
    exec(compile(ast.Module([node], type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize(
    "arch, sm90a", [("9.0a", True), ("9.0", False), ("8.0;9.0a+PTX", True), ("8.0 9.0", False)]
)
def test_sm90a_builds_tell_the_host_code(arch, sm90a):
    """The wgmma kernels exist only in sm_90a code; the host code may launch them only where the build
    says so (-DUNIMIXER_SM90A, from setup.py and CMakeLists.txt alike)."""
    flags = _setup_function("gencode_flags")(arch)
    assert ("-DUNIMIXER_SM90A" in flags) == sm90a
    assert "UNIMIXER_SM90A" in (ROOT / "CMakeLists.txt").read_text()


def test_the_default_build_is_sm90a():
    assert SPEC["default_cuda_arch"] == "9.0a"
