"""Test configuration: the device under test, output poisoning, the GPU marker, and the compiled
extension's presence for the ``cuda`` backends' tests.

Without a CUDA device, Triton kernels run in the interpreter on CPU tensors (``TRITON_INTERPRET=1``
must be set before any kernel is defined, so it is set here, first).
"""

import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["UNIMIXER_POISON_OUTPUTS"] = "1"

DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    reason = "needs a CUDA GPU: no CUDA device on this machine (run `pytest -m gpu` on one)"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # a different seed per test, but reproducible from the test id
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


_BF16_INTERPRETER = (
    "the Triton CPU interpreter converts fp32 to bf16 by truncation, not round-to-nearest-even, "
    "so bf16 kernels are checked on the GPU (-m gpu) only"
)


@pytest.fixture(
    params=[
        torch.float32,
        torch.float16,
        # marked gpu as well, so that `pytest -m gpu` on a GPU runs every test's bf16 case
        pytest.param(torch.bfloat16,
                     marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=_BF16_INTERPRETER)]),
    ],
    ids=["fp32", "fp16", "bf16"],
)
def kernel_dtype(request) -> torch.dtype:
    """The dtypes every kernel is tested in."""
    return request.param


@pytest.fixture
def sm90_compile(tmp_path):
    """Run Python ``code`` (with the repo root and ``tests/ops`` importable) in a fresh process
    without ``TRITON_INTERPRET``, where Triton compiles for sm_90 instead of interpreting: the
    interpreter accepts things the GPU compiler rejects (dot shapes, layouts, shared memory)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)

    def run(code: str) -> None:
        paths = [root, os.path.join(root, "tests", "ops")]
        done = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}\n{code}"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]

    return run


@pytest.fixture
def cuda_extension():
    """Skip unless the compiled extension loads (a failure instead with ``UNIMIXER_REQUIRE_CUDA_EXT=1``,
    as CI and the GPU runs set it, so that a broken build cannot pass as skips)."""
    from unimixer_kernels import _cuda_ext

    ok, why = _cuda_ext.status()
    if not ok:
        if os.environ.get("UNIMIXER_REQUIRE_CUDA_EXT", "0") == "1":
            pytest.fail(f"the CUDA extension does not load: {why}")
        pytest.skip(f"the CUDA extension does not load: {why}")
