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
