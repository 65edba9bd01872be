"""unimixing and unimixing_rmsnorm: the Triton backend against the fp64 reference (SPEC §8).

Shapes cover odd N, bs=1, several row/column/K tiles and weight-gradient splits in the
interpreter, block sizes that do not divide D (blocks straddle tokens), non-power-of-two B, and
non-contiguous inputs. Weights are in the activation dtype: with half-precision activations the
global product runs in that dtype (see ``ops/unimixing.py``), which the mixed-dtype test covers
with an explicit relative bound.
"""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.unimixing import (
    unimixing_bwd,
    unimixing_fwd,
    unimixing_residual_bwd,
    unimixing_residual_fwd,
    unimixing_rmsnorm_bwd,
    unimixing_rmsnorm_fwd,
)
from unimixer_kernels.reference.mixing import unimixing_operator
from unimixer_kernels.testing import check_against_reference, random_input

# (bs, T, D, B): N = T*D/B
SHAPES = [
    (3, 4, 8, 4),  # B divides D, N=8
    (1, 3, 10, 6),  # bs=1, B does not divide D (blocks straddle tokens), N=5 odd, B not a power of 2
    (5, 4, 24, 4),  # N=24: two row tiles, two K chunks, two sample tiles, two weight-gradient splits
    (2, 2, 6, 4),  # D=6, B=4: straddling blocks, N=3
    (4, 3, 20, 3),  # B=3, N=20
    (3, 4, 36, 48),  # large B (tensor-core local path), straddling blocks, N=3
    (5, 4, 80, 16),  # large B, N=20: two row tiles
    (2, 5, 56, 4),  # N=70: five K chunks, so each of the fp32 forward's four accumulators takes one
]
NORM_SHAPES = [
    (3, 4, 8, 4),  # several tokens per tile
    (1, 3, 10, 6),  # straddling blocks: tiles of lcm(B, D)/B = 5 blocks
    (5, 4, 24, 4),  # 12-block tiles, two per sample
    (2, 4, 12, 8),  # B > D/2: a block spans up to two tokens
    (3, 2, 48, 24),  # large B with the norm epilogue (local product by FMAs)
]


def _weights(n: int, b: int, dtype, device, requires_grad=True):
    # scaled so that y has the size of x, as with doubly-stochastic weights
    wl = random_input((n, b, b), dtype, device, requires_grad=requires_grad, scale=b ** -0.5)
    wg = random_input((n, n), dtype, device, requires_grad=requires_grad, scale=n ** -0.5)
    return wl, wg


