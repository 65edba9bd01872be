"""The compiled extension ``unimixer_kernels._C``, checked on any machine (no kernel runs here).

When the library was built (CI builds it), it must load, register every op schema with a CUDA
kernel, and carry the fake kernels and autograd formulas the Python glue adds. CI sets
``UNIMIXER_REQUIRE_CUDA_EXT=1`` so a missing build fails there instead of skipping.
"""

from __future__ import annotations

import os
import re
import types

import pytest
import torch

from unimixer_kernels import _cuda_ext

REQUIRE_BUILD = os.environ.get("UNIMIXER_REQUIRE_CUDA_EXT", "0") == "1"

SCHEMAS = {
    "rms_norm_fwd": "unimixer_C::rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
    "add_rms_norm_fwd": (
        "unimixer_C::add_rms_norm_fwd(Tensor x, Tensor residual, Tensor weight, float eps) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    "rms_norm_bwd": (
        "unimixer_C::rms_norm_bwd(Tensor dy, Tensor? dsum, Tensor s, Tensor weight, Tensor rstd) "
        "-> (Tensor, Tensor)"
    ),
    "sinkhorn_fwd": (
        "unimixer_C::sinkhorn_fwd(Tensor logits, float tau, int iters, bool symmetric) -> (Tensor, Tensor, Tensor)"
    ),
    "sinkhorn_bwd": (
        "unimixer_C::sinkhorn_bwd(Tensor dp, Tensor logits, Tensor u, Tensor v, float tau, int iters, "
        "bool symmetric) -> Tensor"
    ),
    "sinkhorn_bwd_": (
        "unimixer_C::sinkhorn_bwd_(Tensor dp, Tensor(a!) logits, Tensor u, Tensor v, float tau, int iters, "
        "bool symmetric) -> ()"
    ),
    "pswiglu_fwd": (
        "unimixer_C::pswiglu_fwd(Tensor u, Tensor w_gate, Tensor w_up, Tensor w_down, Tensor? b_gate, "
        "Tensor? b_up, Tensor? b_down, bool save) -> (Tensor, Tensor, Tensor)"
    ),
}


def built_library() -> str:
    """The path of the built library; skips (or, in CI, fails) when there is none."""
    info = _cuda_ext.build_info()
    path = _cuda_ext.library_path()
    if path is None or info is None or not info.BUILT:
        why = info.REASON if info is not None and not info.BUILT else "no library or build record"
        message = f"the CUDA extension is not built here: {why}"
        if REQUIRE_BUILD:
            pytest.fail(message + " (UNIMIXER_REQUIRE_CUDA_EXT=1)")
        pytest.skip(message)
    return path


def test_library_registers_every_schema_with_a_cuda_kernel():
    torch.ops.load_library(built_library())
    for name, schema in SCHEMAS.items():
        op = getattr(torch.ops.unimixer_C, name).default
        assert str(op._schema) == schema
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
        assert torch.Tag.pt2_compliant_tag in op.tags, name


def test_build_record_matches_the_running_torch():
    built_library()
    info = _cuda_ext.build_info()
    assert info.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]
    assert info.TORCH_CUDA_VERSION == torch.version.cuda
    assert info.CUDA_ARCH
    assert _cuda_ext.status() == (True, "")


