"""pswiglu on the ``cuda`` backend (csrc/pswiglu.cu's forward, the Triton backward) against the fp64
reference (SPEC §4, §8), forward and every gradient.

The tests marked ``on_gpu`` run the compiled kernel, so they need a GPU (``-m gpu``) and the built
extension; without the build they skip, unless ``UNIMIXER_REQUIRE_CUDA_EXT=1`` makes that a failure. The
backend's refusals are plain Python and run anywhere.
"""

from __future__ import annotations

import re

import pytest
import torch

import unimixer_kernels as uk
import unimixer_kernels.ops.pswiglu_cuda as pswiglu_cuda
from unimixer_kernels.ops.pswiglu import pswiglu_fwd
from unimixer_kernels.testing import check_against_reference, random_input

from test_pswiglu import _weights  # isort: skip


def on_gpu(test):
    """Marks a test that runs the compiled kernel: GPU only, and the built extension."""
    return pytest.mark.gpu(pytest.mark.usefixtures("cuda_extension")(test))


DTYPES = [torch.bfloat16, torch.float16]
CHUNK_SWITCH = "UNIMIXER_PSWIGLU_CUDA_CHUNK"
MMA_SWITCH = "UNIMIXER_PSWIGLU_CUDA_MMA"
# both kernels: mma.sync, and the warpgroup (wgmma) form the default sm_90a build carries
MMA = pytest.mark.parametrize("mma", ["sync", "wgmma"])

# (bs, T, D, h): bs = 1, a sample tile's tail (bs not a multiple of 64), D of each compiled width (32,
# 64, 128) and between them, h not a multiple of the 16-unit chunk (a half-empty last chunk), a single
# token, paper-small's D and h
SHAPES = [(1, 1, 8, 8), (3, 2, 24, 40), (67, 3, 40, 24), (130, 2, 64, 16), (5, 3, 96, 56), (70, 2, 128, 176),
          (2, 5, 128, 8)]


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("chunk", ["16", "32"], ids=["chunk16", "chunk32"])
@MMA
def test_pswiglu_cuda(device, dtype, shape, bias, recompute, chunk, mma, monkeypatch):
    monkeypatch.setenv(CHUNK_SWITCH, chunk)  # read by the compiled op at each call
    monkeypatch.setenv(MMA_SWITCH, mma)
    bs, t, d, h = shape
    u = random_input((bs, t, d), dtype, device, requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, dtype, device, bias)), backend="cuda",
                            kwargs={"recompute": recompute})


@on_gpu
@pytest.mark.parametrize("layout", ["strided", "token_major", "unaligned"])
@MMA
def test_pswiglu_cuda_noncontiguous(device, layout, mma, monkeypatch):
    monkeypatch.setenv(MMA_SWITCH, mma)
    bs, t, d, h = 9, 3, 48, 32
    dtype = torch.bfloat16
    if layout == "strided":  # every other element along D: copied once
        u = random_input((bs, t, d), dtype, device, requires_grad=True, noncontiguous=True)
    elif layout == "token_major":  # a [T, bs, D] buffer seen as [bs, T, D]: read in place
        u = random_input((t, bs, d), dtype, device).transpose(0, 1).requires_grad_()
    else:  # rows that start off a 16-byte boundary: copied once
        u = torch.randn(bs, t, d + 1, device=device).to(dtype)[..., 1:].detach().requires_grad_()
    assert not u.is_contiguous()
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, dtype, device, True)), backend="cuda")


@on_gpu
@MMA
def test_pswiglu_cuda_some_biases(device, mma, monkeypatch):
    monkeypatch.setenv(MMA_SWITCH, mma)
    bs, t, d, h = 5, 2, 32, 24
    dtype = torch.float16
    u = random_input((bs, t, d), dtype, device, requires_grad=True)
    wg, wu, wd, bg, bu, bd = _weights(t, d, h, dtype, device, True)
    check_against_reference(uk.pswiglu, (u, wg, wu, wd, None, bu, None), backend="cuda")
    check_against_reference(uk.pswiglu, (u, wg, wu, wd, bg, None, bd), backend="cuda",
                            kwargs={"recompute": False})


