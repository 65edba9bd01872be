"""pgelu_ffn: the Triton kernels against the fp64 reference (SPEC §1, §8), forward and every gradient."""

import math

import pytest
import torch
import triton
import triton.language as tl
from unimixer_kernels.triton_kernels.pswiglu import _gelu_cdf_pdf

from unimixer_kernels.ops.pgelu_ffn import pgelu_ffn, pgelu_ffn_bwd, pgelu_ffn_fwd
from unimixer_kernels.testing import (
    GRAD_FACTOR,
    OUTPUT_FACTOR,
    assert_close_to_reference,
    check_against_reference,
    random_input,
)

# (bs, T, D, kD): non-powers of two, bs = 1, a single token
SHAPES = [(1, 1, 8, 8), (3, 2, 24, 20), (5, 3, 16, 48)]


def _params(t, d, kd, dtype, device, bias):
    w1 = random_input((t, d, kd), dtype, device, requires_grad=True, scale=1 / math.sqrt(d))
    w2 = random_input((t, kd, d), dtype, device, requires_grad=True, scale=1 / math.sqrt(kd))
    b1 = random_input((t, kd), dtype, device, requires_grad=True) if bias else None
    b2 = random_input((t, d), dtype, device, requires_grad=True) if bias else None
    return [w1, b1, w2, b2]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pgelu_ffn_triton(device, kernel_dtype, shape, bias, recompute):
    bs, t, d, kd = shape
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    check_against_reference(pgelu_ffn, (u, *_params(t, d, kd, kernel_dtype, device, bias)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["strided", "token_major"])
def test_pgelu_ffn_triton_noncontiguous(device, kernel_dtype, layout):
    bs, t, d, kd = 4, 3, 24, 40
    if layout == "strided":
        u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    else:
        u = random_input((t, bs, d), kernel_dtype, device).transpose(0, 1).requires_grad_()
    check_against_reference(pgelu_ffn, (u, *_params(t, d, kd, kernel_dtype, device, True)), backend="triton")


@pytest.mark.triton
def test_pgelu_ffn_triton_one_bias_and_stride0_grad(device):
    bs, t, d, kd = 3, 2, 16, 24
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    w1, b1, w2, b2 = _params(t, d, kd, torch.float32, device, True)
    check_against_reference(pgelu_ffn, (u, w1, None, w2, b2), backend="triton")
    check_against_reference(pgelu_ffn, (u, w1, b1, w2, None), backend="triton", kwargs={"recompute": False})
    o = pgelu_ffn(u, w1, b1, w2, b2, backend="triton")
    g = torch.randn(d, device=device).expand_as(o)
    got = torch.autograd.grad(o, (u, w1, b1, w2, b2), g)
    ref_in = [x.detach().double().requires_grad_() for x in (u, w1, b1, w2, b2)]
    expect = torch.autograd.grad(pgelu_ffn(*ref_in, backend="reference"), ref_in, g.double())
    for a, e in zip(got, expect):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("save", [False, True])
def test_pgelu_ffn_opcheck(device, save):
    bs, t, d, kd = 2, 2, 16, 16
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    w1, b1, w2, b2 = _params(t, d, kd, torch.float32, device, True)
    torch.library.opcheck(pgelu_ffn_fwd, (u, w1, b1, w2, b2, save))
    torch.library.opcheck(pgelu_ffn_fwd, (u, w1, None, w2, None, save))
    g = torch.randn(t, bs, kd, device=device) if save else None
    args = (torch.randn(bs, t, d, device=device), u.detach(), w1.detach(), b1.detach(), w2.detach(), None, g,
            None, None)
    torch.library.opcheck(pgelu_ffn_bwd, args)


@pytest.mark.triton
@pytest.mark.parametrize("save", [False, True])
def test_pgelu_ffn_opcheck_lowered_weights(device, monkeypatch, save):
    """fp16 activations beside fp32 weights on the wide path: the forward's weight copies (``save``)
    are outputs of their own, and the backward's weight gradients fp32."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
    bs, t, d, kd = 2, 2, 16, 16
    u = random_input((bs, t, d), torch.float16, device, requires_grad=True)
    w1, b1, w2, b2 = _params(t, d, kd, torch.float32, device, True)
    torch.library.opcheck(pgelu_ffn_fwd, (u, w1, b1, w2, b2, save))
    _, g, w1c, w2c = pgelu_ffn_fwd(u.detach(), w1.detach(), b1.detach(), w2.detach(), b2.detach(), save)
    if save:
        assert torch.equal(w1c, w1.detach().half()) and torch.equal(w2c, w2.detach().half())
    else:
        assert w1c.numel() == 0 and w2c.numel() == 0
    copies = (w1c, w2c) if save else (None, None)
    do = random_input((bs, t, d), torch.float16, device)
    args = (do, u.detach(), w1.detach(), b1.detach(), w2.detach(), b2.detach(), g if save else None, *copies)
    torch.library.opcheck(pgelu_ffn_bwd, args)
    grads = pgelu_ffn_bwd(*args)
    assert [x.dtype for x in grads] == [torch.float16] + [torch.float32] * 4


def test_pgelu_ffn_bad_input():
    u = torch.randn(2, 3, 8)
    w1, w2 = torch.randn(3, 8, 16), torch.randn(3, 16, 8)
    with pytest.raises(ValueError, match="w2"):
        pgelu_ffn(u, w1, None, torch.randn(3, 8, 16))
    with pytest.raises(ValueError, match="b1"):
        pgelu_ffn(u, w1, torch.randn(3, 8), w2)
    with pytest.raises(ValueError, match="b2"):
        pgelu_ffn(u, w1, None, w2, torch.randn(2, 8))
    with pytest.raises(TypeError, match="recompute"):
        pgelu_ffn(u, w1, None, w2, recompute=1)
    with pytest.raises(ValueError, match="u"):
        pgelu_ffn(u[0], w1, None, w2)
    with pytest.raises(TypeError, match="w1"):
        pgelu_ffn(u, w1.int(), None, w2)


@pytest.mark.gpu
@pytest.mark.triton
def test_pgelu_ffn_rankmixer_100m_gpu(kernel_dtype):
    """SPEC §10 rankmixer-100m widths (T=16, D=768, k=4), small batch for the fp64 reference."""
    bs, t, d, kd = 32, 16, 768, 3072
    u = random_input((bs, t, d), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(pgelu_ffn, (u, *_params(t, d, kd, kernel_dtype, "cuda", True)), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pgelu_ffn_triton_tiled_path(device, kernel_dtype, monkeypatch, recompute):
    """The tiled per-token GEMMs that wide tokens (D > FUSED_MAX_D) take."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
    bs, t, d, kd = 5, 2, 24, 40
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    check_against_reference(pgelu_ffn, (u, *_params(t, d, kd, kernel_dtype, device, True)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.triton
@pytest.mark.parametrize("path", ["fused", "wide-triton", "wide-cublas"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pgelu_ffn_triton_rounds_fp32_weights_to_16bit_activations(device, monkeypatch, path, recompute):
    """fp16 activations beside fp32 weights and biases (no autocast): the products run in fp16 on the
    weights rounded to it, as autocast would round them; the output is fp16, every parameter's gradient
    fp32. SPEC §8's rule against fp64 on the rounded weights, beside the reference on fp16 weights."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    if path != "fused":
        monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
        monkeypatch.setenv("UNIMIXER_FFN_GEMM", path.removeprefix("wide-"))
    bs, t, d, kd = 6, 3, 16, 40
    u = random_input((bs, t, d), torch.float16, device, requires_grad=True, noncontiguous=True)
    params = _params(t, d, kd, torch.float32, device, True)
    o = pgelu_ffn(u, *params, recompute=recompute, backend="triton")
    assert o.dtype == torch.float16
    gout = random_input(o.shape, torch.float16, device)
    got = (o, *torch.autograd.grad(o, (u, *params), gout))
    assert [g.dtype for g in got[2:]] == [torch.float32] * 4
    rounded = [p.detach().half().requires_grad_() for p in params]
    base_out = pgelu_ffn(u, *rounded, backend="reference")
    base = (base_out, *torch.autograd.grad(base_out, (u, *rounded), gout))
    ref_in = [x.detach().double().requires_grad_() for x in (u, *rounded)]
    ref_out = pgelu_ffn(*ref_in, backend="reference")
    ref = (ref_out, *torch.autograd.grad(ref_out, ref_in, gout.double()))
    for i, (g, r, b) in enumerate(zip(got, ref, base)):
        factor = OUTPUT_FACTOR if i == 0 else GRAD_FACTOR
        assert_close_to_reference(g, r, b, factor=factor, name=f"result {i}", test_dtype=torch.float16)


@pytest.mark.triton
def test_pgelu_ffn_compile_fullgraph_and_empty_batch(device):
    bs, t, d, kd = 3, 2, 16, 24
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    ps = _params(t, d, kd, torch.float32, device, True)
    fn = torch.compile(lambda *a: pgelu_ffn(*a, backend="triton"), fullgraph=True, backend="aot_eager")
    check_against_reference(lambda *a, backend: fn(*a) if backend == "triton"
                            else pgelu_ffn(*a, backend=backend), (u, *ps), backend="triton")
    empty = random_input((0, t, d), torch.float32, device, requires_grad=True)
    o = pgelu_ffn(empty, *ps, backend="triton")
    assert o.shape == (0, t, d)
    grads = torch.autograd.grad(o.sum(), [empty, *ps])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[1:])



@triton.jit
def _cdf_pdf_kernel(G, CDF, PDF, N, POLY: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(G + offs, mask=offs < N, other=0.0)
    cdf, pdf = _gelu_cdf_pdf(g, POLY)
    tl.store(CDF + offs, cdf, mask=offs < N)
    tl.store(PDF + offs, pdf, mask=offs < N)


@pytest.mark.triton
@pytest.mark.parametrize("poly", [False, True], ids=["erf", "poly"])
def test_gelu_cdf_pdf_accuracy(device, poly):
    # the GELU's normal CDF and density as the kernels form them: libdevice's erf (fp32 outputs), or
    # the degree-5 tail polynomial for 16-bit outputs, whose absolute error is bounded by 7.5e-8
    # (Abramowitz and Stegun 26.2.17) before its fp32 evaluation adds a few units in the last place of
    # 1 (1.2e-7 each; 2.2e-7 in all in the interpreter; the GPU's approximate exponential and division
    # add up to 2^-22 relative); both against fp64, over the range where GELU is neither 0 nor g. A
    # wrong coefficient would miss by 1e-5 or more; a 16-bit output rounds at 2^-9 or finer
    g = torch.cat([torch.linspace(-12, 12, 4001, device=device), 3 * torch.randn(999, device=device)])
    cdf, pdf = torch.full_like(g, float("nan")), torch.full_like(g, float("nan"))
    _cdf_pdf_kernel[(triton.cdiv(g.numel(), 1024),)](g, cdf, pdf, g.numel(), POLY=poly, BLOCK=1024)
    gd = g.double()
    want_cdf = 0.5 * (1 + torch.erf(gd / math.sqrt(2)))
    want_pdf = torch.exp(-0.5 * gd * gd) / math.sqrt(2 * math.pi)
    assert (cdf.double() - want_cdf).abs().max().item() <= (6e-7 if poly else 2 ** -21)
    assert (pdf.double() - want_pdf).abs().max().item() <= 2 ** -22
