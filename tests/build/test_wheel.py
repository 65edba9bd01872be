"""The built wheel, installed outside the source tree, imports as ``unimixer_kernels`` with
``unimixer_kernels.triton_kernels`` inside it, and installs no top-level ``triton_kernels`` (the name
of Triton's own package).

The sources are copied to a temporary directory first, so the build leaves nothing in the
checkout. ``UNIMIXER_SKIP_CUDA_BUILD=1`` keeps it quick; the wheel then records why it has no
extension, and that record is checked too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    "setup.py", "pyproject.toml", "README.md", "CMakeLists.txt", "csrc", "unimixer_kernels", "triton_kernels"
]

pytestmark = pytest.mark.slow

PROBE = r"""
import importlib.util, json, sys
import unimixer_kernels, unimixer_kernels.triton_kernels
from unimixer_kernels import _cuda_ext
spec = importlib.util.find_spec("triton_kernels")
print(json.dumps({
    "package": unimixer_kernels.__file__,
    "triton_kernels": unimixer_kernels.triton_kernels.__file__,
    "top_level_triton_kernels": None if spec is None else spec.origin,
    "extension": _cuda_ext.status(),
}))
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    for tool in ("setuptools", "wheel"):
        try:
            __import__(tool)
        except ImportError:
            pytest.skip(f"building the wheel without isolation needs `{tool}` installed")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "_build_info.py", "build", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "UNIMIXER_SKIP_CUDA_BUILD": "1"}
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(dist), str(src)], env=env)
    (whl,) = dist.glob("unimixer_kernels-*.whl")
    return whl


def test_wheel_has_no_top_level_triton_kernels(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("triton_kernels/")]
    assert "unimixer_kernels/triton_kernels/__init__.py" in names
    assert "unimixer_kernels/triton_kernels/rms_norm.py" in names
    assert "unimixer_kernels/_build_info.py" in names
    top = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    for entry in top:
        assert zipfile.ZipFile(wheel).read(entry).decode().split() == ["unimixer_kernels"]


def test_installed_wheel_imports_from_the_target(wheel, tmp_path):
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    assert (target / "unimixer_kernels" / "triton_kernels" / "__init__.py").exists()
    assert not (target / "triton_kernels").exists()
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = _run([sys.executable, "-c", PROBE], cwd=workdir, env=env)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(target.resolve()), found
    assert Path(found["triton_kernels"]).resolve().is_relative_to(target.resolve()), found
    top = found["top_level_triton_kernels"]
    assert top is None or not Path(top).resolve().is_relative_to(target.resolve()), found
    ok, why = found["extension"]
    assert not ok and "UNIMIXER_SKIP_CUDA_BUILD=1" in why, found