def _rmsnorm_inputs(shape, dtype, device, noncontiguous=False):
    """Fresh ``(z, w_local, w_global, norm_weight)`` for ``unimixing_rmsnorm`` at ``(bs, T, D, B)``."""
    bs, t, d, b = shape
    z = random_input((bs, t, d), dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    wl, wg = _weights(t * d // b, b, dtype, device)
    return z, wl, wg, random_input((d,), dtype, device, requires_grad=True)


def _check_rmsnorm(shape, dtype, device, noncontiguous=False):
    """``unimixing_rmsnorm`` on the Triton backend against the reference, fresh inputs."""
    inputs = _rmsnorm_inputs(shape, dtype, device, noncontiguous)
    check_against_reference(uk.unimixing_rmsnorm, inputs, backend="triton")


def _check_mixed_dtype(got, x, wl, wg, gy, dtype):
    """``got`` (the output and the gradients of ``x, wl, wg``) against the fp64 reference on the
    values the kernels computed from, within ``8 eps(dtype)`` of each tensor's largest magnitude: the
    bound for 16-bit activations beside fp32 weights, where the global product rounds ``w_global``
    to the activations' dtype (documented in ``ops/unimixing.py``), not SPEC §8's rule."""
    xr, wlr, wgr = (t.detach().double().requires_grad_() for t in (x, wl, wg))
    yr = uk.unimixing(xr, wlr, wgr, backend="reference")
    want = (yr, *torch.autograd.grad(yr, (xr, wlr, wgr), gy.double()))
    tol = 8 * torch.finfo(dtype).eps
    for k, (a, e) in enumerate(zip(got, want)):
        err = (a.double() - e).abs().max().item()
        assert err <= tol * e.abs().max().item(), f"output/grad {k}: max error {err:.3e}"


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("noncontiguous", [False, True], ids=["contig", "strided"])
def test_unimixing_triton(device, kernel_dtype, shape, noncontiguous):
    bs, t, d, b = shape
    n = t * d // b
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    wl, wg = _weights(n, b, kernel_dtype, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("epilogue", ["fused", "composed"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_unimixing_rmsnorm_triton(device, kernel_dtype, shape, epilogue, monkeypatch):
    monkeypatch.setenv("UNIMIXER_UNIMIXING_NORM", epilogue)
    _check_rmsnorm(shape, kernel_dtype, device, noncontiguous=shape[0] % 2 == 1)


@pytest.mark.triton
@pytest.mark.parametrize("forward", ["gemm", "register"])
@pytest.mark.parametrize("shape", [(5, 4, 24, 4), (1, 3, 10, 6), (3, 2, 48, 24)],
                         ids=lambda s: "x".join(map(str, s)))
def test_unimixing_rmsnorm_residual_forward_paths(device, kernel_dtype, monkeypatch, shape, forward):
    # the composed path's mixing adds z in each forward's epilogue: the c-major GEMM (B < 16), the
    # natural-layout global GEMM (B >= 16) and the in-register kernel
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", forward)
    _check_rmsnorm(shape, kernel_dtype, device, noncontiguous=shape[0] % 2 == 1)


@pytest.mark.triton
@pytest.mark.parametrize("backward", ["auto", "gemm"])
def test_unimixing_rmsnorm_frees_norm_buffers_before_mixing_backward(device, monkeypatch, backward):
    # composed: two autograd nodes, so that s (the norm's saved input) and du (its incoming gradient)
    # are gone when the mixing backward runs, and dz is the norm's ds buffer
    import weakref

    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", backward)
    refs, seen = {}, []
    fwd, bwd = kernels.unimixing_fwd, kernels.unimixing_residual_bwd_

    def fwd_spy(*args, **kwargs):
        out = fwd(*args, **kwargs)
        refs["s"] = weakref.ref(out[0])
        return out

    def bwd_spy(dy, *args):
        seen.append((refs["s"](), refs["du"](), dy.data_ptr()))
        return bwd(dy, *args)

    monkeypatch.setattr(kernels, "unimixing_fwd", fwd_spy)
    monkeypatch.setattr(kernels, "unimixing_residual_bwd_", bwd_spy)
    z, wl, wg, nw = _rmsnorm_inputs((5, 4, 24, 4), torch.float32, device)
    u = uk.unimixing_rmsnorm(z, wl, wg, nw, backend="triton")

    def du_hook(g):
        refs["du"] = weakref.ref(g)

    u.register_hook(du_hook)
    (u * u).sum().backward()
    (s, du, dy_ptr), = seen
    assert s is None and du is None
    assert z.grad.data_ptr() == dy_ptr  # dz written over ds


@pytest.mark.triton
@pytest.mark.parametrize("name,expected", [
    ("UNIMIXER_UNIMIXING_NORM", "expected 'fused' or 'composed'"),
    ("UNIMIXER_UNIMIXING_FORWARD", "expected 'auto', 'gemm' or 'register'"),
])
def test_unimixing_forward_switches_checked(device, monkeypatch, name, expected):
    # a bad value names the switch and its values, whichever forward path reads it
    monkeypatch.setenv(name, "nonsense")
    z = random_input((2, 4, 8), torch.float32, device)
    wl, wg = _weights(8, 4, torch.float32, device)
    with pytest.raises(ValueError, match=f"{name}: {expected}"):
        if name == "UNIMIXER_UNIMIXING_NORM":
            uk.unimixing_rmsnorm(z, wl, wg, torch.ones(8, device=device), backend="triton")
        else:
            uk.unimixing(z, wl, wg, backend="triton")


@pytest.mark.triton
def test_unimixing_rmsnorm_fp32_norm_weight(device):
    inputs = _rmsnorm_inputs((3, 4, 8, 4), torch.float32, device)
    check_against_reference(uk.unimixing_rmsnorm, inputs, backend="triton", kwargs={"eps": 1e-3})


@pytest.mark.triton
def test_unimixing_rmsnorm_unfused_fallback(device, monkeypatch):
    # with the fused epilogue chosen, when lcm(B, D)/B blocks (whole tokens) do not fit one tile, the
    # op composes mixing + RMSNorm; such shapes have N >= 257, too slow for the interpreter, so
    # force the path on a small one
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_NORM", "fused")

    assert kernels.fused_norm_rows(2, 257, torch.device(device)) is None
    assert kernels.fused_norm_rows(4, 128, torch.device(device)) is not None
    monkeypatch.setattr(kernels, "fused_norm_rows", lambda block, dim, dev: None)
    z = random_input((3, 2, 6), torch.float16, device, requires_grad=True)
    wl, wg = _weights(3, 4, torch.float16, device)
    nw = random_input((6,), torch.float16, device, requires_grad=True)
    check_against_reference(uk.unimixing_rmsnorm, (z, wl, wg, nw), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("min_bp", [4, 1 << 30], ids=["local-dot", "local-fma"])
def test_unimixing_local_paths(device, monkeypatch, min_bp):
    # both ways of building the local products, on shapes that would normally take the other one
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setattr(kernels, "LOCAL_DOT_MIN_BP", min_bp)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "register")
    shape = (3, 2, 10, 4) if min_bp == 4 else (2, 2, 20, 20)
    bs, t, d, b = shape
    x = random_input((bs, t, d), torch.float16, device, requires_grad=True)
    wl, wg = _weights(t * d // b, b, torch.float16, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[3] < 16], ids=lambda s: "x".join(map(str, s)))
def test_unimixing_gemm_backward(device, kernel_dtype, monkeypatch, shape):
    # UNIMIXER_UNIMIXING_BACKWARD=gemm at small B: G and H through memory, the local FMA kernel
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    bs, t, d, b = shape
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=bs % 2 == 1)
    wl, wg = _weights(t * d // b, b, kernel_dtype, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(5, 4, 24, 4), (1, 3, 10, 6)], ids=lambda s: "x".join(map(str, s)))
def test_unimixing_rmsnorm_gemm_backward(device, monkeypatch, shape):
    # the residual path of the local FMA kernel; several blocks per program and a ragged last one
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    monkeypatch.setattr(kernels, "LOCAL_FMA_LANES", 2)
    _check_rmsnorm(shape, torch.float32, device)


@pytest.mark.triton
def test_unimixing_rmsnorm_gemm_backward_reuses_buffers(device, monkeypatch):
    # at B < 16 the memory-path backward writes H over G and dZ over the norm's dS (its own buffer):
    # two [bs, T, D] buffers fewer at the block's peak; the user's dY of the plain op is never written
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    monkeypatch.setattr(kernels, "LOCAL_FMA_LANES", 2)
    seen = []
    local = kernels._local_products

    def spy(xc, wl, h, g=None, dyc=None, dx=None, residual=False):
        seen.append((h, g, dyc, dx))
        return local(xc, wl, h, g, dyc, dx, residual)

    monkeypatch.setattr(kernels, "_local_products", spy)
    z, wl, wg, nw = _rmsnorm_inputs((5, 4, 24, 4), torch.float32, device)
    u = uk.unimixing_rmsnorm(z, wl, wg, nw, backend="triton")
    dz = torch.autograd.grad(u, z, torch.randn_like(u))[0]
    (h, g, dyc, dx), = seen
    assert h is g and dx is dyc and dz.data_ptr() == dx.data_ptr()
    seen.clear()
    x = z.detach().requires_grad_()
    y = uk.unimixing(x, wl, wg, backend="triton")
    dy = torch.randn_like(y)
    keep = dy.clone()
    torch.autograd.grad(y, x, dy)
    (h, g, dyc, dx), = seen
    assert h is g and dx is not dyc and torch.equal(dy, keep)
    _check_rmsnorm((5, 4, 24, 4), torch.float32, device)


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backward", ["auto", "gemm"])
def test_unimixing_gemm_forward(device, kernel_dtype, monkeypatch, shape, backward):
    # UNIMIXER_UNIMIXING_FORWARD=gemm: H = X W_B written by the local kernels, then the GEMM W_G H;
    # beside either backward
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", backward)
    bs, t, d, b = shape
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=bs % 2 == 1)
    wl, wg = _weights(t * d // b, b, kernel_dtype, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[3] >= 16], ids=lambda s: "x".join(map(str, s)))
def test_unimixing_register_forward_large_block(device, monkeypatch, shape):
    # at B >= 16 'auto' writes H through memory for 16-bit activations; 'register' keeps the one
    # kernel that builds H with batched dots in registers
    from unimixer_kernels.triton_kernels import unimixing as kernels

    bs, t, d, b = shape
    n = t * d // b
    assert kernels.gemm_forward(b, n, True) and not kernels.gemm_forward(b, n, False)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "register")
    assert not kernels.gemm_forward(b, n, True)
    x = random_input((bs, t, d), torch.float16, device, requires_grad=True)
    wl, wg = _weights(n, b, torch.float16, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
def test_unimixing_memory_path_auto_rule():
    # 'auto': the memory path for 16-bit activations at B >= 16 or N >= MEMORY_PATH_MIN_N
    from unimixer_kernels.triton_kernels import unimixing as kernels

    big = kernels.MEMORY_PATH_MIN_N
    for gemm in (kernels.gemm_forward, kernels.gemm_backward):
        assert not gemm(4, big // 2, True) and gemm(4, big, True) and gemm(48, 256, True)
        assert not gemm(4, big, False)
    assert kernels.gemm_backward(48, 256, False) and not kernels.gemm_forward(48, 256, False)


@pytest.mark.triton
@pytest.mark.parametrize("epilogue", ["fused", "composed"])
def test_unimixing_rmsnorm_gemm_forward(device, monkeypatch, epilogue):
    # the composed op mixes through memory; the fused epilogue keeps its in-register kernel
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_NORM", epilogue)
    monkeypatch.setattr(kernels, "LOCAL_FMA_LANES", 2)
    _check_rmsnorm((5, 4, 24, 4), torch.float16, device)


@pytest.mark.triton
@pytest.mark.parametrize("tile", ["1x1", "2x4", "8x16"])
def test_unimixing_local_fma_tiles(device, monkeypatch, tile):
    # UNIMIXER_UNIMIXING_LOCAL_TILE: other warps and samples per step than 'auto' (ragged sample
    # steps, several programs along the blocks at two lanes per warp), forward and backward
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_LOCAL_TILE", tile)
    monkeypatch.setattr(kernels, "LOCAL_FMA_LANES", 2)
    x = random_input((5, 3, 20), torch.float32, device, requires_grad=True, noncontiguous=True)
    wl, wg = _weights(20, 3, torch.float32, device)
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("bad", ["nonsense", "3x2", "4x32", "4x"])
def test_unimixing_local_tile_switch_checked(device, monkeypatch, bad):
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_LOCAL_TILE", bad)
    x = random_input((2, 4, 8), torch.float32, device)
    wl, wg = _weights(8, 4, torch.float32, device)
    with pytest.raises(ValueError, match="UNIMIXER_UNIMIXING_LOCAL_TILE: expected 'auto' or 'WARPSxSAMPLES'"):
        uk.unimixing(x, wl, wg, backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("bs,n,b", [(1, 5, 3), (5, 37, 4), (3, 20, 6), (2, 300, 8)])
def test_unimixing_c_major_copy(device, bs, n, b):
    # the memory path's dY^T: [bs, N*B] -> [bs, B, N], ragged sample and block tiles, B not a power of 2
    from unimixer_kernels.triton_kernels import unimixing as kernels

    x = torch.randn(bs, n * b, device=device).to(torch.float16)
    got = kernels._c_major_copy(x, n, b)
    assert torch.equal(got, x.view(bs, n, b).transpose(1, 2))


@pytest.mark.triton
@pytest.mark.parametrize("n", [1, 5, 37, 100])
@pytest.mark.parametrize("transposed", [False, True], ids=["contig", "strided"])
def test_unimixing_transposed_operand(device, n, transposed):
    # the forward GEMM's W_G^T in the activation dtype: ragged tiles, strided input, exact
    from unimixer_kernels.triton_kernels import unimixing as kernels

    w = torch.randn(n, n, device=device)
    w = w.t() if transposed else w
    got = kernels._transposed_for_dot(w, torch.float16)
    assert got.is_contiguous() and torch.equal(got, w.t().to(torch.float16))


@pytest.mark.triton
def test_unimixing_saved_global_t_read_by_the_register_backward(device, monkeypatch):
    # the forward saved W_G^T for a memory-path backward, but the switch changed before the
    # backward ran: the in-register backward reads the saved operand transposed back
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    x = random_input((3, 4, 24), torch.float32, device, requires_grad=True)
    wl, wg = _weights(24, 4, torch.float32, device)
    with torch.autocast(torch.device(device).type, dtype=torch.float16):
        y = uk.unimixing(x, wl, wg, backend="triton")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "auto")  # in registers at this small N
    gy = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, wl, wg), gy))
    _check_mixed_dtype(got, x.detach().to(torch.float16), wl, wg, gy, torch.float16)


@pytest.mark.triton
@pytest.mark.parametrize("tma", ["0", "1"])
@pytest.mark.parametrize("op", ["unimixing", "unimixing_rmsnorm"])
@pytest.mark.parametrize("shape", [(5, 4, 24, 4), (7, 2, 64, 8)], ids=["n24", "n16b8"])
def test_unimixing_gemm_forward_tma(device, monkeypatch, tma, op, shape):
    # the memory-path forward GEMM through tensor descriptors ('1': descriptors, every program
    # walking several output tiles; M = bs*B and N clip the last tiles, read as zeros) or pointers
    # ('0'), with and without the residual epilogue (unimixing_rmsnorm's composed path); the
    # switch's choice reaches the launch
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", tma)
    seen = []
    choose = kernels.gemm_tma
    monkeypatch.setattr(kernels, "gemm_tma", lambda *a: seen.append(choose(*a)) or seen[-1])
    if op == "unimixing":
        bs, t, d, b = shape
        x = random_input((bs, t, d), torch.float16, device, requires_grad=True, noncontiguous=True)
        wl, wg = _weights(t * d // b, b, torch.float16, device)
        check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")
    else:
        _check_rmsnorm(shape, torch.float16, device)
    assert seen and all(used == (tma == "1") for used in seen)


@pytest.mark.triton
def test_unimixing_tma_auto_takes_descriptors_for_the_plain_product(device, monkeypatch):
    # 'auto': descriptors for the plain product, pointers for the residual epilogue
    # (unimixing_rmsnorm's composed path), as measured on the H200
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", "auto")
    seen = []
    choose = kernels.gemm_tma
    monkeypatch.setattr(kernels, "gemm_tma", lambda *a: seen.append((a[-1], choose(*a))) or seen[-1][1])
    x = random_input((3, 4, 24), torch.float16, device)
    wl, wg = _weights(24, 4, torch.float16, device, requires_grad=False)
    uk.unimixing(x, wl, wg, backend="triton")
    uk.unimixing_rmsnorm(x, wl, wg, torch.ones(24, device=device, dtype=torch.float16), backend="triton")
    assert seen == [(False, True), (True, False)]


@pytest.mark.triton
@pytest.mark.parametrize("dtype, n, expected", [
    (torch.float32, 24, "need 16-bit operands"),
    (torch.float16, 20, "need 16-byte aligned operands and rows"),
])
def test_unimixing_tma_switch_raises_where_descriptors_cannot_read(device, monkeypatch, dtype, n, expected):
    # '1' where the operands do not allow descriptors (fp32; N = 20: rows of 40 bytes) raises and
    # says why, rather than quietly taking pointers; 'auto' takes pointers there
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    x = random_input((2, 4, n), dtype, device)
    wl, wg = _weights(n, 4, dtype, device, requires_grad=False)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", "1")
    want = f"UNIMIXER_UNIMIXING_TMA=1: the forward GEMM's tensor descriptors {expected}"
    with pytest.raises(ValueError, match=want):
        uk.unimixing(x, wl, wg, backend="triton")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", "auto")
    torch.testing.assert_close(uk.unimixing(x, wl, wg, backend="triton").float(),
                               uk.unimixing(x.float(), wl.float(), wg.float(), backend="reference"),
                               atol=2e-2, rtol=2e-2)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", "yes")
    with pytest.raises(ValueError, match="UNIMIXER_UNIMIXING_TMA: expected 'auto', '0' or '1'"):
        uk.unimixing(x, wl, wg, backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("mode, expected", [
    ("cublass", "UNIMIXER_UNIMIXING_GEMM: expected 'auto', 'triton' or 'cublas'"),
    ("cublas", "UNIMIXER_UNIMIXING_GEMM=cublas: needs fp16 or bf16 activations on CUDA"),
])
def test_unimixing_gemm_switch_checked(device, monkeypatch, mode, expected):
    # the memory-path backward's GEMM choice: a wrong value, or cuBLAS where it cannot run (fp32
    # activations here, and every call in the interpreter), raises rather than falling back
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_GEMM", mode)
    x = random_input((2, 4, 8), torch.float32, device, requires_grad=True)
    wl, wg = _weights(8, 4, torch.float32, device)
    y = uk.unimixing(x, wl, wg, backend="triton")
    with pytest.raises(ValueError, match=expected):
        y.sum().backward()


@pytest.mark.triton
@pytest.mark.parametrize("path", ["auto", "gemm"])
def test_unimixing_autocast_keeps_fp32_weights(device, monkeypatch, path):
    # under autocast the Triton backend takes the fp32 weights uncast (the registry's `lowers`):
    # the output in the autocast dtype, the weight gradients fp32 from the kernels, all within the
    # mixed-dtype bound of the fp64 reference (that other backends still receive cast weights is
    # tests/test_registry.py's)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", path if path == "gemm" else "auto")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", path)
    dtype = torch.float16
    x = random_input((3, 4, 24), torch.float32, device, requires_grad=True)
    wl, wg = _weights(24, 4, torch.float32, device)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        y = uk.unimixing(x, wl, wg, backend="triton")
    assert y.dtype == dtype
    gy = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, wl, wg), gy))
    assert [g.dtype for g in got[1:]] == [torch.float32] * 3
    _check_mixed_dtype(got, x.detach().to(dtype), wl, wg, gy, dtype)  # x as autocast rounded it


@pytest.mark.triton
def test_unimixing_backward_switch_checked(device, monkeypatch):
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemms")
    x = random_input((2, 4, 8), torch.float32, device, requires_grad=True)
    wl, wg = _weights(8, 4, torch.float32, device)
    y = uk.unimixing(x, wl, wg, backend="triton")
    with pytest.raises(ValueError, match="UNIMIXER_UNIMIXING_BACKWARD: expected 'auto' or 'gemm'"):
        y.sum().backward()


@pytest.mark.triton
def test_unimixing_equals_operator(device):
    # the kernel, not only the reference, equals the explicit L x L operator (SPEC §2)
    bs, t, d, b = 3, 2, 6, 4
    n = t * d // b
    x = torch.randn(bs, t, d, device=device)
    wl, wg = _weights(n, b, torch.float32, device, requires_grad=False)
    y = uk.unimixing(x, wl, wg, backend="triton")
    op = unimixing_operator(wl.double().cpu(), wg.double().cpu())
    expect = (x.double().cpu().reshape(bs, -1) @ op.T).reshape(bs, t, d)
    torch.testing.assert_close(y.double().cpu(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_unimixing_stride0_grad_and_determinism(device):
    x = random_input((3, 4, 8), torch.float32, device, requires_grad=True)
    wl, wg = _weights(8, 4, torch.float32, device)
    g = torch.randn(8, device=device).expand(3, 4, 8)  # stride-0 grad_output
    grads = [torch.autograd.grad(uk.unimixing(x, wl, wg, backend="triton"), (x, wl, wg), g) for _ in range(2)]
    for a, b in zip(*grads):
        assert torch.equal(a, b), "weight-gradient reduction is not deterministic"
    xr, wlr, wgr = (t.detach().double().requires_grad_() for t in (x, wl, wg))
    expect = torch.autograd.grad(uk.unimixing(xr, wlr, wgr, backend="reference"), (xr, wlr, wgr), g.double())
    for a, e in zip(grads[0], expect):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.triton
def test_unimixing_empty_batch(device):
    x = torch.randn(0, 4, 8, device=device, requires_grad=True)
    wl, wg = _weights(8, 4, torch.float32, device)
    y = uk.unimixing(x, wl, wg, backend="triton")
    assert y.shape == (0, 4, 8)
    dx, dwl, dwg = torch.autograd.grad(y, (x, wl, wg), torch.ones_like(y))
    assert dx.shape == x.shape and not dwl.any() and not dwg.any()
    nw = torch.randn(8, device=device, requires_grad=True)
    u = uk.unimixing_rmsnorm(x, wl, wg, nw, backend="triton")
    assert u.shape == (0, 4, 8)
    grads = torch.autograd.grad(u, (x, wl, wg, nw), torch.ones_like(u))
    assert all(not g.any() for g in grads[1:])


@pytest.mark.triton
def test_unimixing_mixed_dtype(device, kernel_dtype):
    # fp32 weights with half activations: the global product runs in the activation dtype, so
    # the results carry its precision (documented); check a relative bound, not SPEC §8's rule
    if kernel_dtype == torch.float32:
        pytest.skip("fp32 activations beside fp32 weights are not a mixed-dtype call")
    dtype = kernel_dtype
    x = random_input((3, 4, 8), dtype, device, requires_grad=True)
    wl, wg = _weights(8, 4, torch.float32, device)
    y = uk.unimixing(x, wl, wg, backend="triton")
    assert y.dtype == dtype
    gy = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, wl, wg), gy))
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    _check_mixed_dtype(got, x, wl, wg, gy, dtype)


@pytest.mark.triton
def test_unimixing_triton_rejects_fp64(device):
    x = torch.randn(2, 4, 8, device=device, dtype=torch.float64)
    wl, wg = _weights(8, 4, torch.float64, device, requires_grad=False)
    with pytest.raises(TypeError, match="x: the Triton backend"):
        uk.unimixing(x, wl, wg, backend="triton")


# --- PT2 conformance --------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("residual", [False, True], ids=["unimixing", "residual"])
def test_unimixing_opcheck(device, residual):
    # residual: the composed unimixing_rmsnorm's mixing node, whose backward writes dx over dy
    # (declared mutated), with and without the promise that the gradient is its own
    x = torch.randn(3, 2, 6, device=device, requires_grad=True)
    wl, wg = _weights(3, 4, torch.float32, device)
    if residual:
        fwd, bwd, extra = unimixing_residual_fwd, unimixing_residual_bwd, [(False,), (True,)]
    else:
        fwd, bwd, extra = unimixing_fwd, unimixing_bwd, [()]
    for more in extra:
        torch.library.opcheck(fwd, (x, wl, wg, *more))
    dy = torch.randn(3, 2, 6, device=device)
    torch.library.opcheck(bwd, (dy, x.detach(), wl.detach(), wg.detach(), x.new_empty(0), False, wg.dtype))


@pytest.mark.triton
@pytest.mark.parametrize("residual", [False, True], ids=["unimixing", "residual"])
def test_unimixing_opcheck_global_t(device, monkeypatch, residual):
    # 16-bit activations on the memory path: the forward's second output is W_G^T in their dtype,
    # which the backward takes with global_t, returning dW_G in the weight's dtype (fp32 here)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    x = torch.randn(3, 2, 6, device=device).to(torch.float16).requires_grad_()
    wl, wg = _weights(3, 4, torch.float32, device)
    fwd, bwd, more = ((unimixing_residual_fwd, unimixing_residual_bwd, (True,)) if residual
                      else (unimixing_fwd, unimixing_bwd, ()))
    torch.library.opcheck(fwd, (x, wl, wg, *more))
    wg_t = fwd(x.detach(), wl.detach(), wg.detach(), *more)[1]
    assert wg_t.dtype == torch.float16 and torch.equal(wg_t, wg.detach().t().to(torch.float16))
    dy = torch.randn(3, 2, 6, device=device).to(torch.float16)
    torch.library.opcheck(bwd, (dy, x.detach(), wl.detach(), wg_t, x.new_empty(0), True, torch.float32))


@pytest.mark.triton
@pytest.mark.parametrize("backward", ["gemm", "auto"])
def test_unimixing_saves_global_t_not_fp32_weight(device, monkeypatch, backward):
    # under autocast on the memory path the node keeps the fp16 W_G^T, not the fp32 W_G (a Sinkhorn
    # output in the blocks), whose memory is then free after the forward; with the backward in
    # registers (switch 'auto' at this small N) it keeps W_G, and both give the reference's gradients
    import weakref

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", backward)
    x = random_input((3, 4, 24), torch.float32, device, requires_grad=True)
    wl, logits = _weights(24, 4, torch.float32, device)
    wg = logits * 1.0  # not a leaf: only the graph can keep it alive
    ref = weakref.ref(wg)
    with torch.autocast(torch.device(device).type, dtype=torch.float16):
        y = uk.unimixing(x, wl, wg, backend="triton")
    del wg
    assert (ref() is None) == (backward == "gemm")
    gy = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, wl, logits), gy))
    assert got[3].dtype == torch.float32
    _check_mixed_dtype(got, x.detach().to(torch.float16), wl, logits, gy, torch.float16)