def test_fake_kernels_and_autograd_on_meta_tensors():
    built_library()
    from unimixer_kernels.ops import rms_norm_cuda

    ops = rms_norm_cuda.cuda_ops()
    x = torch.empty(2, 3, 40, device="meta", dtype=torch.bfloat16, requires_grad=True)
    r = torch.empty(2, 3, 40, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(40, device="meta", dtype=torch.float32, requires_grad=True)
    y, rstd = ops.rms_norm_fwd(x, w, 1e-6)
    assert (y.shape, y.dtype, rstd.shape, rstd.dtype) == (x.shape, x.dtype, (2, 3), torch.float32)
    dx, dw = torch.autograd.grad(y, (x, w), torch.empty_like(y))
    assert (dx.shape, dx.dtype, dw.shape, dw.dtype) == (x.shape, x.dtype, w.shape, w.dtype)
    y, s, rstd = ops.add_rms_norm_fwd(x, r, w, 1e-6)
    assert s.shape == x.shape and rstd.shape == (2, 3)
    dx, dr, dw = torch.autograd.grad((y, s), (x, r, w), (torch.empty_like(y), torch.empty_like(s)))
    assert dx.shape == dr.shape == x.shape and dw.shape == w.shape


def test_sinkhorn_fake_kernels_and_autograd_on_meta_tensors():
    built_library()
    from unimixer_kernels.ops import sinkhorn_cuda

    ops = sinkhorn_cuda.cuda_ops()
    x = torch.empty(2, 3, 40, 40, device="meta", dtype=torch.bfloat16, requires_grad=True)
    p, u, v = ops.sinkhorn_fwd(x, 0.05, 7, True)
    assert (p.shape, p.dtype) == (x.shape, torch.float32)
    assert u.shape == v.shape == (2, 3, 7, 40) and u.dtype == v.dtype == torch.float32
    (dx,) = torch.autograd.grad(p, x, torch.empty_like(p))
    assert (dx.shape, dx.dtype) == (x.shape, x.dtype)
    assert ops.sinkhorn_bwd_(torch.empty_like(p), x.detach(), u, v, 0.05, 7, True) is None


def test_lite_global_cuda_ops_fakes_and_autograd_on_meta_tensors():
    # the cuda Lite global weight's own ops: W_G and the potentials out, the factors' gradients back
    built_library()
    from unimixer_kernels.ops import sinkhorn_cuda

    a_g = torch.empty(40, 6, device="meta", dtype=torch.bfloat16, requires_grad=True)
    b_g = torch.empty(6, 40, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w, u, v, logits, pa, pb = sinkhorn_cuda.lite_global_cuda_fwd(a_g, b_g, 0.05, 7, True)
    assert (w.shape, w.dtype) == ((40, 40), torch.float32)
    assert u.shape == v.shape == (7, 40) and u.dtype == v.dtype == torch.float32
    # n <= SAVED_LOGITS_MAX_N: the logits and the factors' bf16 parts saved for the backward
    assert (logits.shape, logits.dtype) == ((40, 40), torch.float32)
    assert (pa.shape, pb.shape, pa.dtype) == ((3, 40, 6), (3, 6, 40), torch.bfloat16)
    da, db = torch.autograd.grad(w, (a_g, b_g), torch.empty_like(w))
    assert (da.shape, da.dtype, db.shape, db.dtype) == (a_g.shape, a_g.dtype, b_g.shape, b_g.dtype)


def test_pswiglu_cuda_fake_kernel_and_autograd_on_meta_tensors():
    # the compiled forward's fake, and its autograd formula (the Triton backward's op and fake)
    built_library()
    from unimixer_kernels.ops import pswiglu_cuda

    ops = pswiglu_cuda.cuda_ops()
    bs, t, d, h = 5, 3, 40, 24
    meta = dict(device="meta", dtype=torch.bfloat16, requires_grad=True)
    u = torch.empty(bs, t, d, **meta)
    ws = [torch.empty(t, d, h, **meta), torch.empty(t, d, h, **meta), torch.empty(t, h, d, **meta),
          torch.empty(t, h, **meta), torch.empty(t, h, **meta), torch.empty(t, d, **meta)]
    for save in (False, True):
        o, g, v = ops.pswiglu_fwd(u, *ws, save)
        assert (o.shape, o.dtype) == (u.shape, u.dtype)
        assert g.shape == v.shape == ((t, bs, h) if save else (0,))
        grads = torch.autograd.grad(o, (u, *ws), torch.empty_like(o))
        assert [x.shape for x in grads] == [x.shape for x in (u, *ws)]


def test_library_loads_under_the_cuda_backend_status():
    built_library()
    ok, why = _cuda_ext.status()
    assert ok, why


# --- the version check, without a build ------------------------------------------------------


def _record(torch_version: str, cuda: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        BUILT=True, REASON="", TORCH_VERSION=torch_version, TORCH_CUDA_VERSION=cuda, CUDA_ARCH="9.0"
    )


def test_mismatched_torch_names_both_versions():
    with pytest.raises(_cuda_ext.ExtensionMismatchError, match=r"torch 2\.11\.0\+cu130.*torch 2\.14\.1"):
        _cuda_ext.check_build_matches(_record("2.11.0+cu130", "13.0"), "2.14.1+cu130", "13.0")


def test_mismatched_cuda_major_names_both_versions():
    with pytest.raises(_cuda_ext.ExtensionMismatchError, match=r"CUDA 12\.8.*CUDA 13\.0"):
        _cuda_ext.check_build_matches(_record("2.11.0+cu128", "12.8"), "2.11.0+cu130", "13.0")


def test_same_release_with_another_local_tag_is_accepted():
    _cuda_ext.check_build_matches(_record("2.11.0+cu130", "13.0"), "2.11.0", "13.0")


def test_loading_a_mismatched_build_raises(monkeypatch, tmp_path):
    fake_lib = tmp_path / "_C.so"
    fake_lib.write_bytes(b"")
    monkeypatch.setattr(_cuda_ext, "build_info", lambda: _record("1.0.0", "13.0"))
    monkeypatch.setattr(_cuda_ext, "library_path", lambda: str(fake_lib))
    _cuda_ext.load.cache_clear()
    try:
        expected = rf"torch 1\.0\.0.*{re.escape(torch.__version__)}"
        with pytest.raises(_cuda_ext.ExtensionMismatchError, match=expected):
            _cuda_ext.load()
    finally:
        _cuda_ext.load.cache_clear()


def test_a_skipped_build_says_why(monkeypatch):
    record = types.SimpleNamespace(BUILT=False, REASON="the build was skipped (UNIMIXER_SKIP_CUDA_BUILD=1)")
    monkeypatch.setattr(_cuda_ext, "build_info", lambda: record)
    _cuda_ext.load.cache_clear()
    try:
        with pytest.raises(ImportError, match="UNIMIXER_SKIP_CUDA_BUILD=1"):
            _cuda_ext.load()
    finally:
        _cuda_ext.load.cache_clear()


@pytest.mark.parametrize(
    "arch, capability, runs",
    [
        ("9.0", (9, 0), True),
        ("9.0", (8, 0), False),
        ("9.0", (10, 0), False),
        ("8.0", (8, 6), True),
        ("8.6", (8, 0), False),
        ("9.0a", (9, 0), True),
        ("9.0a", (9, 1), False),
        ("8.0;9.0+PTX", (10, 0), True),
        ("8.0 9.0", (9, 0), True),
        ("9.0+PTX", (8, 9), False),
    ],
)
def test_arch_runs_on(arch, capability, runs):
    assert _cuda_ext.arch_runs_on(arch, capability) is runs


def test_cuda_backend_checks_its_limits_before_calling_the_library():
    # no library call happens: the Python side rejects what the kernels cannot hold
    from unimixer_kernels.ops import rms_norm_cuda

    w = torch.empty(16385, device="meta")
    with pytest.raises(ValueError, match=r"last dim must be <= 16384; got 16385.*backend='triton'"):
        rms_norm_cuda._rms_norm_cuda(torch.empty(2, 16385, device="meta"), w, 1e-6)
    with pytest.raises(TypeError, match="x: the cuda backend supports dtypes"):
        rms_norm_cuda._rms_norm_cuda(torch.empty(2, 8, device="meta", dtype=torch.float64), w[:8], 1e-6)


def test_sinkhorn_cuda_backend_checks_its_limits_before_calling_the_library():
    from unimixer_kernels.ops import sinkhorn_cuda

    # above n = 1024 only symmetric logits (the paired kernels), up to n = 5120
    with pytest.raises(ValueError, match=r"n <= 1024.*got n = 1025, symmetric=False; use backend='triton'"):
        sinkhorn_cuda._sinkhorn_cuda(torch.empty(1025, 1025, device="meta"), 0.05, 3, False)
    with pytest.raises(ValueError, match=r"n <= 5120.*got n = 5121, symmetric=True; use backend='triton'"):
        sinkhorn_cuda._sinkhorn_cuda(torch.empty(5121, 5121, device="meta"), 0.05, 3, True)
    with pytest.raises(TypeError, match="logits: the cuda backend takes dtype"):
        sinkhorn_cuda._sinkhorn_cuda(torch.empty(8, 8, device="meta", dtype=torch.float64), 0.05, 3, True)
    with pytest.raises(ValueError, match=r"at most 64 tiles; 5 matrices of n = 500 have 80"):
        sinkhorn_cuda._sinkhorn_cuda(torch.empty(5, 500, 500, device="meta"), 0.05, 3, True)
