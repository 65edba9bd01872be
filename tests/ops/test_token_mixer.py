"""token_mixer and token_mixer_residual_norm: Triton kernels against the fp64 reference (SPEC §1, §8),
and TokenMixer against an explicit permutation index built independently."""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.token_mixer import (
    token_mixer_bwd,
    token_mixer_fwd,
    token_mixer_residual_norm,
    token_mixer_residual_norm_bwd,
    token_mixer_residual_norm_fwd,
)
from unimixer_kernels.reference.token_mixer_norm import (
    token_mixer_residual_norm as token_mixer_residual_norm_reference,
)
from unimixer_kernels.testing import check_against_reference, random_input

# (bs, T, D, H): H == T, H != T (both ways), a single head, bs = 1, odd widths
TM_SHAPES = [(1, 1, 8, 1), (3, 4, 12, 4), (2, 5, 20, 4), (2, 3, 24, 6), (2, 6, 18, 2)]


def _permutation_index(t: int, d: int, h: int) -> torch.Tensor:
    """Flat source index of every flat output position, from SPEC §1's definition alone:
    output row ``hh`` is head ``hh`` of every token, in token order."""
    c = d // h
    idx = []
    for hh in range(h):
        for tt in range(t):
            for j in range(c):
                idx.append(tt * d + hh * c + j)
    return torch.tensor(idx)


