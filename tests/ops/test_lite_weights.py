"""lite_weights: the fused local and matrix-free global Triton kernels against the fp64 reference
(SPEC §3, §8): both outputs, and the gradients to omega, the basis, A_G and B_G."""

import re

import pytest
import torch
from unimixer_kernels.triton_kernels import sinkhorn as sk_kernels
from unimixer_kernels.triton_kernels._launch import LITE_GEMM_SWITCH
from unimixer_kernels.triton_kernels.gemm_fp32 import split_parts as split

import unimixer_kernels as uk
from unimixer_kernels.ops.sinkhorn import lite_global_bwd, lite_global_fwd, lite_local_bwd, lite_local_fwd
from unimixer_kernels.testing import check_against_reference, lite_weights_inputs


def _inputs(n, nb, bsz, r, dtype, device, noncontiguous=False):
    return lite_weights_inputs(n, nb, bsz, r, dtype, device, noncontiguous=noncontiguous)


@pytest.mark.triton
@pytest.mark.parametrize("n,nb,bsz,r", [(5, 2, 3, 3), (21, 4, 4, 6)])
@pytest.mark.parametrize("tau", [0.05, 1.0])
@pytest.mark.parametrize("symmetric", [True, False])
def test_lite_weights_triton(device, kernel_dtype, n, nb, bsz, r, tau, symmetric):
    args = _inputs(n, nb, bsz, r, kernel_dtype, device)
    check_against_reference(uk.lite_weights, (*args, tau, 1, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("tau,symmetric", [(0.05, True), (1.0, False)])
def test_lite_weights_triton_k20(device, kernel_dtype, tau, symmetric):
    args = _inputs(5, 2, 3, 3, kernel_dtype, device)
    check_against_reference(uk.lite_weights, (*args, tau, 20, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_lite_weights_noncontiguous(device, kernel_dtype, symmetric):
    args = _inputs(7, 3, 5, 4, kernel_dtype, device, noncontiguous=True)
    assert not any(t.is_contiguous() for t in args)
    check_against_reference(uk.lite_weights, (*args, 0.3, 3, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("materialise", [False, True], ids=["matrix-free", "materialised"])
@pytest.mark.parametrize("n", [37, 32])
def test_lite_weights_global_many_tiles(device, monkeypatch, symmetric, materialise, n):
    # 16 x 16 tiles: the global matrix (N = 37) spans 3 x 3 tiles (N = 32: 2 x 2, no masks); rank 40
    # spans two BK chunks.
    # "materialised": A @ B formed once per call by torch and run as dense logits (what fp32 factors
    # of rank > 32 do on this path)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0 if materialise else 10**9)
    formed, form = [], sk_kernels.lowrank_logits
    monkeypatch.setattr(sk_kernels, "lowrank_logits",
                        lambda a, b, mm=None: formed.append(a.shape) or form(a, b, mm))
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    assert sk_kernels._lowrank_chunk_width(40, True) == 32  # 32-wide chunks: one per accumulator
    args = _inputs(n, 2, 4, 40, torch.float32, device)
    check_against_reference(uk.lite_weights, (*args, 0.05, 2, symmetric), backend="triton")
    # formed by the forward and again by the backward, and only where asked
    assert formed == ([(n, 40)] * 2 if materialise else [])


@pytest.mark.parametrize("tf32", [False, True])
def test_fp32_mm_tf32_flag(monkeypatch, tf32):
    # on cuBLAS, the fp32 GEMMs (logits, dA_G, dB_G) turn torch's process-wide TF32 flag off around
    # themselves only where it is on, and restore it; at the default (off) they never write the flag
    monkeypatch.setenv(LITE_GEMM_SWITCH, "cublas")
    class Flags:
        def __init__(self):
            self.writes, self._tf32 = [], tf32

        @property
        def allow_tf32(self):
            return self._tf32

        @allow_tf32.setter
        def allow_tf32(self, value):
            self.writes.append(value)
            self._tf32 = value

    flags = Flags()
    monkeypatch.setattr(torch.backends.cuda, "matmul", flags)
    a, b = torch.randn(5, 3), torch.randn(3, 5)
    assert torch.equal(sk_kernels.lowrank_logits(a, b)[0], a @ b)
    assert flags.writes == ([False, True] if tf32 else []) and flags.allow_tf32 == tf32


@pytest.mark.triton
def test_lite_global_gradient_gemms_in_fp32(device, monkeypatch):
    # dA_G and dB_G come from the same fp32 GEMM helper as the logits (not torch's TF32 flag)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    calls = []
    products = sk_kernels.Fp32Products.__call__
    monkeypatch.setattr(sk_kernels.Fp32Products, "__call__", lambda self, *pairs: calls.append(
        [(_shape(a), _shape(b)) for a, b in pairs]) or products(self, *pairs))
    a_g, b_g = _inputs(37, 2, 4, 5, torch.float32, device)[2:]
    _, u, v, a_parts, b_parts = lite_global_fwd(a_g, b_g, 0.2, 2, False)
    assert calls == [] and a_parts.numel() == b_parts.numel() == 0  # rank 5: matrix free, nothing split
    dp = torch.randn(37, 37, device=device)
    da, db = sk_kernels.lite_global_bwd(dp, a_g, b_g, u, v, 0.2, 2, False)
    assert calls == [[((37, 37), (37, 5)), ((5, 37), (37, 37))]]  # one call: one launch sums split K
    assert da.shape == a_g.shape and db.shape == b_g.shape


def _shape(x) -> tuple:
    """An fp32 operand's shape, or that of the operand a :class:`Split` holds the parts of."""
    return tuple(x.parts.shape[1:]) if isinstance(x, sk_kernels.Split) else tuple(x.shape)


@pytest.mark.triton
@pytest.mark.parametrize("resident", [False, True])
def test_lite_global_splits_each_operand_once(device, monkeypatch, resident):
    # fp32 factors above LOWRANK_MATERIALISE_MIN_RANK, split GEMM: the forward splits A_G and B_G in one
    # call and returns their parts; the backward takes those (for the logits, and transposed for the
    # gradients) and gets dM as parts from the resident kernels, or splits it after the tiled ones
    if not resident:
        monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
        monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0)
    monkeypatch.setenv(LITE_GEMM_SWITCH, "split")
    split, calls = sk_kernels.split_parts, []
    monkeypatch.setattr(sk_kernels, "split_parts", lambda *xs: calls.append([_shape(x) for x in xs])
                        or split(*xs))
    a_g, b_g = _inputs(37, 2, 4, 5, torch.float32, device)[2:]
    _, u, v, a_parts, b_parts = lite_global_fwd(a_g, b_g, 0.2, 2, False)
    assert calls == [[(37, 5), (5, 37)]]
    assert torch.equal(a_parts, split(a_g)[0]) and torch.equal(b_parts, split(b_g)[0])
    calls.clear()
    sk_kernels.lite_global_bwd(torch.randn(37, 37, device=device), a_g, b_g, u, v, 0.2, 2, False,
                               a_parts, b_parts)
    assert calls == ([] if resident else [[(37, 37)]])


@pytest.mark.triton
@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_bwd_parts_are_the_split_of_dm(device, monkeypatch, resident, symmetric):
    # dM as parts, stored by the resident kernels' last pass, is bit for bit the split of the fp32 dM the
    # same call gives without them; the one-launch-per-half-step kernels give that fp32 dM either way
    if not resident:
        monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
        monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    n, k = 37, 3
    a_g, b_g = _inputs(n, 2, 4, 5, torch.float32, device)[2:]
    _, u, v, _, _ = lite_global_fwd(a_g, b_g, 0.2, k, symmetric)
    dp = torch.randn(1, n, n, device=device)
    args = (dp, None, a_g, b_g, u.view(1, k, n), v.view(1, k, n), 1, n, k, 0.2, symmetric, torch.float32)
    dm = sk_kernels.tiled_bwd(*args)
    parts = sk_kernels.tiled_bwd(*args, parts=True)
    if not resident:
        assert torch.equal(parts, dm)
        return
    assert parts.shape == (3, 1, n, n) and parts.dtype == torch.bfloat16
    assert torch.equal(parts, split(dm.view(n, n))[0].view(3, 1, n, n))
    p = parts.float()
    assert torch.equal(p[0] + (p[1] + p[2]), dm)
    with pytest.raises(ValueError, match="parts are of an fp32 dM"):
        sk_kernels.tiled_bwd(*args[:-1], torch.bfloat16, parts=True)


@pytest.mark.triton
def test_lite_global_ops_ignore_ambient_autocast(device, monkeypatch):
    # the global weight's custom ops called directly inside an autocast region (the public op turns
    # autocast off first): the logits GEMM of fp32 factors and the dA, dB GEMMs stay fp32, so the
    # results are those of the same call outside the region, bit for bit
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0)
    a_g, b_g = _inputs(37, 2, 4, 40, torch.float32, device)[2:]

    def run():
        a, b = a_g.detach().requires_grad_(), b_g.detach().requires_grad_()
        w = lite_global_fwd(a, b, 0.2, 2, True)[0]
        w.backward(torch.linspace(-1, 1, w.numel(), device=device).view_as(w))
        return w, a.grad, b.grad

    plain = run()
    with torch.autocast(device, dtype=torch.bfloat16):
        inside = run()
    for x, y in zip(plain, inside):
        assert x.dtype == torch.float32 and torch.equal(x, y)


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("materialise", [False, True], ids=["matrix-free", "materialised"])
def test_lite_weights_global_resident(device, monkeypatch, kernel_dtype, symmetric, materialise):
    # the resident kernels form the low-rank tile once (one 32 x 32 tile in the interpreter; on a
    # GPU, 16 x 16 tiles, one program each), or run A @ B formed by torch as dense logits
    monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0 if materialise else 10**9)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16) if device == "cuda" else (32, 32))
    monkeypatch.setattr(sk_kernels, "RESIDENT", True)
    monkeypatch.setattr(sk_kernels, "RESIDENT_CHECK", True)
    args = _inputs(29 if device == "cpu" else 100, 2, 4, 40, kernel_dtype, device)
    check_against_reference(uk.lite_weights, (*args, 0.05, 3, symmetric), backend="triton")


@pytest.mark.triton
def test_lite_weights_large_blocks(device, monkeypatch):
    # blocks above the in-register limit go through torch composition + the tiled kernels
    monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 4)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    args = _inputs(3, 2, 18, 3, torch.float32, device)
    check_against_reference(uk.lite_weights, (*args, 0.5, 2, True), backend="triton")