@pytest.mark.triton
def test_unimixing_rmsnorm_opcheck(device):
    z = torch.randn(2, 3, 8, device=device, requires_grad=True)
    wl, wg = _weights(6, 4, torch.float32, device)
    nw = torch.randn(8, device=device, requires_grad=True)
    torch.library.opcheck(unimixing_rmsnorm_fwd, (z, wl, wg, nw, 1e-6))
    u, s, rstd = unimixing_rmsnorm_fwd(z.detach(), wl.detach(), wg.detach(), nw.detach(), 1e-6)
    du = torch.randn_like(u)
    args = (du, z.detach(), s, wl.detach(), wg.detach(), nw.detach(), rstd)
    torch.library.opcheck(unimixing_rmsnorm_bwd, args)


@pytest.mark.triton
def test_unimixing_residual_leaves_a_gradient_it_does_not_own(device):
    # called directly (grad_is_private=False) the backward must not write over the caller's dy
    x = torch.randn(3, 2, 6, device=device, requires_grad=True)
    wl, wg = _weights(3, 4, torch.float32, device)
    y = unimixing_residual_fwd(x, wl, wg, False)[0]
    dy = torch.randn_like(y)
    keep = dy.clone()
    torch.autograd.grad(y, (x, wl, wg), dy)
    assert torch.equal(dy, keep)


