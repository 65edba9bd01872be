"""The Triton backend's autocast cast (``ops/lowering.py``): ``[x.to(dtype) for x in xs]`` forward in
one launch, the gradients widened back in one launch (``_partials.cast_all``); and the ops that take it
under autocast."""

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
    xs = [random_input(shape, torch.float32, device).to(src) for shape in ((n,), (3, 5))]
    outs = widen_cast(xs, dst)
    for x, out in zip(xs, outs):
        assert out.dtype == dst and out.shape == x.shape and out.is_contiguous()
        assert torch.equal(out, x.to(dst))  # every 16-bit value is exact in the wider dtype


@pytest.mark.triton
def test_widen_cast_of_a_noncontiguous_tensor(device):
    x = random_input((6, 40), torch.float32, device).to(torch.bfloat16)[:, ::3].t()  # [14, 6], strided
    (out,) = widen_cast([x], torch.float32)
    assert out.is_contiguous() and torch.equal(out, x.float())


@pytest.mark.triton
def test_widen_cast_takes_many_tensors_in_launches_of_seven(device, monkeypatch):
    from unimixer_kernels.triton_kernels import _partials

    launches = []
    real = _partials._sum_partials_launch
    monkeypatch.setattr(_partials, "_sum_partials_launch", lambda pairs, *rest: launches.append(len(pairs))
                        or real(pairs, *rest))
    xs = [random_input((k + 1, 3), torch.float32, device).to(torch.float16) for k in range(9)]
    outs = widen_cast(xs, torch.float32)
    assert launches == [7, 2]
    assert all(torch.equal(out, x.float()) for x, out in zip(xs, outs))


@pytest.mark.triton
@pytest.mark.parametrize("dst", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lower_cast_forward_is_to_in_one_launch_and_backward_widens_in_one(device, dst, monkeypatch):
    from unimixer_kernels.triton_kernels import _partials

    calls, launches = [], []

    def counted(xs, dtype):
        calls.append(([x.dtype for x in xs], dtype))
        return widen_cast(xs, dtype)

    real = _partials._sum_partials_launch
    monkeypatch.setattr(_partials, "_sum_partials_launch", lambda pairs, *rest: launches.append(len(pairs))
                        or real(pairs, *rest))
    monkeypatch.setattr(lowering, "widen_cast", counted)
    shapes = [(3, 5, 7), (1,), (4, 6)]
    xs = [random_input(s, torch.float32, device, requires_grad=True) for s in shapes]
    xs[2] = xs[2].detach().t().requires_grad_()  # non-contiguous: cast with its strides, as x.to
    ys = lower_cast(xs, dst)
    for x, y in zip(xs, ys):
        assert y.dtype == dst and y.stride() == x.to(dst).stride() and torch.equal(y, x.detach().to(dst))
    # the contiguous ones in one launch (bf16 on the CPU interpreter: torch's cast, its rounding)
    assert launches == ([] if dst == torch.bfloat16 and device == "cpu" else [2])
    launches.clear()
    gys = [random_input(s.shape, torch.float32, device).to(dst) for s in ys]
    torch.autograd.backward(ys, gys)
    for x, gy in zip(xs, gys):
        assert x.grad.dtype == torch.float32 and torch.equal(x.grad, gy.float())
    assert calls == [([dst] * 3, torch.float32)] and launches == [3]


def test_lower_cast_names_bad_lists():
    with pytest.raises(ValueError, match="already torch.float32"):
        lower_cast([torch.ones(2)], torch.float32)
    with pytest.raises(ValueError, match="one dtype"):
        lower_cast([torch.ones(2), torch.ones(2, dtype=torch.float64)], torch.bfloat16)
    with pytest.raises(ValueError, match="at least one tensor"):
        lower_cast([], torch.bfloat16)


@pytest.mark.triton
def test_lowering_cast_ops_pass_opcheck(device):
    xs = [random_input((4, 6), torch.float32, device, requires_grad=True),
          random_input((5,), torch.float32, device, requires_grad=True)]
    torch.library.opcheck(lower_cast, (xs, torch.float16))
    torch.library.opcheck(widen_cast, ([x.detach().to(torch.bfloat16) for x in xs], torch.float32))


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

    def counted(xs, dt):
        calls.extend(tuple(x.shape) for x in xs)
        return widen_cast(xs, dt)

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
