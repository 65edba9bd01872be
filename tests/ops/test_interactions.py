"""fm_interaction and dot_interaction: Triton kernels against the fp64 reference (SPEC §6, §8)."""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.interactions import (
    dot_interaction_bwd,
    dot_interaction_fwd,
    fm_interaction_bwd,
    fm_interaction_fwd,
)
from unimixer_kernels.testing import check_against_reference, random_input

# (bs, n, d, k): odd n, d over one 64-wide chunk, k = 1, bs = 1, bs above the interpreter's 4
# programs so a program loops over several samples
FM_SHAPES = [(1, 1, 8, 1), (3, 7, 24, 5), (9, 16, 80, 32), (2, 33, 17, 3)]


@pytest.mark.triton
@pytest.mark.parametrize("shape", FM_SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_fm_interaction_triton(device, kernel_dtype, shape, noncontiguous):
    bs, n, d, k = shape
    x = random_input((bs, n, d), kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    y = random_input((n, k), kernel_dtype, device, requires_grad=True, scale=0.5)
    check_against_reference(uk.fm_interaction, (x, y), backend="triton")


@pytest.mark.triton
def test_fm_interaction_triton_token_major_view(device, kernel_dtype):
    x = random_input((7, 5, 24), kernel_dtype, device).transpose(0, 1).requires_grad_()  # [5, 7, 24] view
    y = random_input((7, 6), kernel_dtype, device, requires_grad=True)
    check_against_reference(uk.fm_interaction, (x, y), backend="triton")


@pytest.mark.triton
def test_fm_interaction_triton_mixed_dtypes(device):
    x = random_input((3, 7, 24), torch.float16, device, requires_grad=True)
    y = random_input((7, 5), torch.float32, device, requires_grad=True)
    check_against_reference(uk.fm_interaction, (x, y), backend="triton")


def _fm_autograd_free(x, y, do):
    """The gradients derived by hand, in fp64: dX = dO W^T + Y dW^T, dY = sum_s X dW."""
    w = x.transpose(1, 2) @ y
    dw = x.transpose(1, 2) @ do
    return do @ w.transpose(1, 2) + y @ dw.transpose(1, 2), (x @ dw).sum(0)


@pytest.mark.triton
def test_fm_interaction_triton_matches_derivation_and_stride0_grad(device):
    x = random_input((5, 7, 20), torch.float32, device, requires_grad=True)
    y = random_input((7, 3), torch.float32, device, requires_grad=True)
    do = torch.randn(3, device=device).expand(5, 7, 3)  # stride-0 grad_output
    dx, dy = torch.autograd.grad(uk.fm_interaction(x, y, backend="triton"), (x, y), do)
    ex, ey = _fm_autograd_free(x.detach().double(), y.detach().double(), do.double())
    torch.testing.assert_close(dx.double(), ex, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dy.double(), ey, rtol=1e-4, atol=1e-4)
    xr, yr = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    ax, ay = torch.autograd.grad(uk.fm_interaction(xr, yr, backend="reference"), (xr, yr), do.double())
    torch.testing.assert_close(ax, ex)
    torch.testing.assert_close(ay, ey)


@pytest.mark.triton
def test_fm_interaction_triton_deterministic(device):
    x = random_input((9, 7, 20), torch.float32, device, requires_grad=True)
    y = random_input((7, 3), torch.float32, device, requires_grad=True)
    do = torch.randn(9, 7, 3, device=device)
    a = torch.autograd.grad(uk.fm_interaction(x, y, backend="triton"), (x, y), do)
    b = torch.autograd.grad(uk.fm_interaction(x, y, backend="triton"), (x, y), do)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.triton
def test_fm_interaction_opcheck(device):
    x = random_input((3, 7, 20), torch.float32, device, requires_grad=True)
    y = random_input((7, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(fm_interaction_fwd, (x, y))
    torch.library.opcheck(fm_interaction_bwd, (torch.randn(3, 7, 5, device=device), x.detach(), y.detach()))


def test_fm_interaction_bad_input():
    with pytest.raises(ValueError, match="y"):
        uk.fm_interaction(torch.randn(2, 7, 4), torch.randn(6, 3))
    with pytest.raises(ValueError, match="x"):
        uk.fm_interaction(torch.randn(7, 4), torch.randn(7, 3))
    with pytest.raises(TypeError, match="y"):
        uk.fm_interaction(torch.randn(2, 7, 4), torch.ones(7, 3, dtype=torch.long))


DOT_SHAPES = [(1, 2, 8), (3, 7, 24), (2, 27, 70)]


@pytest.mark.triton
@pytest.mark.parametrize("shape", DOT_SHAPES)
@pytest.mark.parametrize("order", ["triu", "tril"])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_dot_interaction_triton(device, kernel_dtype, shape, order, noncontiguous):
    x = random_input(shape, kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    check_against_reference(uk.dot_interaction, (x, order), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("order", ["triu", "tril"])
def test_dot_interaction_triton_pairs(device, order):
    """Each output column is the dot of the pair the convention names, built independently."""
    n = 6
    x = random_input((2, n, 8), torch.float32, device)
    pairs = [(i, j) for i in range(n) for j in range(n) if (i < j if order == "triu" else i > j)]
    expect = torch.stack([(x[:, i] * x[:, j]).sum(-1) for i, j in pairs], dim=1)
    if order == "tril":
        expect = torch.cat([expect, torch.zeros(2, 1, device=device)], dim=1)
    torch.testing.assert_close(uk.dot_interaction(x, order, backend="triton"), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("order", ["triu", "tril"])
def test_dot_interaction_opcheck(device, order):
    x = random_input((3, 7, 20), torch.float32, device, requires_grad=True)
    torch.library.opcheck(dot_interaction_fwd, (x, order))
    width = 21 + (order == "tril")
    torch.library.opcheck(dot_interaction_bwd, (torch.randn(3, width, device=device), x.detach(), order))


@pytest.mark.gpu
@pytest.mark.triton
def test_fm_interaction_wukong_gpu(kernel_dtype):
    """SPEC §10 wukong (n=64, d=256, k=32) with a smaller batch for the fp64 reference."""
    x = random_input((256, 64, 256), kernel_dtype, "cuda", requires_grad=True)
    y = random_input((64, 32), kernel_dtype, "cuda", requires_grad=True, scale=0.1)
    check_against_reference(uk.fm_interaction, (x, y), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("order", ["triu", "tril"])
def test_dot_interaction_dlrm_criteo_gpu(kernel_dtype, order):
    """SPEC §10 dlrm-criteo (n=27, d=128) with a smaller batch."""
    x = random_input((512, 27, 128), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.dot_interaction, (x, order), backend="triton")


@pytest.mark.triton
def test_interactions_compile_fullgraph(device):
    x = random_input((3, 7, 20), torch.float32, device, requires_grad=True)
    y = random_input((7, 5), torch.float32, device, requires_grad=True)
    fm = torch.compile(lambda a, b: uk.fm_interaction(a, b, backend="triton"), fullgraph=True,
                       backend="aot_eager")
    check_against_reference(lambda a, b, backend: fm(a, b) if backend == "triton"
                            else uk.fm_interaction(a, b, backend=backend), (x, y), backend="triton")
    dot = torch.compile(lambda a: uk.dot_interaction(a, "tril", backend="triton"), fullgraph=True,
                        backend="aot_eager")
    check_against_reference(lambda a, backend: dot(a) if backend == "triton"
                            else uk.dot_interaction(a, "tril", backend=backend), (x,), backend="triton")


@pytest.mark.triton
def test_interactions_triton_empty_batch(device):
    x = random_input((0, 7, 20), torch.float32, device, requires_grad=True)
    y = random_input((7, 5), torch.float32, device, requires_grad=True)
    o = uk.fm_interaction(x, y, backend="triton")
    assert o.shape == (0, 7, 5)
    dx, dy = torch.autograd.grad(o.sum(), (x, y))
    assert dx.shape == x.shape and torch.equal(dy, torch.zeros_like(dy))
    for order, width in (("triu", 21), ("tril", 22)):
        z = uk.dot_interaction(x, order, backend="triton")
        assert z.shape == (0, width)
        (dx,) = torch.autograd.grad(z.sum(), x)
        assert dx.shape == x.shape


@pytest.mark.triton
@pytest.mark.parametrize("split", [False, True], ids=["rounded", "split"])
def test_fm_interaction_triton_backward_modes(device, kernel_dtype, split, monkeypatch):
    """Both precisions of the backward (W/dW rounded to the input dtype, or hi/lo split) pass."""
    from unimixer_kernels.triton_kernels import fm_interaction as kernels

    monkeypatch.setitem(kernels.BWD_META, "split", split)
    x = random_input((5, 33, 80), kernel_dtype, device, requires_grad=True)
    y = random_input((33, 16), kernel_dtype, device, requires_grad=True, scale=0.5)
    check_against_reference(uk.fm_interaction, (x, y), backend="triton")