@pytest.mark.triton
def test_unimixing_residual_bwd_rejects_a_dy_it_cannot_overwrite(device):
    x = torch.randn(3, 2, 6, device=device)
    wl, wg = _weights(3, 4, torch.float32, device, requires_grad=False)
    dy = torch.randn(3, 6, 2, device=device).transpose(1, 2)
    with pytest.raises(ValueError, match="dy: expected a contiguous"):
        unimixing_residual_bwd(dy, x, wl, wg, x.new_empty(0), False, wg.dtype)


@pytest.mark.triton
@pytest.mark.parametrize("residual", [False, True], ids=["unimixing", "residual"])
def test_unimixing_opcheck_saved_h(device, residual):
    # 16-bit activations at B >= 16 (the memory path both ways): the forward's third output is its
    # H = X W_B in x's dtype, which the backward reads rather than forming it again
    x = torch.randn(3, 4, 36, device=device).to(torch.float16).requires_grad_()
    wl, wg = _weights(3, 48, torch.float16, device)
    fwd, bwd, more = ((unimixing_residual_fwd, unimixing_residual_bwd, (True,)) if residual
                      else (unimixing_fwd, unimixing_bwd, ()))
    torch.library.opcheck(fwd, (x, wl, wg, *more))
    h = fwd(x.detach(), wl.detach(), wg.detach(), *more)[2]
    want = torch.einsum("snk,nkc->snc", x.detach().double().view(3, 3, 48), wl.detach().double())
    assert h.dtype == torch.float16 and h.shape == x.shape
    torch.testing.assert_close(h.double().view(3, 3, 48), want, rtol=2 ** -9, atol=2 ** -9)
    dy = torch.randn(3, 4, 36, device=device).to(torch.float16)
    torch.library.opcheck(bwd, (dy, x.detach(), wl.detach(), wg.detach(), h, False, wg.dtype))


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(3, 4, 36, 48), (5, 4, 80, 16)], ids=["b48", "n20b16"])
@pytest.mark.parametrize("residual", [False, True], ids=["unimixing", "residual"])
def test_unimixing_saved_h_matches_recompute(device, monkeypatch, shape, residual):
    # at B >= 16 on the memory path the node keeps the forward's H and the backward reads it
    # ('auto'), or keeps none and forms it again ('recompute'): the same dot and tile either way, so
    # the gradients are bitwise equal, and they match the reference
    from unimixer_kernels.triton_kernels import unimixing as kernels

    bs, t, d, b = shape
    seen = []
    bwd = kernels.unimixing_bwd
    monkeypatch.setattr(kernels, "unimixing_bwd", lambda *a, **kw: seen.append(kw["h"]) or bwd(*a, **kw))
    x = random_input((bs, t, d), torch.float16, device, requires_grad=True, noncontiguous=True)
    wl, wg = _weights(t * d // b, b, torch.float16, device)
    gy = torch.randn(bs, t, d, device=device).to(torch.float16)
    grads = {}
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BWD_GLOBAL", "split")  # the same dW_G GEMM both ways
    for mode in ("auto", "recompute"):
        monkeypatch.setenv("UNIMIXER_UNIMIXING_SAVE_H", mode)
        if residual:
            y = unimixing_residual_fwd(x, wl, wg, False)[0]
        else:
            y = uk.unimixing(x, wl, wg, backend="triton")
        grads[mode] = torch.autograd.grad(y, (x, wl, wg), gy)
    saved, recomputed = seen
    assert saved is not None and saved.shape == x.shape and recomputed is None
    for a, e in zip(grads["auto"], grads["recompute"]):
        assert torch.equal(a, e)
    if not residual:
        check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(3, 4, 36, 48), (5, 4, 80, 16), (2, 3, 160, 16)],
                         ids=["b48n3", "n20b16", "n30b16"])