@pytest.mark.triton
def test_lite_weights_many_blocks(device):
    # paper-like local shape (B = 4, b = 4), several programs and a ragged last one
    args = _inputs(300, 4, 4, 3, torch.float32, device)
    check_against_reference(uk.lite_weights, (*args, 0.05, 1, True), backend="triton")


@pytest.mark.triton
def test_lite_weights_doubly_stochastic(device):
    args = [t.detach() for t in _inputs(9, 3, 4, 5, torch.float32, device)]
    w_local, w_global = uk.lite_weights(*args, tau=1.0, iters=20, backend="triton")
    assert w_local.dtype == w_global.dtype == torch.float32
    for w in (w_local, w_global):
        torch.testing.assert_close(w.double().sum(-2).cpu(), torch.ones(w.shape[:-2] + w.shape[-1:],
                                   dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(w.double().sum(-1).cpu(), torch.ones(w.shape[:-1], dtype=torch.float64),
                                   rtol=0, atol=1e-3)


@pytest.mark.triton
@pytest.mark.parametrize("parts", [False, True], ids=["matrix-free", "factor-parts"])
def test_lite_weights_saves_only_potentials(device, monkeypatch, parts):
    """Autograd keeps the (small) inputs by reference and O(K * N * (B + 1)) potentials; no N x N. With
    the logits formed by the split GEMM (``parts``), also the factors' bf16 parts: O(N r)."""
    if parts:
        monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0)
        monkeypatch.setenv(LITE_GEMM_SWITCH, "split")
    n, nb, bsz, r, k = 24, 3, 4, 3, 5
    args = _inputs(n, nb, bsz, r, torch.float32, device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        w_local, w_global = uk.lite_weights(*args, tau=0.5, iters=k, backend="triton")
    ptrs = {t.untyped_storage().data_ptr() for t in args}
    new = [t for t in saved if t.untyped_storage().data_ptr() not in ptrs]
    assert sum(t.numel() for t in new) <= 2 * k * n * bsz + 2 * k * n + (2 * 3 * n * r if parts else 0)
    assert sum(t.dtype == torch.bfloat16 and t.numel() == 3 * n * r for t in new) == (2 if parts else 0)
    assert all(t.numel() < n * n for t in saved)
    (w_local.sum() + (w_global * torch.randn_like(w_global)).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in args)


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_lite_opcheck(device, symmetric):
    omega, basis, a_g, b_g = _inputs(6, 2, 3, 4, torch.float32, device)
    torch.library.opcheck(lite_local_fwd, (omega, basis, 0.5, 2, symmetric))
    torch.library.opcheck(lite_global_fwd, (a_g, b_g, 0.5, 2, symmetric))
    w, u, v = lite_local_fwd(omega.detach(), basis.detach(), 0.5, 2, symmetric)
    torch.library.opcheck(lite_local_bwd, (torch.randn_like(w), omega.detach(), basis.detach(), u, v,
                                           0.5, 2, symmetric))
    w, u, v, a_parts, b_parts = lite_global_fwd(a_g.detach(), b_g.detach(), 0.5, 2, symmetric)
    torch.library.opcheck(lite_global_bwd, (torch.randn_like(w), a_g.detach(), b_g.detach(), u, v, a_parts,
                                            b_parts, 0.5, 2, symmetric))


@pytest.mark.triton
def test_lite_global_opcheck_with_factor_parts(device, monkeypatch):
    # fp32 factors whose logits the split GEMM forms: the forward's parts outputs (and its fake's) are
    # [3, N, r] and [3, r, N] bf16, and the backward takes them
    monkeypatch.setattr(sk_kernels, "LOWRANK_MATERIALISE_MIN_RANK", 0)
    monkeypatch.setenv(LITE_GEMM_SWITCH, "split")
    a_g, b_g = _inputs(6, 2, 3, 4, torch.float32, device)[2:]
    torch.library.opcheck(lite_global_fwd, (a_g, b_g, 0.5, 2, True))
    w, u, v, a_parts, b_parts = lite_global_fwd(a_g.detach(), b_g.detach(), 0.5, 2, True)
    assert a_parts.shape == (3, 6, 4) and b_parts.shape == (3, 4, 6) and a_parts.dtype == torch.bfloat16
    torch.library.opcheck(lite_global_bwd, (torch.randn_like(w), a_g.detach(), b_g.detach(), u, v, a_parts,
                                            b_parts, 0.5, 2, True))


@pytest.mark.triton
def test_lite_weights_compile_fullgraph(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: uk.lite_weights(*a, tau=0.3, iters=2, backend="triton"), fullgraph=True)
    args = _inputs(6, 2, 3, 4, torch.float32, device)
    twins = [t.detach().clone().requires_grad_() for t in args]
    out = fn(*args)
    expect = uk.lite_weights(*twins, tau=0.3, iters=2, backend="triton")
    for o, e in zip(out, expect):
        torch.testing.assert_close(o, e, rtol=1e-6, atol=1e-7)
    gs = [torch.randn_like(o) for o in out]
    for a, b in zip(torch.autograd.grad(out, args, gs), torch.autograd.grad(expect, twins, gs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("tau,iters,symmetric", [(0.05, 3, True), (1.0, 1, False)])
@pytest.mark.parametrize("noncontiguous", [False, True])
def test_lite_weights_one_at_a_time(device, kernel_dtype, tau, iters, symmetric, noncontiguous):
    # lite_local_weights and lite_global_weights (the two ops the modules call): each against the
    # reference, and together the same numbers as lite_weights
    omega, basis, a_g, b_g = _inputs(9, 3, 4, 5, kernel_dtype, device, noncontiguous=noncontiguous)
    check_against_reference(uk.lite_local_weights, (omega, basis, tau, iters, symmetric), backend="triton")
    check_against_reference(uk.lite_global_weights, (a_g, b_g, tau, iters, symmetric), backend="triton")
    both = uk.lite_weights(omega, basis, a_g, b_g, tau, iters, symmetric, backend="triton")
    one = (uk.lite_local_weights(omega, basis, tau, iters, symmetric, backend="triton"),
           uk.lite_global_weights(a_g, b_g, tau, iters, symmetric, backend="triton"))
    for a, b in zip(both, one):
        assert torch.equal(a, b)


def test_lite_weights_one_at_a_time_bad_input():
    omega, basis, a_g, b_g = torch.randn(4, 2), torch.randn(2, 3, 3), torch.randn(4, 2), torch.randn(2, 4)
    with pytest.raises(ValueError, match="basis"):
        uk.lite_local_weights(omega, torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="omega"):
        uk.lite_local_weights(torch.randn(4), basis)
    with pytest.raises(ValueError, match=r"b_g.*\(r, N\) from a_g"):
        uk.lite_global_weights(a_g, torch.randn(2, 5))
    with pytest.raises(ValueError, match="a_g"):
        uk.lite_global_weights(torch.randn(4, 2, 1), b_g)
    with pytest.raises(ValueError, match="tau"):
        uk.lite_global_weights(a_g, b_g, tau=-1.0)
    with pytest.raises(ValueError, match="iters"):
        uk.lite_local_weights(omega, basis, iters=0)
    with pytest.raises(ValueError, match="b_g"):
        uk.lite_global_weights(a_g, b_g.to("meta"))


@pytest.mark.triton
def test_lite_weights_rejects_float64_on_triton(device):
    args = [t.detach().double() for t in _inputs(4, 2, 3, 2, torch.float32, device)]
    with pytest.raises(TypeError, match="omega"):
        uk.lite_weights(*args, backend="triton")


def test_lite_weights_bad_shapes():
    omega, basis, a_g, b_g = torch.randn(4, 2), torch.randn(2, 3, 3), torch.randn(4, 2), torch.randn(2, 4)
    with pytest.raises(ValueError, match="basis"):
        uk.lite_weights(omega, torch.randn(3, 3, 3), a_g, b_g)
    with pytest.raises(ValueError, match="a_g"):
        uk.lite_weights(omega, basis, torch.randn(5, 2), b_g)
    with pytest.raises(ValueError, match="b_g"):
        uk.lite_weights(omega, basis, a_g, torch.randn(3, 4))
    with pytest.raises(ValueError, match="tau"):
        uk.lite_weights(omega, basis, a_g, b_g, tau=0)
    with pytest.raises(ValueError, match="iters"):
        uk.lite_weights(omega, basis, a_g, b_g, iters=0)


# --- GPU: SPEC §10 presets ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize(
    "n,nb,bsz,r",
    [(1024, 4, 4, 128), (384, 4, 4, 48), (4096, 4, 4, 256)],
    ids=["paper-small", "lite-2.5m", "paper-100m"],
)
@pytest.mark.parametrize("iters", [1, 20])
@pytest.mark.parametrize("launch", ["auto", "per-half-step"])
def test_lite_weights_preset_gpu(monkeypatch, kernel_dtype, n, nb, bsz, r, iters, launch):
    # 'auto': resident global weights where they fit (paper-small, lite-2.5m)
    monkeypatch.setattr(sk_kernels, "RESIDENT", launch == "auto")
    args = _inputs(n, nb, bsz, r, kernel_dtype, "cuda")
    check_against_reference(uk.lite_weights, (*args, 0.05, iters, True), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
def test_lite_weights_pdl_gpu(monkeypatch, kernel_dtype):
    # UNIMIXER_PDL=1: the matrix-free tiles (16-bit factors) are formed before each launch's wait
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90 or newer")
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)  # PDL is for the one-launch-per-half-step kernels
    monkeypatch.setenv("UNIMIXER_PDL", "1")
    args = _inputs(1024, 4, 4, 128, kernel_dtype, "cuda")
    check_against_reference(uk.lite_weights, (*args, 0.05, 20, True), backend="triton")


def _sweep_case(seed, n, nb, bsz, r, iters, tau, symmetric):
    torch.manual_seed(seed)  # fresh inputs per example, reproducible from the example
    args = _inputs(n, nb, bsz, r, torch.float32, "cuda")
    check_against_reference(uk.lite_weights, (*args, tau, iters, symmetric), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("seed,n,nb,bsz,r,iters,tau,symmetric", [
    # the rank-28 low-rank tile summed as one sequential chain (now two accumulators; NOTES)
    (0, 31, 1, 1, 28, 1, 0.05, False),
])
def test_lite_weights_sweep_examples_gpu(seed, n, nb, bsz, r, iters, tau, symmetric):
    # failures the hypothesis sweep below once found, with its own inputs
    _sweep_case(seed, n, nb, bsz, r, iters, tau, symmetric)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("seed,n,nb,bsz,r,iters,tau,symmetric", [
    # the batched kernels' Lite S0 was contracted into some of its uses: d omega at 11x torch's error
    # (now explicit FMAs, no contraction; NOTES). Since, d Z misses the fp32 rtol=1e-4 check on one
    # element by 18%, and torch-fp32 gives that element the same value (run59)
    (0, 2, 2, 2, 1, 1, 0.05, False),
])
def test_lite_weights_sweep_examples_beyond_fp32_gpu(seed, n, nb, bsz, r, iters, tau, symmetric):
    # sweep examples where the fp32 rtol=1e-4 check is out of fp32's reach: the kernel meets the factor
    # rule, and misses rtol only where torch-fp32 misses it too. A kernel worse than torch fails the
    # factor rule first (another message), and one that meets rtol again makes this test fail: either
    # way the example needs a new look
    with pytest.raises(AssertionError, match=r"\(fp32 rtol=1e-4\)") as failure:
        _sweep_case(seed, n, nb, bsz, r, iters, tau, symmetric)
    found = re.search(r"torch-fp32's largest error over the tensor is ([0-9.]+)x", str(failure.value))
    assert found and float(found.group(1)) >= 1.0, str(failure.value)


@pytest.mark.gpu
@pytest.mark.triton
def test_lite_weights_hypothesis_gpu():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(deadline=None, max_examples=20)
    @hypothesis.given(
        seed=st.integers(0, 2**31 - 1),
        n=st.integers(1, 300),
        nb=st.integers(1, 6),
        bsz=st.integers(1, 48),
        r=st.integers(1, 70),
        iters=st.integers(1, 22),
        tau=st.sampled_from([0.05, 0.2, 1.0]),
        symmetric=st.booleans(),
    )
    def run(seed, n, nb, bsz, r, iters, tau, symmetric):
        _sweep_case(seed, n, nb, bsz, r, iters, tau, symmetric)

    run()
