"""Running from a checkout without the editable finder (legacy ``setup.py develop``, or a bare
``PYTHONPATH``) still finds the Triton kernels under ``unimixer_kernels.triton_kernels``."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = f"""
import sys
# drop PEP 660 editable finders and any installed copy: only the checkout on sys.path remains
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, {str(ROOT)!r})
import unimixer_kernels, unimixer_kernels.triton_kernels._launch as launch
assert unimixer_kernels.__file__.startswith({str(ROOT)!r}), unimixer_kernels.__file__
assert launch.__file__.startswith({str(ROOT / "triton_kernels")!r}), launch.__file__
assert "triton_kernels" not in sys.modules, "a top-level triton_kernels was imported"
print("ok")
"""


def test_checkout_maps_triton_kernels_without_editable_finder():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