@on_gpu
@pytest.mark.parametrize("chunk", ["16", "32"], ids=["chunk16", "chunk32"])
@MMA
def test_pswiglu_cuda_matches_triton_forward(device, chunk, mma, monkeypatch):
    """The compiled forward rounds as the Triton forward does (fp32 products, the activation rounded
    before the down product): the outputs and the saved pre-activations agree to a few ulps."""
    monkeypatch.setenv(CHUNK_SWITCH, chunk)
    monkeypatch.setenv(MMA_SWITCH, mma)
    bs, t, d, h = 200, 4, 128, 176
    dtype = torch.bfloat16
    u = random_input((bs, t, d), dtype, device)
    ws = [w.detach() for w in _weights(t, d, h, dtype, device, True)]
    o_c, g_c, v_c = pswiglu_cuda.cuda_ops().pswiglu_fwd(u, *ws, True)
    o_t, g_t, v_t = pswiglu_fwd(u, *ws, True)
    for name, a, b in (("o", o_c, o_t), ("g", g_c, g_t), ("v", v_c, v_t)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


@on_gpu
def test_pswiglu_cuda_empty(device):
    dtype = torch.bfloat16
    for bs, t in ((0, 3), (4, 0)):
        u = random_input((bs, t, 16), dtype, device, requires_grad=True)
        ws = _weights(t, 16, 8, dtype, device, True)
        o = uk.pswiglu(u, *ws, backend="cuda")
        assert o.shape == (bs, t, 16)
        o.sum().backward()
        assert u.grad.shape == u.shape


@on_gpu
def test_pswiglu_cuda_under_autocast(device):
    """fp32 parameters under autocast: the op's "lower" policy casts them to bf16 for the kernel."""
    bs, t, d, h = 33, 2, 64, 40
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    ws = _weights(t, d, h, torch.float32, device, True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        o = uk.pswiglu(u, *ws, backend="cuda")
        ref = uk.pswiglu(u, *ws, backend="triton")
    assert o.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), ref.float(), rtol=2e-2, atol=2e-2)
    o.float().sum().backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in ws)


@on_gpu
@pytest.mark.parametrize(
    "case, error, match",
    [
        ("fp32", TypeError, "u: the cuda backend computes in bfloat16 or float16"),
        ("mixed", TypeError, "w_down: the cuda backend computes in u's dtype"),
        ("wide", ValueError, "D <= 128"),
        ("odd_d", ValueError, "a multiple of 8, got D=20"),
        ("odd_h", ValueError, "h a multiple of 8, got h=12"),
    ],
)
def test_pswiglu_cuda_refuses_with_the_argument_named(device, case, error, match):
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    d = {"wide": 136, "odd_d": 20}.get(case, 16)
    h = 12 if case == "odd_h" else 16
    u = random_input((4, 2, d), dtype, device)
    ws = _weights(2, d, h, dtype, device, False)
    if case == "mixed":
        ws[2] = ws[2].detach().float()
    with pytest.raises(error, match=match):
        uk.pswiglu(u, *ws, backend="cuda")
    # a per-op list hands the calls the kernel refuses to the next backend
    o = uk.pswiglu(u, *ws, backend="auto+pswiglu=cuda/triton")
    assert o.shape == u.shape


