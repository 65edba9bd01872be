"""The Triton backend's autocast cast (``ops/lowering.py``): ``Tensor.to`` forward, the gradient
widened back in one Triton pass (``_partials.widen``); and the ops that take it under autocast."""

import pytest
import torch
from conftest import HAS_CUDA
from test_pgelu_ffn import _params

import unimixer_kernels as uk
from unimixer_kernels.ops import lowering
from unimixer_kernels.ops.lowering import lower_cast, widen_cast
from unimixer_kernels.testing import GRAD_FACTOR, OUTPUT_FACTOR, assert_close_to_reference, random_input


@pytest.mark.triton
@pytest.mark.parametrize("src", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("dst", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n", [0, 1, 1027])
def test_widen_cast_is_exact(device, src, dst, n):
    x = random_input((n,), torch.float32, device).to(src)
    out = widen_cast(x, dst)
    assert out.dtype == dst and out.shape == x.shape and out.is_contiguous()
    assert torch.equal(out, x.to(dst))  # every 16-bit value is exact in the wider dtype


@pytest.mark.triton
def test_widen_cast_of_a_noncontiguous_tensor(device):
    x = random_input((6, 40), torch.float32, device).to(torch.bfloat16)[:, ::3].t()  # [14, 6], strided
    out = widen_cast(x, torch.float32)
    assert out.is_contiguous() and torch.equal(out, x.float())


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(3, 5, 7), (1,)])
def test_lower_cast_forward_is_to_and_backward_widens(device, shape, monkeypatch):
    calls = []

    def counted(x, dtype):
        calls.append((x.dtype, dtype))
        return widen_cast(x, dtype)

    monkeypatch.setattr(lowering, "widen_cast", counted)
    x = random_input(shape, torch.float32, device, requires_grad=True)
    y = lower_cast(x, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, x.detach().to(torch.bfloat16))
    gy = random_input(shape, torch.float32, device).to(torch.bfloat16)
    y.backward(gy)
    assert x.grad.dtype == torch.float32 and torch.equal(x.grad, gy.float())
    assert calls == [(torch.bfloat16, torch.float32)]


def test_lower_cast_rejects_a_cast_to_its_own_dtype():
    with pytest.raises(ValueError, match="already torch.float32"):
        lower_cast(torch.ones(2), torch.float32)


@pytest.mark.triton
def test_lowering_cast_ops_pass_opcheck(device):
    x = random_input((4, 6), torch.float32, device, requires_grad=True)
    torch.library.opcheck(lower_cast, (x, torch.bfloat16))
    torch.library.opcheck(widen_cast, (x.detach().to(torch.bfloat16), torch.float32))


def _autocast_ffn_grads(backend, inputs, gout, dtype, **kwargs):
    for p in inputs:
        p.grad = None
    with torch.autocast(gout.device.type, dtype=dtype):
        out = uk.pgelu_ffn(*inputs, backend=backend, **kwargs)
    assert out.dtype == dtype
    out.backward(gout)
    return [out.detach()] + [p.grad for p in inputs]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=[pytest.mark.gpu, pytest.mark.skipif(
        not HAS_CUDA, reason="the Triton CPU interpreter truncates fp32 to bf16; checked on the GPU")]),
], ids=["fp16", "bf16"])
@pytest.mark.parametrize("path", ["fused", "wide-triton", "wide-cublas"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_autocast_ffn_on_triton_lowers_its_own_weights(device, dtype, monkeypatch, path, recompute):
    """Under autocast the Triton backend's fp32 input is cast by ``lower_cast`` (its gradient widened
    back by the cast kernel), while the FFN's weights and biases reach the op uncast (``lowers``): their
    gradients come back fp32 from the op itself, on the fused path and on the wide path's fp32 GEMM
    outputs (the project's GEMM and ``torch.bmm``), and agree with the reference backend's through
    ``Tensor.to`` by SPEC §8's rule."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    calls = []

    def counted(x, dt):
        calls.append(tuple(x.shape))
        return widen_cast(x, dt)

    monkeypatch.setattr(lowering, "widen_cast", counted)
    if path != "fused":
        monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
        monkeypatch.setenv("UNIMIXER_FFN_GEMM", path.removeprefix("wide-"))
    bs, t, d, kd = 5, 3, 16, 24
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    inputs = [u, *_params(t, d, kd, torch.float32, device, True)]
    gout = random_input((bs, t, d), torch.float32, device).to(dtype)
    got = _autocast_ffn_grads("triton", inputs, gout, dtype, recompute=recompute)
    assert calls == [tuple(u.shape)]
    assert all(g.dtype == torch.float32 for g in got[1:])
    pt = _autocast_ffn_grads("reference", inputs, gout, dtype)
    # SPEC §8 against fp64 on the inputs as autocast rounds them
    lowered = [p.detach().to(dtype).double().requires_grad_() for p in inputs]
    out64 = uk.reference.pgelu_ffn(*lowered)
    out64.backward(gout.double())
    ref = [out64.detach()] + [p.grad for p in lowered]
    for i, (g, r, b) in enumerate(zip(got, ref, pt)):
        factor = OUTPUT_FACTOR if i == 0 else GRAD_FACTOR
        assert_close_to_reference(g, r, b, factor=factor, name=f"result {i}", test_dtype=dtype)