@pytest.mark.triton
@pytest.mark.parametrize("shape", TM_SHAPES)
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_token_mixer_triton(device, kernel_dtype, shape, noncontiguous):
    bs, t, d, h = shape
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    check_against_reference(uk.token_mixer, (x, h), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", TM_SHAPES)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_token_mixer_is_the_permutation(device, shape, backend):
    bs, t, d, h = shape
    x = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    idx = _permutation_index(t, d, h).to(device)
    out = uk.token_mixer(x, h, backend=backend)
    assert out.shape == (bs, h, t * d // h)
    assert torch.equal(out.reshape(bs, -1), x.detach().reshape(bs, -1)[:, idx])
    if t > 1 and h > 1:
        assert not torch.equal(idx, torch.arange(t * d, device=device)), "the mixing is the identity"
    # the backward is the inverse permutation
    g = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, g)
    expect = torch.empty(bs, t * d, device=device)
    expect[:, idx] = g.reshape(bs, -1)
    assert torch.equal(dx.reshape(bs, -1), expect)


@pytest.mark.triton
def test_token_mixer_triton_square_is_an_involution(device):
    x = random_input((2, 4, 16), torch.float32, device)
    assert torch.equal(uk.token_mixer(uk.token_mixer(x, 4, backend="triton"), 4, backend="triton"), x)


@pytest.mark.triton
def test_token_mixer_triton_stride0_grad(device):
    x = random_input((3, 4, 12), torch.float32, device, requires_grad=True)
    out = uk.token_mixer(x, 3, backend="triton")
    g = torch.randn(out.shape[-1], device=device).expand_as(out)
    (dx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().requires_grad_()
    (ex,) = torch.autograd.grad(uk.token_mixer(xr, 3, backend="reference"), xr, g)
    assert torch.equal(dx, ex)


@pytest.mark.triton
def test_token_mixer_opcheck(device):
    x = random_input((2, 3, 12), torch.float32, device, requires_grad=True)
    torch.library.opcheck(token_mixer_fwd, (x, 4))
    torch.library.opcheck(token_mixer_bwd, (torch.randn(2, 4, 9, device=device), 3))


# --- Norm(TokenMixer(x) + x) ----------------------------------------------------------------

# (bs, T, D) with heads = T; the last spans several row tiles per program of the persistent backward
NORM_SHAPES = [(1, 1, 8), (3, 4, 12), (2, 6, 30), (2, 8, 64), (9, 8, 16)]


def _norm_params(d, dtype, device, norm, bias):
    w = random_input((d,), dtype, device, requires_grad=True)
    b = random_input((d,), dtype, device, requires_grad=True) if (bias and norm == "layer") else None
    return w, b


@pytest.mark.triton
@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("norm,bias", [("layer", True), ("layer", False), ("rms", False)],
                         ids=["layer-bias", "layer", "rms"])
def test_token_mixer_residual_norm_triton(device, kernel_dtype, shape, norm, bias):
    bs, t, d = shape
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    w, b = _norm_params(d, torch.float32, device, norm, bias)
    check_against_reference(token_mixer_residual_norm, (x, t, w, b, 1e-6, norm), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_token_mixer_residual_norm_triton_noncontiguous(device, kernel_dtype, norm):
    bs, t, d = 3, 4, 20
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    w, b = _norm_params(d, kernel_dtype, device, norm, True)
    check_against_reference(token_mixer_residual_norm, (x, t, w, b, 1e-5, norm), backend="triton")
    xt = random_input((t, bs, d), kernel_dtype, device).transpose(0, 1).requires_grad_()
    check_against_reference(token_mixer_residual_norm, (xt, t, w, b, 1e-5, norm), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("max_rows", [1, 2, 16])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_token_mixer_residual_norm_backward_tiles(device, kernel_dtype, monkeypatch, max_rows, norm):
    """The backward's whole-sample programs with row tiles that do not divide T (5 tokens in tiles of
    2, or 8 rows for 5) and several samples a program, so that both workspace slots are used: 7
    samples over the interpreter's 4 programs, or a GPU's programs at 1 an SM with 300 samples."""
    from unimixer_kernels.triton_kernels import token_mixer as kernels

    monkeypatch.setitem(kernels.NORM_META, "max_rows", max_rows)
    monkeypatch.setitem(kernels.TM_BWD_META, "per_sm", 1)
    bs = 7 if device == "cpu" else 300
    x = random_input((bs, 5, 20), kernel_dtype, device, requires_grad=True)
    w, b = _norm_params(20, torch.float32, device, norm, True)
    check_against_reference(token_mixer_residual_norm, (x, 5, w, b, 1e-6, norm), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_token_mixer_residual_norm_independent(device, norm):
    """Against LN/RMSNorm of ``x[perm] + x`` with the independently built permutation index."""
    bs, t, d = 2, 4, 16
    x = random_input((bs, t, d), torch.float32, device)
    w = random_input((d,), torch.float32, device)
    b = random_input((d,), torch.float32, device) if norm == "layer" else None
    idx = _permutation_index(t, d, t).to(device)
    s = (x.reshape(bs, -1)[:, idx] + x.reshape(bs, -1)).reshape(bs, t, d).double()
    if norm == "layer":
        expect = torch.nn.functional.layer_norm(s, (d,), w.double(), b.double(), 1e-6)
    else:
        expect = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    out = token_mixer_residual_norm(x, t, w, b, norm=norm, backend="triton")
    torch.testing.assert_close(out.double(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_token_mixer_residual_norm_opcheck(device):
    x = random_input((2, 4, 12), torch.float32, device, requires_grad=True)
    w = random_input((12,), torch.float32, device, requires_grad=True)
    b = random_input((12,), torch.float32, device, requires_grad=True)
    for rms, bias in ((False, b), (False, None), (True, None)):
        torch.library.opcheck(token_mixer_residual_norm_fwd, (x, 4, w, bias, 1e-6, rms))
    _, mean, rstd = token_mixer_residual_norm_fwd(x.detach(), 4, w.detach(), b.detach(), 1e-6, False)
    args = (torch.randn(2, 4, 12, device=device), x.detach(), 4, w.detach(), mean, rstd, False)
    torch.library.opcheck(token_mixer_residual_norm_bwd, args)


def test_token_mixer_residual_norm_reference_gradcheck():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda xx, ww, bb: token_mixer_residual_norm_reference(xx, 3, ww, bb), (x, w, b))


def test_token_mixer_residual_norm_bad_input():
    x = torch.randn(2, 4, 12)
    w = torch.randn(12)
    with pytest.raises(ValueError, match="heads"):
        token_mixer_residual_norm(x, 3, w)  # divides D but != T
    with pytest.raises(ValueError, match="heads"):
        token_mixer_residual_norm(torch.randn(2, 5, 12), 5, w)  # == T but does not divide D
    with pytest.raises(TypeError, match="heads"):
        token_mixer_residual_norm(x, 4.0, w)
    with pytest.raises(ValueError, match="norm"):
        token_mixer_residual_norm(x, 4, w, norm="batch")
    with pytest.raises(ValueError, match="bias"):
        token_mixer_residual_norm(x, 4, w, torch.randn(12), norm="rms")
    with pytest.raises(ValueError, match="bias"):
        token_mixer_residual_norm(x, 4, w, torch.randn(11))
    with pytest.raises(ValueError, match="weight"):
        token_mixer_residual_norm(x, 4, torch.randn(11))
    with pytest.raises(ValueError, match="x"):
        token_mixer_residual_norm(x[0], 4, w)
    with pytest.raises(TypeError, match="x"):
        token_mixer_residual_norm(x.long(), 4, w)
    with pytest.raises(ValueError, match="eps"):
        token_mixer_residual_norm(x, 4, w, eps=-1.0)


def test_token_mixer_bad_input():
    with pytest.raises(ValueError, match="heads"):
        uk.token_mixer(torch.randn(2, 4, 12), 5)
    with pytest.raises(TypeError, match="heads"):
        uk.token_mixer(torch.randn(2, 4, 12), True)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("t,d", [(16, 768), (32, 1536)], ids=["rankmixer-100m", "rankmixer-1b"])
def test_token_mixer_presets_gpu(kernel_dtype, t, d):
    """SPEC §10 RankMixer widths with a smaller batch for the fp64 reference."""
    x = random_input((32, t, d), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.token_mixer, (x, t), backend="triton")
    w = random_input((d,), kernel_dtype, "cuda", requires_grad=True)
    b = random_input((d,), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(token_mixer_residual_norm, (x, t, w, b, 1e-6, "layer"), backend="triton")


@pytest.mark.triton
def test_token_mixer_compile_fullgraph(device):
    x = random_input((2, 4, 12), torch.float32, device, requires_grad=True)
    w = random_input((12,), torch.float32, device, requires_grad=True)
    b = random_input((12,), torch.float32, device, requires_grad=True)
    tm = torch.compile(lambda a: uk.token_mixer(a, 3, backend="triton"), fullgraph=True, backend="aot_eager")
    check_against_reference(lambda a, backend: tm(a) if backend == "triton"
                            else uk.token_mixer(a, 3, backend=backend), (x,), backend="triton")
    tmn = torch.compile(lambda a, ww, bb: token_mixer_residual_norm(a, 4, ww, bb, backend="triton"),
                        fullgraph=True, backend="aot_eager")
    check_against_reference(lambda a, ww, bb, backend: tmn(a, ww, bb) if backend == "triton"
                            else token_mixer_residual_norm(a, 4, ww, bb, backend=backend),
                            (x, w, b), backend="triton")


@pytest.mark.triton
def test_token_mixer_triton_empty_batch(device):
    x = random_input((0, 4, 12), torch.float32, device, requires_grad=True)
    w = random_input((12,), torch.float32, device, requires_grad=True)
    b = random_input((12,), torch.float32, device, requires_grad=True)
    o = uk.token_mixer(x, 3, backend="triton")
    assert o.shape == (0, 3, 16)
    assert torch.autograd.grad(o.sum(), x)[0].shape == x.shape
    y = token_mixer_residual_norm(x, 4, w, b, backend="triton")
    assert y.shape == x.shape
    dx, dw, db = torch.autograd.grad(y.sum(), (x, w, b))
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(dw)) and torch.equal(db, torch.zeros_like(db))
