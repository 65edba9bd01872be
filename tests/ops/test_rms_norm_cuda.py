"""rms_norm and add_rms_norm on the ``cuda`` backend (csrc/rms_norm.cu) against the fp64 reference.

Every test runs the compiled kernels, so all of them need a GPU (``-m gpu``) and the built
extension; without the build they skip, unless ``UNIMIXER_REQUIRE_CUDA_EXT=1`` makes that a failure.
"""

from __future__ import annotations

import pytest
import torch

import unimixer_kernels as uk
import unimixer_kernels.ops.rms_norm_cuda  # noqa: F401  (registers the backend whatever ops/ imports)
from unimixer_kernels.testing import check_against_reference, random_input

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_extension")]

# narrow rows (one warp), non-powers of two, D not a multiple of the vector width, wide rows
# (several warps, several chunks per thread), bs=1 and an empty batch
SHAPES = [
    (1, 1, 8), (3, 5, 37), (2, 7, 128), (4, 300), (2, 3, 768), (3, 1536), (2, 4099), (3, 12288), (2, 16384),
    (0, 64),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_rms_norm_cuda(device, kernel_dtype, shape, noncontiguous):
    x = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(uk.rms_norm, (x, w), backend="cuda")


@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm_cuda(device, kernel_dtype, shape):
    x = random_input(shape, kernel_dtype, device, requires_grad=True)
    r = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=True)
    w = random_input(shape[-1:], torch.float32, device, requires_grad=True)
    check_against_reference(uk.add_rms_norm, (x, r, w), backend="cuda")


@pytest.mark.parametrize("shape", [(64, 1024), (2048, 128)])
def test_rms_norm_cuda_weight_in_activation_dtype(device, kernel_dtype, shape):
    x = random_input(shape, kernel_dtype, device, requires_grad=True)
    w = random_input(shape[-1:], kernel_dtype, device, requires_grad=True)
    check_against_reference(uk.rms_norm, (x, w), backend="cuda")


@pytest.mark.parametrize("d", [128, 520])
def test_rms_norm_cuda_unaligned_rows(device, kernel_dtype, d):
    # rows that start off a 16-byte boundary: the scalar-load path, through the row stride
    big = torch.randn(33, d + 1, device=device).to(kernel_dtype)
    x = big[:, 1:].detach().requires_grad_()
    w = random_input((d,), torch.float32, device, requires_grad=True)
    check_against_reference(uk.rms_norm, (x, w), backend="cuda")


def test_add_rms_norm_cuda_only_sum_used(device):
    x = random_input((4, 96), torch.float32, device, requires_grad=True)
    r = random_input((4, 96), torch.float32, device, requires_grad=True)
    w = random_input((96,), torch.float32, device, requires_grad=True)
    _, s = uk.add_rms_norm(x, r, w, backend="cuda")
    dx, dr = torch.autograd.grad(s.sum(), (x, r))
    assert torch.equal(dx, torch.ones_like(x)) and torch.equal(dr, torch.ones_like(r))


def test_rms_norm_cuda_stride0_grad(device):
    x = random_input((2, 3, 16), torch.float32, device, requires_grad=True)
    w = random_input((16,), torch.float32, device, requires_grad=True)
    y = uk.rms_norm(x, w, backend="cuda")
    g = torch.randn(16, device=device).expand_as(y)  # stride-0 grad_output
    dx, dw = torch.autograd.grad(y, (x, w), g)
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ex, ew = torch.autograd.grad(uk.rms_norm(xr, wr, backend="reference"), (xr, wr), g.double())
    torch.testing.assert_close(dx.double(), ex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dw.double(), ew, rtol=1e-4, atol=1e-5)


def test_rms_norm_cuda_weight_grad_is_deterministic(device):
    x = random_input((8192, 768), torch.bfloat16, device, requires_grad=True)
    w = random_input((768,), torch.float32, device, requires_grad=True)
    g = torch.randn(8192, 768, device=device, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(uk.rms_norm(x, w, backend="cuda"), (x, w), g) for _ in range(3)]
    for dx, dw in runs[1:]:
        assert torch.equal(dx, runs[0][0]) and torch.equal(dw, runs[0][1])


def test_rms_norm_cuda_rejects_float64(device):
    x = torch.randn(2, 8, device=device, dtype=torch.float64)
    with pytest.raises(TypeError, match="x: the cuda backend supports"):
        uk.rms_norm(x, torch.ones(8, device=device), backend="cuda")


def test_rms_norm_cuda_refuses_a_residual(device):
    # no post-norm residual in the compiled library: an error that names the alternatives
    x = random_input((4, 64), torch.float32, device)
    w = random_input((64,), torch.float32, device)
    with pytest.raises(ValueError, match="residual: the cuda backend's rms_norm has no residual"):
        uk.rms_norm(x, w, residual=x, backend="cuda")


def test_rms_norm_cuda_too_wide_row_says_what_to_use(device):
    x = torch.randn(2, 16385, device=device)  # beyond 512 threads x 32 elements held per thread
    with pytest.raises(ValueError, match="backend='triton'"):
        uk.rms_norm(x, torch.ones(16385, device=device), backend="cuda")


def test_opcheck(device):
    from unimixer_kernels.ops.rms_norm_cuda import cuda_ops

    ops = cuda_ops()
    x = random_input((3, 5, 64), torch.bfloat16, device, requires_grad=True)
    r = random_input((3, 5, 64), torch.bfloat16, device, requires_grad=True)
    w = random_input((64,), torch.float32, device, requires_grad=True)
    torch.library.opcheck(ops.rms_norm_fwd.default, (x, w, 1e-6))
    torch.library.opcheck(ops.add_rms_norm_fwd.default, (x, r, w, 1e-6))
    y, rstd = ops.rms_norm_fwd(x.detach(), w.detach(), 1e-6)
    dy = torch.randn_like(y)
    torch.library.opcheck(ops.rms_norm_bwd.default, (dy, None, x.detach(), w.detach(), rstd))
    torch.library.opcheck(ops.rms_norm_bwd.default, (dy, dy.clone(), x.detach(), w.detach(), rstd))


def test_compiled_fullgraph_matches_eager(device):
    from unimixer_kernels.ops.rms_norm_cuda import cuda_ops

    ops = cuda_ops()

    def f(x, r, w):
        y, s, _ = ops.add_rms_norm_fwd(x, r, w, 1e-6)
        return ops.rms_norm_fwd(y * 2, w, 1e-6)[0] + s

    x, r = (random_input((4, 7, 256), torch.float16, device) for _ in range(2))
    w = random_input((256,), torch.float32, device)
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, r, w), f(x, r, w), rtol=0, atol=0)