@pytest.mark.parametrize("residual", [False, True], ids=["unimixing", "residual"])
def test_unimixing_bwd_global_fused(device, monkeypatch, kernel_dtype, shape, residual):
    # at B >= 16 with the forward's H saved (the memory-path forward, fp32 too), 'fused' forms G and
    # the dW_G partials in one kernel (two row tiles at N = 20 and 30 in the interpreter's 16-block
    # tiles; N = 30 pads to 32): the gradients match the reference, and the two GEMMs of 'split'
    from unimixer_kernels.triton_kernels import unimixing as kernels

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    bs, t, d, b = shape
    calls = []
    launch, sums = kernels._bwd_global, kernels.sum_partials
    monkeypatch.setattr(kernels, "_bwd_global", lambda *a: calls.append(a[0].shape) or launch(*a))
    sum_launches = []
    monkeypatch.setattr(kernels, "sum_partials", lambda *p: sum_launches.append(len(p)) or sums(*p))
    x = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    wl, wg = _weights(t * d // b, b, kernel_dtype, device)
    gy = torch.randn(bs, t, d, device=device).to(kernel_dtype)
    grads = {}
    for mode in ("fused", "split"):
        monkeypatch.setenv("UNIMIXER_UNIMIXING_BWD_GLOBAL", mode)
        if residual:
            y = unimixing_residual_fwd(x, wl, wg, False)[0]
        else:
            y = uk.unimixing(x, wl, wg, backend="triton")
        sum_launches.clear()
        grads[mode] = torch.autograd.grad(y, (x, wl, wg), gy)
        assert len(calls) == 1
        # fused: the dW_B partials join dW_G's in one sum launch; split: dW_B's first, then dW_G's
        assert sum_launches == ([2] if mode == "fused" else [1, 1])
    tol = 8 * torch.finfo(kernel_dtype).eps
    for a, e in zip(grads["fused"], grads["split"]):
        assert (a.double() - e.double()).abs().max().item() <= tol * e.double().abs().max().item()
    if not residual:
        monkeypatch.setenv("UNIMIXER_UNIMIXING_BWD_GLOBAL", "fused")
        check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")
        assert len(calls) == 2


def bwd_global_tiles_compile_for_sm90() -> None:
    """``unimixing_bwd_global_kernel`` at its tiles and the largest ``N`` it takes (256), compiled for
    sm_90: the 16-bit tile's shared memory (``W_G``'s slice and three stages of ``dY`` and ``H``) within
    what an SM offers, and no tile spilling registers (the fp32 FMA dots hold their operands there)."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import unimixing as kernels

    from bench.sm90 import SMEM_LIMIT, compile_sm90

    for half, (bm, bk, warps, stages) in kernels.BWD_GLOBAL_TILE.items():
        dt, ptr = (tl.bfloat16, "*bf16") if half else (tl.float32, "*fp32")
        ptrs = dict(WG=ptr, DY=ptr, H=ptr, G=ptr, DWG_PART="*fp32")
        consts = dict(B=48, NP=kernels.BWD_GLOBAL_MAX_N, BM=bm, BK=bk, DOT_DTYPE=dt,
                      PRECISION="tf32" if half else "ieee", swt=1)
        got = compile_sm90(kernels.unimixing_bwd_global_kernel, ptrs, consts, warps, stages,
                           divisible=("BS", "N", "L", "swm"), usage=True)
        assert got["shared"] <= SMEM_LIMIT and got["spill"] == 0, (half, got)


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_unimixing_bwd_global_tiles_compile_for_sm90(sm90_compile):
    sm90_compile("import test_unimixing as t; t.bwd_global_tiles_compile_for_sm90()")


@pytest.mark.triton
def test_unimixing_bwd_global_auto_rule(device, monkeypatch):
    # 'auto' fuses for 16-bit activations with H saved at N <= 256; a bad value, or 'fused' where it
    # cannot run, names the switch
    from unimixer_kernels.triton_kernels import unimixing as kernels

    half, single = torch.empty(1, dtype=torch.float16), torch.empty(1)
    assert kernels.fuses_bwd_global(half, 256, True) and not kernels.fuses_bwd_global(half, 257, True)
    assert not kernels.fuses_bwd_global(half, 256, False) and not kernels.fuses_bwd_global(single, 256, True)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BWD_GLOBAL", "fused")
    assert kernels.fuses_bwd_global(single, 256, True)
    with pytest.raises(ValueError, match="BWD_GLOBAL=fused needs N <= 256 .* got N = 1024"):
        kernels.fuses_bwd_global(half, 1024, True)
    with pytest.raises(ValueError, match="H not saved"):
        kernels.fuses_bwd_global(half, 48, False)
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BWD_GLOBAL", "both")
    with pytest.raises(ValueError, match="UNIMIXING_BWD_GLOBAL: expected 'auto', 'fused' or 'split'"):
        kernels.fuses_bwd_global(half, 48, True)


@pytest.mark.triton
def test_unimixing_save_h_switch_checked(device, monkeypatch):
    # a bad value names the switch and its values, where the memory path at B >= 16 reads it
    monkeypatch.setenv("UNIMIXER_UNIMIXING_SAVE_H", "keep")
    x = torch.randn(3, 4, 36, device=device).to(torch.float16)
    wl, wg = _weights(3, 48, torch.float16, device, requires_grad=False)
    with pytest.raises(ValueError, match="UNIMIXER_UNIMIXING_SAVE_H: expected 'auto' or 'recompute'"):
        uk.unimixing(x, wl, wg, backend="triton")


@pytest.mark.triton
def test_unimixing_bwd_rejects_a_foreign_h(device):
    x = torch.randn(3, 4, 36, device=device).to(torch.float16)
    wl, wg = _weights(3, 48, torch.float16, device, requires_grad=False)
    dy = torch.randn_like(x)
    with pytest.raises(ValueError, match="h: expected the forward's H, torch.float16 of shape"):
        h = torch.zeros(3, 4, 35, device=device, dtype=torch.float16)
        unimixing_bwd(dy, x, wl, wg, h, False, wg.dtype)


def _compile_backend() -> str:
    # inductor needs a C compiler on a CPU-only machine; aot_eager still traces the custom ops,
    # their fake implementations and the autograd registration
    try:
        torch.compile(lambda t: t * 2, backend="inductor", fullgraph=True)(torch.ones(2))
        return "inductor"
    except Exception:  # pragma: no cover - depends on the machine
        return "aot_eager"


@pytest.mark.triton
@pytest.mark.parametrize("fused", [False, True], ids=["unimixing", "unimixing_rmsnorm"])
def test_unimixing_compile_fullgraph(device, fused):
    torch._dynamo.reset()
    bs, t, d, b = 3, 2, 6, 4
    n = t * d // b
    x = torch.randn(bs, t, d, device=device, requires_grad=True)
    wl, wg = _weights(n, b, torch.float32, device)
    nw = torch.randn(d, device=device, requires_grad=True)

    def step(x, wl, wg, nw):
        if fused:
            out = uk.unimixing_rmsnorm(x * 1.5, wl, wg, nw, backend="triton")
        else:
            out = uk.unimixing(x * 1.5, wl, wg, backend="triton")
        return (out * out).sum()

    compiled = torch.compile(step, backend=_compile_backend(), fullgraph=True)
    inputs = (x, wl, wg, nw)
    loss_c = compiled(*inputs)
    grads_c = torch.autograd.grad(loss_c, inputs, allow_unused=True)
    loss_e = step(*inputs)
    grads_e = torch.autograd.grad(loss_e, inputs, allow_unused=True)
    torch.testing.assert_close(loss_c, loss_e)
    for a, e in zip(grads_c, grads_e):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e)


# --- GPU: SPEC §10 presets (smaller batch so the fp64 reference stays cheap) --------------------

PRESETS = {
    "paper-small": (64, 32, 128, 4),
    "lite-2.5m": (64, 16, 96, 4),
    "paper-100m": (16, 32, 512, 4),
    "rankmixer-100m": (64, 16, 768, 48),
}


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", list(PRESETS))
def test_unimixing_preset_gpu(kernel_dtype, preset):
    bs, t, d, b = PRESETS[preset]
    n = t * d // b
    x = random_input((bs, t, d), kernel_dtype, "cuda", requires_grad=True)
    wl, wg = _weights(n, b, kernel_dtype, "cuda")
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", list(PRESETS))
def test_unimixing_rmsnorm_preset_gpu(kernel_dtype, preset):
    _check_rmsnorm(PRESETS[preset], kernel_dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", ["paper-small", "lite-2.5m", "paper-100m"])
@pytest.mark.parametrize("forward", ["auto", "gemm"])
def test_unimixing_gemm_backward_preset_gpu(monkeypatch, kernel_dtype, preset, forward):
    monkeypatch.setenv("UNIMIXER_UNIMIXING_BACKWARD", "gemm")
    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", forward)
    _check_rmsnorm(PRESETS[preset], kernel_dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", ["paper-small", "paper-100m", "rankmixer-100m"])
@pytest.mark.parametrize("gemm", ["triton", "cublas"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_unimixing_backward_gemms_preset_gpu(monkeypatch, dtype, preset, gemm):
    # the memory path's plain GEMMs by either kernel, at the presets where 'auto' takes it: the
    # backward's two at B = 4; at B = 48 (rankmixer-100m) the global products both ways
    monkeypatch.setenv("UNIMIXER_UNIMIXING_GEMM", gemm)
    bs, t, d, b = PRESETS[preset]
    x = random_input((bs, t, d), dtype, "cuda", requires_grad=True)
    wl, wg = _weights(t * d // b, b, dtype, "cuda")
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", ["paper-small", "paper-100m"])
@pytest.mark.parametrize("tma", ["0", "1"])
def test_unimixing_forward_gemm_launches_preset_gpu(monkeypatch, preset, tma):
    # the memory-path forward GEMM through descriptors (persistent, the autotuned TMA tiles) and
    # through pointers, bf16, with the residual epilogue of unimixing_rmsnorm's composed path
    monkeypatch.setenv("UNIMIXER_UNIMIXING_TMA", tma)
    bs, t, d, b = PRESETS[preset]
    x = random_input((bs, t, d), torch.bfloat16, "cuda", requires_grad=True)
    wl, wg = _weights(t * d // b, b, torch.bfloat16, "cuda")
    check_against_reference(uk.unimixing, (x, wl, wg), backend="triton")
    _check_rmsnorm(PRESETS[preset], torch.bfloat16, "cuda")


@pytest.mark.gpu
@pytest.mark.triton
def test_unimixing_hypothesis_gpu():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(deadline=None, max_examples=30)
    @hypothesis.given(
        seed=st.integers(0, 2**31 - 1),
        bs=st.integers(1, 70),
        t=st.integers(1, 9),
        d=st.integers(1, 80),
        b=st.integers(1, 20),
        fused=st.booleans(),
        dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
        path=st.sampled_from(["auto", "gemm"]),
    )
    def run(seed, bs, t, d, b, fused, dtype, path):
        torch.manual_seed(seed)  # fresh inputs per example, reproducible from the example
        hypothesis.assume((t * d) % b == 0 and t * d // b <= 600)
        hypothesis.assume(d > 1 or not fused)  # RMSNorm over one element: its gradient is all cancellation
        n = t * d // b
        z = random_input((bs, t, d), dtype, "cuda", requires_grad=True, noncontiguous=bs % 3 == 0)
        wl, wg = _weights(n, b, dtype, "cuda")
        with pytest.MonkeyPatch.context() as mp:  # 'gemm': the memory path at every B and N
            mp.setenv("UNIMIXER_UNIMIXING_FORWARD", path)
            mp.setenv("UNIMIXER_UNIMIXING_BACKWARD", path)
            if fused:
                nw = random_input((d,), dtype, "cuda", requires_grad=True)
                check_against_reference(uk.unimixing_rmsnorm, (z, wl, wg, nw), backend="triton")
            else:
                check_against_reference(uk.unimixing, (z, wl, wg), backend="triton")

    run()


@pytest.mark.gpu
@pytest.mark.triton
def test_unimixing_int64_offsets_gpu():
    # bs * L > 2^31 elements (about 4.3 GB per bf16 tensor): the last samples must still be right
    t, d, b = 32, 128, 4
    bs = (1 << 31) // (t * d) + 2
    n = t * d // b
    x = torch.randn(bs, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    wl, wg = _weights(n, b, torch.bfloat16, "cuda", requires_grad=False)
    y = uk.unimixing(x, wl, wg, backend="triton")
    g = torch.zeros_like(y)
    g[-2:] = torch.randn_like(y[-2:])
    (dx,) = torch.autograd.grad(y, (x,), g)
    xr = x[-2:].detach().double().cpu().requires_grad_()
    yr = uk.unimixing(xr, wl.double().cpu(), wg.double().cpu(), backend="reference")
    (dxr,) = torch.autograd.grad(yr, (xr,), g[-2:].double().cpu())
    for got, want in ((y[-2:], yr), (dx[-2:], dxr)):
        err = (got.double().cpu() - want.detach()).abs().max().item()
        assert err <= 2 ** -6 * want.abs().max().item(), err
    del x, y, g, dx
    torch.cuda.empty_cache()


# --- GPU lowering, checked without a GPU ---------------------------------------------------------


# pointer arguments of the per-block local kernels, as compiled for sm_90 (bf16 activations)
LOCAL_PTRS = dict(G="*bf16", X="*bf16", WL="*bf16", DY="*bf16", DX="*bf16", H="*bf16", DWL_PART="*fp32")


def compile_for_sm90() -> None:
    """Compile the kernels most exposed to GPU-only constraints for sm_90 (bf16): every forward
    tile (plain, with the residual, and with the fused norm epilogue), the GEMMs (the forward's
    through tensor descriptors too: TMA copies and wgmma, no spills), the small-B dX
    kernel, the per-block local kernels (dots, and FMAs for small B), the c-major copy and the
    transposing cast. Run in a process without
    ``TRITON_INTERPRET``."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import unimixing as kernels

    from bench.sm90 import SMEM_LIMIT, compile_sm90, unimixing_fwd_rows

    for label, cfg, res in unimixing_fwd_rows(usage=False):
        assert res["shared"] <= SMEM_LIMIT, f"{label} {cfg}: {res['shared']} bytes of shared memory"
    p = "*bf16"
    common = dict(DOT_DTYPE=tl.bfloat16, PRECISION="tf32")
    kw, warps, stages = kernels._dx_configs(4, True)[0]
    builds = [(kernels.unimixing_bwd_dx_kernel, dict(DY=p, X=p, WL=p, WG=p, DX=p, DWL_PART="*fp32"),
               dict(kw, B=4, BP=4, HAS_RESIDUAL=True, **common), warps, stages)]
    # the dot local kernel: forward (H only), backward with H formed again, backward reading a saved H
    for h_only, store_h in ((True, True), (False, True), (False, False)):
        sb = 64 if h_only else kernels._local_dot_bwd_tile(store_h, 256)[1]  # the launcher's at N = 256
        builds.append((kernels.unimixing_local_kernel, LOCAL_PTRS,
                       dict(B=48, BP=64, SB=sb, HAS_RESIDUAL=True, H_ONLY=h_only, STORE_H=store_h, **common),
                       4, 3))
    for h_only in (False, True):  # the FMA local kernel: backward step, and forward (H only)
        fma_warps, fma_sb = kernels.local_fma_tile(h_only)
        builds.append((kernels.unimixing_local_fma_kernel, LOCAL_PTRS,
                       dict(B=4, BP=4, BN=32 * fma_warps, SB=fma_sb, HAS_RESIDUAL=True, H_ONLY=h_only),
                       fma_warps, 3))
    for kw, warps, stages in kernels._global_configs(True):
        for residual in (False, True):  # the backward's G; the forward's Y (+ X)
            builds.append((kernels.unimixing_global_kernel, dict(WG=p, SRC=p, OUT=p, R=p),
                           dict(kw, B=4, HAS_RESIDUAL=residual, GROUP=8, **common), warps, stages))
    # the c-major GEMMs, each with the unit strides its operands have; the forward's with and without
    # its residual
    unit = [(0, False, dict(sak=1, sbn=1)), (0, True, dict(sak=1, sbn=1)), (1, False, dict(sak=1, sbn=1)),
            (2, False, dict(sam=1, sbn=1))]
    for kw, warps, stages in kernels._gemm_configs(True):
        for kind, residual, strides in unit:
            ptrs = dict(A=p, BMAT=p, C="*fp32" if kind == 2 else p, R=p)
            builds.append((kernels.unimixing_gemm_kernel, ptrs,
                           dict(kw, KIND=kind, BLOCK=4, HAS_RESIDUAL=residual, GROUP=8, **strides,
                                **common), warps, stages))
    for residual, tiles in kernels._TMA_TILES.items():  # the forward GEMM through descriptors: no spills
        for bm, bn, bk, warps, stages in tiles:
            ptrs = dict(A=f"tensordesc<bf16[{bm}, {bk}]>", BMAT=f"tensordesc<bf16[{bk}, {bn}]>", C=p, R=p)
            consts = dict(BM=bm, BN=bn, BK=bk, KIND=0, BLOCK=4, HAS_RESIDUAL=residual, GROUP=8, TMA=True,
                          sak=1, sbn=1, **common)
            res = compile_sm90(kernels.unimixing_gemm_kernel, ptrs, consts, warps, stages, usage=True,
                               ptx=True)
            ptx = res.pop("ptx")
            assert res["shared"] <= SMEM_LIMIT and res["spill"] == 0, (consts, res)
            # the operands arrive by TMA bulk copies and meet in warpgroup MMAs (no fallback to
            # pointer loads or mma.sync)
            assert "cp.async.bulk.tensor" in ptx and "wgmma.mma_async" in ptx, consts
    builds.append((kernels.unimixing_c_major_kernel, dict(SRC=p, DST=p), dict(B=4, BP=4, SB=4, BN=128), 4, 1))
    builds.append((kernels.unimixing_transpose_cast_kernel, dict(SRC="*fp32", DST=p), dict(BT=64, s_col=1),
                   4, 1))
    for kernel, ptrs, consts, w, s in builds:
        assert compile_sm90(kernel, ptrs, consts, w, s)["shared"] <= SMEM_LIMIT, kernel


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_unimixing_kernels_compile_for_sm90(sm90_compile):
    sm90_compile("import test_unimixing as t; t.compile_for_sm90()")


def local_fma_loop_sm90() -> None:
    """The local FMA kernel's sample loop, compiled for sm_90 (bf16, the forward's and backward's
    default tiles and 8 x 4, each in both modes): no shared memory and no barrier inside it (every
    tile in one layout, see the kernel's docstring), and its X, dY and dX accesses are vector loads
    and stores."""
    from unimixer_kernels.triton_kernels import unimixing as kernels

    from bench.sm90 import compile_sm90, loop_body

    for warps, sb in {*kernels.LOCAL_FMA_TILE, (8, 4)}:
        for h_only in (False, True):
            consts = dict(B=4, BP=4, BN=32 * warps, SB=sb, HAS_RESIDUAL=True, H_ONLY=h_only)
            ptx = compile_sm90(kernels.unimixing_local_fma_kernel, LOCAL_PTRS, consts, warps, 3,
                               divisible=("N", "L"), ptx=True)["ptx"]
            loop = loop_body(ptx)
            label = f"{consts}"
            # nor shuffles: each lane reads and writes only its own elements, so the backward may
            # write H over G (each G element is read before H is written there, by the same lane)
            assert "bar.sync" not in loop and ".shared" not in loop and "shfl" not in loop, label
            assert "ld.global.v2.b32" in loop, label  # 4 bf16 of X in one load
            if not h_only:
                assert "st.global.v2.b32" in loop, label


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_unimixing_local_fma_loop_sm90(sm90_compile):
    sm90_compile("import test_unimixing as t; t.local_fma_loop_sm90()")


@pytest.mark.triton
@pytest.mark.parametrize("forward", ["gemm", "register"])
@pytest.mark.parametrize("op", ["unimixing", "unimixing_rmsnorm"])
def test_a_pending_w_global_is_waited_for_after_the_per_block_products(device, monkeypatch, forward, op):
    # w_global handed over still pending (the UniMixing module's side stream, _pending.py): the memory
    # path launches H = X W_B first and waits just before its first read of W_G; the in-register kernel
    # reads both at once, so it waits first. Either way once, and the result is the op's
    from unimixer_kernels.triton_kernels import unimixing as kernels

    from unimixer_kernels import _pending

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", forward)
    log = []
    local = kernels._local_products
    monkeypatch.setattr(kernels, "_local_products", lambda *a, **k: (log.append("local"), local(*a, **k))[1])
    z, wl, wg, nw = _rmsnorm_inputs((5, 4, 24, 4), torch.float16, device)
    args = (z, wl, wg) if op == "unimixing" else (z, wl, wg, nw)
    fn = getattr(uk, op)
    expect = fn(*args, backend="triton")
    log.clear()
    _pending.read_late(wg, lambda: log.append("wait"))
    got = fn(*args, backend="triton")
    _pending.settled(wg, op)
    assert log == (["local", "wait"] if forward == "gemm" else ["wait"])
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
