"""``csrc/build.json`` is the one description of the extension: setup.py and CMakeLists.txt read it,
and it lists every CUDA/C++ source in ``csrc/`` (a new op file that is not listed is never built)."""

from __future__ import annotations

import json
from pathlib import Path

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