@on_gpu
@pytest.mark.parametrize("switch, value, match", [
    (CHUNK_SWITCH, "24", "UNIMIXER_PSWIGLU_CUDA_CHUNK: expected 16 or 32, got '24'"),
    (MMA_SWITCH, "tensor", "UNIMIXER_PSWIGLU_CUDA_MMA: expected sync or wgmma, got 'tensor'"),
], ids=["chunk", "mma"])
def test_pswiglu_cuda_switches_name_their_values(device, switch, value, match, monkeypatch):
    monkeypatch.setenv(switch, value)
    u = random_input((4, 2, 16), torch.bfloat16, device)
    with pytest.raises(RuntimeError, match=match):
        uk.pswiglu(u, *_weights(2, 16, 8, torch.bfloat16, device, True), backend="cuda")


@on_gpu
@pytest.mark.parametrize("chunk", ["16", "32"], ids=["chunk16", "chunk32"])
def test_pswiglu_cuda_wgmma_matches_sync(device, chunk, monkeypatch):
    """The two kernels round alike (fp32 products, the activation rounded once); only the order of the
    fp32 sums differs: the outputs agree to an ulp or so of bf16, whatever the tile's tail and D's padding."""
    monkeypatch.setenv(CHUNK_SWITCH, chunk)
    for bs, t, d, h in ((200, 4, 128, 176), (67, 3, 40, 24), (1, 2, 8, 8)):
        u = random_input((bs, t, d), torch.bfloat16, device)
        ws = [w.detach() for w in _weights(t, d, h, torch.bfloat16, device, True)]
        outs = {}
        for mma in ("sync", "wgmma"):
            monkeypatch.setenv(MMA_SWITCH, mma)
            outs[mma] = pswiglu_cuda.cuda_ops().pswiglu_fwd(u, *ws, True)
        for name, a, b in zip("ogv", outs["wgmma"], outs["sync"]):
            torch.testing.assert_close(a.float(), b.float(), rtol=1.6e-2, atol=1e-2,
                                       msg=f"{name} at {(bs, t, d, h)}")


@on_gpu
def test_pswiglu_cuda_opcheck(device):
    bs, t, d, h = 6, 2, 32, 24
    dtype = torch.bfloat16
    u = random_input((bs, t, d), dtype, device)
    ws = [w.detach().requires_grad_() for w in _weights(t, d, h, dtype, device, True)]
    for save in (False, True):
        torch.library.opcheck(pswiglu_cuda.cuda_ops().pswiglu_fwd.default, (u.requires_grad_(), *ws, save))


@pytest.mark.parametrize(
    "dtype, d, h, t, error, match",
    [
        (torch.float32, 16, 16, 2, TypeError, "u: the cuda backend computes in bfloat16 or float16"),
        (torch.bfloat16, 136, 16, 2, ValueError, "D <= 128"),
        (torch.bfloat16, 20, 16, 2, ValueError, "a multiple of 8, got D=20"),
        (torch.bfloat16, 16, 12, 2, ValueError, "h a multiple of 8, got h=12"),
        (torch.bfloat16, 16, 16, 65536, ValueError, "at most 65535 tokens"),
    ],
)
def test_pswiglu_cuda_refusal_on_any_machine(dtype, d, h, t, error, match):
    # meta tensors: the refusal reads shapes and dtypes only
    u = torch.empty(3, t, d, device="meta", dtype=dtype)
    ws = [torch.empty(t, d, h, device="meta", dtype=dtype), torch.empty(t, d, h, device="meta", dtype=dtype),
          torch.empty(t, h, d, device="meta", dtype=dtype), None, None, None]
    refusal = pswiglu_cuda.refusal(u, *ws)
    assert isinstance(refusal, error) and re.search(match, str(refusal))
    assert not pswiglu_cuda._auto_accepts(u, *ws)
    shapes = ((3, 2, 128), (2, 128, 176), (2, 128, 176), (2, 176, 128))
    ok = [torch.empty(s, device="meta", dtype=torch.bfloat16) for s in shapes]
    assert pswiglu_cuda.refusal(*ok, None, None, None) is None
    mixed = ok[:3] + [ok[3].float()]
    assert isinstance(pswiglu_cuda.refusal(*mixed, None, None, None), TypeError)
