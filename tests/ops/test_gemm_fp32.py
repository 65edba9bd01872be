"""The fp32 GEMM on bf16 tensor cores (``triton_kernels/gemm_fp32.py``): the exact three-part split,
and ``A @ B`` against fp64 by SPEC §8's output rule (2x torch-fp32's error, plus fp32's rtol), with
odd shapes, transposed and strided operands, split K, and bad input."""

import pytest
import torch
from unimixer_kernels.triton_kernels import gemm_fp32 as gemm
from unimixer_kernels.triton_kernels import sinkhorn as sk_kernels
from unimixer_kernels.triton_kernels._launch import LITE_GEMM_SWITCH
from unimixer_kernels.triton_kernels.gemm_fp32 import GemmConfig, mm_fp32, mm_parts, split_parts

from unimixer_kernels.testing import assert_close_to_reference

# small tiles, so that the interpreter's shapes span several tiles and K-steps, and clip the last
SMALL = GemmConfig(16, 32, 16, 4, 2, 1)


def _operand(shape, layout, device):
    """A fp32 operand of ``shape``: row-major, a transposed view, or every other column of a wider one."""
    if layout == "t":
        return torch.randn(shape[::-1], device=device).t()
    if layout == "strided":
        return torch.randn(shape[0], 2 * shape[1], device=device)[:, ::2]
    return torch.randn(shape, device=device)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(37, 50), (1, 3), (64, 64)])
@pytest.mark.parametrize("layout", ["row", "t", "strided"])
def test_split_parts_are_exact(device, shape, layout):
    # three bf16 parts whose fp32 sum is the input, bit for bit, laid out as the input is (row or
    # column major), each within bf16's precision (2^-7: the interpreter truncates) of the one before
    x = _operand(shape, layout, device) * 1e3
    parts, = split_parts(x)
    assert parts.shape == (3, *shape) and parts.dtype == torch.bfloat16
    p = parts.float()
    assert torch.equal(p[0] + (p[1] + p[2]), x)
    assert (p[1].abs() <= x.abs() * 2.0 ** -7).all() and (p[2].abs() <= x.abs() * 2.0 ** -14).all()
    if layout == "t":
        assert parts[0].t().is_contiguous()


@pytest.mark.triton
@pytest.mark.parametrize("m,k,n", [(37, 50, 45), (1, 7, 1), (64, 96, 32), (33, 200, 17)])
@pytest.mark.parametrize("layouts", [("row", "row"), ("t", "t"), ("strided", "t")])
@pytest.mark.parametrize("split", [1, 3])
def test_mm_fp32_against_fp64(device, m, k, n, layouts, split):
    a, b = _operand((m, k), layouts[0], device), _operand((k, n), layouts[1], device)
    out = mm_fp32(a, b, SMALL._replace(split=split))
    assert out.dtype == torch.float32 and out.is_contiguous()
    with torch.autocast(device, enabled=False):
        pt = a @ b
    assert_close_to_reference(out, a.double() @ b.double(), pt)


@pytest.mark.triton
def test_mm_parts_several_pairs(device):
    # two products whose K splits are summed in one launch, beside one without a split: each lands in
    # its own output, as each would alone
    a, b, c = (torch.randn(s, device=device) for s in ((37, 90), (90, 20), (20, 45)))
    pa, pb, pbt, pat, pc = split_parts(a, b, b.t(), a.t(), c)
    pairs = [(pa, pb), (pbt, pat), (pb, pc)]
    outs = mm_parts(*pairs, config=SMALL._replace(split=3))
    for (pa, pb), out in zip(pairs, outs):
        assert torch.equal(out, mm_parts((pa, pb), config=SMALL._replace(split=3))[0])
    for out, (x, y) in zip(outs, ((a, b), (b.t(), a.t()), (b, c))):
        assert_close_to_reference(out, x.double() @ y.double(), x @ y)


@pytest.mark.triton
def test_mm_fp32_identity_is_exact(device):
    # A @ I keeps every part's product (x * 1 is exact): a dropped or misplaced part, or a lost
    # step of K, changes the result; I @ A likewise through the other operand
    a = torch.randn(37, 50, device=device) * 1e3
    assert torch.equal(mm_fp32(a, torch.eye(50, device=device), SMALL._replace(split=2)), a)
    assert torch.equal(mm_fp32(torch.eye(37, device=device), a, SMALL), a)


