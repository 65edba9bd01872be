"""residual_norm, ``Norm(x + r)`` (RankMixer's ``LN(PFFN(S) + S)``): the Triton kernels against the fp64
reference (SPEC §1, §8), forward and every gradient."""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.token_mixer import residual_norm_bwd, residual_norm_fwd
from unimixer_kernels.reference.token_mixer_norm import residual_norm as residual_norm_reference
from unimixer_kernels.testing import check_against_reference, random_input

from test_token_mixer import _norm_params as _params  # isort: skip

# (bs, T, D): bs = 1, a single token, odd widths, one past a power of two
SHAPES = [(1, 1, 8), (3, 4, 12), (2, 5, 20), (4, 3, 33), (2, 2, 129)]
NORMS = pytest.mark.parametrize("norm,bias", [("layer", True), ("layer", False), ("rms", False)],
                                ids=["layer-bias", "layer", "rms"])


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@NORMS
def test_residual_norm_triton(device, kernel_dtype, shape, norm, bias):
    x = random_input(shape, kernel_dtype, device, requires_grad=True)
    r = random_input(shape, kernel_dtype, device, requires_grad=True)
    w, b = _params(shape[-1], torch.float32, device, norm, bias)
    check_against_reference(uk.residual_norm, (x, r, w, b, 1e-6, norm), backend="triton")


@pytest.mark.triton
@NORMS
def test_residual_norm_triton_noncontiguous_and_mixed_dtypes(device, kernel_dtype, norm, bias):
    """Strided addends (one transposed in memory), a residual of another dtype than ``x``."""
    bs, t, d = 3, 4, 20
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    r = random_input((t, bs, d), torch.float32, device).transpose(0, 1).requires_grad_()
    w, b = _params(d, kernel_dtype, device, norm, bias)
    check_against_reference(uk.residual_norm, (x, r, w, b, 1e-5, norm), backend="triton")


@pytest.mark.triton
def test_residual_norm_independent(device):
    """Against torch's LayerNorm of the fp64 sum."""
    x, r = (random_input((2, 3, 16), torch.float32, device) for _ in range(2))
    w, b = random_input((16,), torch.float32, device), random_input((16,), torch.float32, device)
    expect = torch.nn.functional.layer_norm(x.double() + r.double(), (16,), w.double(), b.double(), 1e-6)
    out = uk.residual_norm(x, r, w, b, backend="triton")
    torch.testing.assert_close(out.double(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_residual_norm_opcheck(device):
    x, r = (random_input((2, 4, 12), torch.float32, device, requires_grad=True) for _ in range(2))
    w = random_input((12,), torch.float32, device, requires_grad=True)
    b = random_input((12,), torch.float32, device, requires_grad=True)
    for rms, bias in ((False, b), (False, None), (True, None)):
        torch.library.opcheck(residual_norm_fwd, (x, r, w, bias, 1e-6, rms))
    _, mean, rstd = residual_norm_fwd(x.detach(), r.detach(), w.detach(), b.detach(), 1e-6, False)
    args = (torch.randn(2, 4, 12, device=device), x.detach(), r.detach(), w.detach(), mean, rstd, False)
    torch.library.opcheck(residual_norm_bwd, args)


@pytest.mark.triton
def test_residual_norm_compile_fullgraph_and_empty_batch(device):
    x, r = (random_input((2, 4, 12), torch.float32, device, requires_grad=True) for _ in range(2))
    w = random_input((12,), torch.float32, device, requires_grad=True)
    b = random_input((12,), torch.float32, device, requires_grad=True)
    fn = torch.compile(lambda a, rr, ww, bb: uk.residual_norm(a, rr, ww, bb, backend="triton"),
                       fullgraph=True, backend="aot_eager")
    check_against_reference(lambda a, rr, ww, bb, backend: fn(a, rr, ww, bb) if backend == "triton"
                            else uk.residual_norm(a, rr, ww, bb, backend=backend), (x, r, w, b),
                            backend="triton")
    x0, r0 = (random_input((0, 4, 12), torch.float32, device, requires_grad=True) for _ in range(2))
    y = uk.residual_norm(x0, r0, w, b, backend="triton")
    dx, dr, dw, db = torch.autograd.grad(y.sum(), (x0, r0, w, b))
    assert y.shape == dx.shape == dr.shape == x0.shape
    assert torch.equal(dw, torch.zeros_like(dw)) and torch.equal(db, torch.zeros_like(db))


def test_residual_norm_reference_gradcheck():
    x, r = (torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(residual_norm_reference, (x, r, w, b))


def test_residual_norm_bad_input():
    x, w = torch.randn(2, 4, 12), torch.randn(12)
    with pytest.raises(ValueError, match="residual"):
        uk.residual_norm(x, torch.randn(2, 4, 11), w)
    with pytest.raises(ValueError, match="residual"):
        uk.residual_norm(x, torch.randn(8, 12), w)
    with pytest.raises(TypeError, match="residual"):
        uk.residual_norm(x, x.long(), w)
    with pytest.raises(ValueError, match="norm"):
        uk.residual_norm(x, x, w, norm="batch")
    with pytest.raises(ValueError, match="bias"):
        uk.residual_norm(x, x, w, torch.randn(12), norm="rms")
    with pytest.raises(ValueError, match="weight"):
        uk.residual_norm(x, x, torch.randn(11))
    with pytest.raises(ValueError, match="eps"):
        uk.residual_norm(x, x, w, eps=-1.0)


@pytest.mark.gpu
@pytest.mark.triton
def test_residual_norm_rankmixer_100m_gpu(kernel_dtype):
    """SPEC §10's RankMixer width with a smaller batch for the fp64 reference."""
    x, r = (random_input((64, 16, 768), kernel_dtype, "cuda", requires_grad=True) for _ in range(2))
    w = random_input((768,), torch.float32, "cuda", requires_grad=True)
    b = random_input((768,), torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.residual_norm, (x, r, w, b, 1e-6, "layer"), backend="triton")
