"""rms_norm and add_rms_norm: every backend against the fp64 reference (SPEC §8)."""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.testing import check_against_reference, random_input

# the kernels take tiles of about 4096 values (32 rows at D = 128, 512 rows at D = 8): the last
# two shapes span several tiles, the last one partial, and (180 rows) several tiles per program
# in the backward
SHAPES = [(1, 1, 8), (3, 5, 37), (2, 7, 128), (4, 300), (9, 20, 128), (600, 8)]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_rms_norm_triton(device, kernel_dtype, shape, noncontiguous):
    x = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(uk.rms_norm, (x, w), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm_triton(device, kernel_dtype, shape):
    x = random_input(shape, kernel_dtype, device, requires_grad=True)
    r = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=True)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(uk.add_rms_norm, (x, r, w), backend="triton")


@pytest.mark.triton
def test_rms_norm_stride0_grad(device):
    x = random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    w = random_input((16,), torch.float32, device, requires_grad=True)
    y = uk.rms_norm(x, w, backend="triton")
    g = torch.randn(16, device=device).expand_as(y)  # stride-0 grad_output
    dx, dw = torch.autograd.grad(y, (x, w), g)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ex, ew = torch.autograd.grad(uk.rms_norm(xr, wr, backend="reference"), (xr, wr), g.double())
    torch.testing.assert_close(dx.double(), ex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dw.double(), ew, rtol=1e-4, atol=1e-5)


def test_rms_norm_reference_gradcheck():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: uk.rms_norm(a, b, backend="reference"), (x, w))


# --- rms_norm with a residual: residual + RMSNorm(x) in the norm's pass ----------------------------


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_rms_norm_residual_triton(device, kernel_dtype, shape, noncontiguous):
    x = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    r = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=not noncontiguous)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(lambda a, b, c, backend: uk.rms_norm(a, c, residual=b, backend=backend),
                            (x, r, w), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_rms_norm_residual_is_x_triton(device, kernel_dtype, shape, noncontiguous):
    # x + RMSNorm(x): the backward kernel adds the residual's gradient into dx itself
    x = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(lambda a, c, backend: uk.rms_norm(a, c, residual=a, backend=backend),
                            (x, w), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("residual_is_x", [False, True], ids=["residual", "x"])
def test_rms_norm_residual_stride0_grad(device, residual_is_x):
    x = random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    r = x if residual_is_x else random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    w = random_input((16,), torch.float32, device, requires_grad=True)
    leaves = (x, w) if residual_is_x else (x, r, w)
    z = uk.rms_norm(x, w, residual=r, backend="triton")
    g = torch.randn(16, device=device).expand_as(z)  # stride-0 grad_output
    got = torch.autograd.grad(z, leaves, g)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    xr, rr = ref_leaves[0], ref_leaves[0] if residual_is_x else ref_leaves[1]
    zr = uk.rms_norm(xr, ref_leaves[-1], residual=rr, backend="reference")
    for a, e in zip(got, torch.autograd.grad(zr, ref_leaves, g.double())):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.triton
def test_rms_norm_residual_opcheck(device):
    from unimixer_kernels.ops.rms_norm import rms_norm_residual_fwd

    x = torch.randn(3, 5, 24, device=device, requires_grad=True)
    r = torch.randn(3, 5, 24, device=device, requires_grad=True)
    w = torch.randn(24, device=device, requires_grad=True)
    torch.library.opcheck(rms_norm_residual_fwd, (x, r, w, 1e-6))
    torch.library.opcheck(rms_norm_residual_fwd, (x, None, w, 1e-6))


@pytest.mark.triton
@pytest.mark.parametrize("residual_is_x", [False, True], ids=["residual", "x"])
def test_rms_norm_residual_compile_fullgraph(device, residual_is_x):
    torch._dynamo.reset()

    def f(a, b, c):
        return uk.rms_norm(a, c, residual=a if residual_is_x else b, backend="triton")

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    r = random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    w = random_input((16,), torch.float32, device, requires_grad=True)
    out = compiled(x, r, w)
    torch.testing.assert_close(out, f(x, r, w))
    g = torch.randn_like(out)
    leaves = (x, r, w)
    got = torch.autograd.grad(out, leaves, g, allow_unused=True)
    want = torch.autograd.grad(f(x, r, w), leaves, g, allow_unused=True)
    for a, e in zip(got, want):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_rms_norm_residual_bad_input(device, backend):
    x = torch.randn(2, 3, 8, device=device)
    w = torch.ones(8, device=device)
    with pytest.raises(ValueError, match="residual"):
        uk.rms_norm(x, w, residual=torch.randn(2, 3, 4, device=device), backend=backend)
    with pytest.raises(TypeError, match="residual"):
        uk.rms_norm(x, w, residual=x.double(), backend=backend)
    with pytest.raises(TypeError, match="residual"):
        uk.rms_norm(x, w, residual=[1.0], backend=backend)