@pytest.mark.triton
def test_mm_fp32_plan(device):
    # the default plan on its own: the interpreter runs one program per SM-equivalent
    a, b = torch.randn(70, 300, device=device), torch.randn(300, 40, device=device)
    assert_close_to_reference(mm_fp32(a, b), a.double() @ b.double(), a @ b)


def test_plan_splits_narrow_outputs(monkeypatch):
    monkeypatch.setattr(gemm, "sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    # 4096 x 4096: 1024 tiles of 128 x 128, no split
    assert gemm.plan(4096, 4096, 256, cuda) == GemmConfig(*gemm._WIDE, 1)
    # dA at rank 256: 128 tiles of 64 x 128, one wave: no split
    assert gemm.plan(4096, 256, 4096, cuda) == GemmConfig(*gemm._NARROW, 1)
    # the formation at n = 1024: 128 tiles of 64 x 128 (64 of 128 x 128 would leave half the SMs idle)
    assert gemm.plan(1024, 1024, 128, cuda) == GemmConfig(*gemm._NARROW, 1)
    # dA at rank 128, n = 1024: 16 such tiles, so 32 of 64 x 64, K split in 4 (each split keeps 4
    # steps of 64); dB likewise
    assert gemm.plan(1024, 128, 1024, cuda) == GemmConfig(*gemm._SMALL, 4)
    assert gemm.plan(128, 1024, 1024, cuda) == GemmConfig(*gemm._SMALL, 4)
    # short K is never split below _MIN_STEPS_PER_SPLIT steps
    assert gemm.plan(256, 256, 128, cuda).split == 1


@pytest.mark.triton
@pytest.mark.triton
def test_split_parts_of_several_tensors(device, monkeypatch):
    # two tensors a launch (the second launch's second slot unused), an empty one skipped, each tensor's
    # parts those of splitting it alone
    launches = []
    kernel = gemm.split_parts_kernel
    monkeypatch.setattr(gemm, "split_parts_kernel", type("K", (), {
        "__getitem__": lambda self, grid: launches.append(grid) or kernel[grid]})())
    xs = [torch.randn(5, 7, device=device), torch.randn(0, 3, device=device),
          torch.randn(300, 9, device=device).t(), torch.randn(2, 2, device=device)]
    parts = split_parts(*xs)
    assert len(launches) == 2
    for x, p in zip(xs, parts):
        assert p.shape == (3, *x.shape)
        if x.numel():
            assert torch.equal(p, split_parts(x)[0]) and p.stride()[1:] == x.stride()


def test_mm_fp32_empty(device):
    assert mm_fp32(torch.randn(0, 5, device=device), torch.randn(5, 3, device=device)).shape == (0, 3)
    out = mm_fp32(torch.randn(4, 0, device=device), torch.randn(0, 3, device=device))
    assert torch.equal(out, torch.zeros(4, 3, device=device))


def test_mm_fp32_bad_input():
    a = torch.randn(4, 5)
    with pytest.raises(TypeError, match="fp32 operands"):
        mm_fp32(a.double(), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"a \[M, K\] and b \[K, N\]"):
        mm_fp32(a, torch.randn(4, 3))
    with pytest.raises(TypeError, match=r"xs\[1\]: expected a 2-d fp32"):
        split_parts(a, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"pairs\[1\]: expected split_parts of a"):
        mm_parts(tuple(split_parts(a, a.t())), tuple(split_parts(a, torch.randn(4, 3))))


def test_lite_gemm_switch_rejects_bad_value(monkeypatch):
    monkeypatch.setenv(LITE_GEMM_SWITCH, "tf32")
    with pytest.raises(ValueError, match=f"{LITE_GEMM_SWITCH}: expected 'split' or 'cublas'"):
        sk_kernels.Fp32Products()


@pytest.mark.gpu
@pytest.mark.parametrize("n,r", [(4096, 256), (1024, 128)])
def test_mm_fp32_lite_shapes_gpu(n, r):
    # the Lite global weight's three GEMMs at paper-100m and paper-small, by the default plan: within
    # the output rule against cuBLAS's IEEE fp32, also along K = n (the tensor cores' own accumulation
    # over K = 4096 had 5.7x cuBLAS's error before each K-step's chunk was added in fp32)
    torch.backends.cuda.matmul.allow_tf32 = False
    a_g = torch.randn(n, r, device="cuda") * r ** -0.5
    b_g = torch.randn(r, n, device="cuda")
    dm = torch.randn(n, n, device="cuda")
    for a, b in ((a_g, b_g), (dm, b_g.t()), (a_g.t(), dm)):
        assert_close_to_reference(mm_fp32(a, b), a.double() @ b.double(), a @ b)
