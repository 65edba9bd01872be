"""sinkhorn: the Triton kernels against the fp64 reference (SPEC §2.1, §8), forward and backward.

On the CPU the kernels run in the Triton interpreter, so shapes stay small. The tiled path (the
one large matrices take on a GPU) is forced on small matrices by shrinking the small-matrix limit
and the tile shape.
"""

import pytest
import torch
from unimixer_kernels.triton_kernels import sinkhorn as sk_kernels

import unimixer_kernels as uk
from unimixer_kernels.ops.sinkhorn import sinkhorn_bwd, sinkhorn_fwd
from unimixer_kernels.testing import (
    check_against_reference,
    dominated_logits,
    held_bytes,
    lite_weights_inputs,
    random_input,
)

TAU_ITERS = [(0.05, 20), (1.0, 1), (1.0, 20), (0.05, 1)]


@pytest.fixture
def tiled(monkeypatch):
    """Route every matrix through the tiled kernels, one launch per half-step, with 16 x 16 tiles
    (many tiles per matrix)."""
    monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 8)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)


@pytest.fixture
def resident(monkeypatch):
    """The resident kernels (a program per 16 x 16 tile, tagged partials) with their waits checked.
    The interpreter runs programs one after another, so there a matrix is one tile (n <= 16); on a
    GPU every tile has its own program."""
    monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 8)
    monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    monkeypatch.setattr(sk_kernels, "RESIDENT", True)
    monkeypatch.setattr(sk_kernels, "RESIDENT_CHECK", True)


def _logits(shape, dtype, device, noncontiguous=False, transposed=False):
    if transposed:
        return random_input(shape, dtype, device).mT.requires_grad_(True)
    return random_input(shape, dtype, device, requires_grad=True, noncontiguous=noncontiguous)


# --- small matrices, batched in registers -------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(5, 5), (3, 7, 7), (2, 2, 4, 4)])
@pytest.mark.parametrize("tau,iters", TAU_ITERS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_small_triton(device, kernel_dtype, shape, tau, iters, symmetric):
    x = _logits(shape, kernel_dtype, device)
    check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["strided", "transposed"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_small_noncontiguous(device, kernel_dtype, layout, symmetric):
    x = _logits((3, 9, 9), kernel_dtype, device, noncontiguous=layout == "strided",
                transposed=layout == "transposed")
    assert not x.is_contiguous()
    check_against_reference(uk.sinkhorn, (x, 0.3, 5, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_small_largest_block(device, symmetric):
    # n = 40: a 64 x 64 padded block, one matrix per program
    x = _logits((2, 40, 40), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("n", [1, 2])
def test_sinkhorn_tiny_n(device, n):
    x = _logits((4, n, n), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.1, 3, True), backend="triton")


@pytest.mark.triton
def test_sinkhorn_tiled_ragged_edge(device, tiled):
    # n = 17: the last row and column tiles hold a single row / column
    x = _logits((17, 17), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.1, 2, False), backend="triton")


@pytest.mark.triton
def test_sinkhorn_many_small_matrices(device):
    # several programs, each with many matrices, and a ragged last program
    x = _logits((301, 4, 4), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.5, 3, True), backend="triton")


# --- large matrices: tiled streaming passes ------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(37, 37), (2, 21, 21), (2, 32, 32)], ids=["ragged", "batch", "even"])
@pytest.mark.parametrize("tau,iters", [(0.05, 3), (1.0, 1)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_tiled_triton(device, kernel_dtype, tiled, shape, tau, iters, symmetric):
    # "even": the 16 x 16 tiles divide n, so the kernels are built without masks (EVEN)
    meta = sk_kernels._tile_args(shape[-1], torch.empty(1, 1, 1), None, None)[-1]
    assert meta["EVEN"] == (shape[-1] % 16 == 0)
    x = _logits(shape, kernel_dtype, device)
    check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("tau,symmetric", [(0.05, True), (1.0, False)])
def test_sinkhorn_tiled_k20(device, tiled, tau, symmetric):
    x = _logits((20, 20), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, tau, 20, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_sinkhorn_tiled_noncontiguous(device, tiled, layout):
    x = _logits((35, 35), torch.float32, device, noncontiguous=layout == "strided",
                transposed=layout == "transposed")
    check_against_reference(uk.sinkhorn, (x, 0.2, 2, True), backend="triton")


@pytest.mark.triton
def test_sinkhorn_default_tiles(device, monkeypatch):
    # the tile shape a GPU uses for n = 65..127: two 64 x 128 tiles
    monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 64)
    x = _logits((70, 70), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.5, 2, True), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("tau,iters", TAU_ITERS)
@pytest.mark.parametrize("shape", [(13, 13), (2, 16, 16)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_resident_triton(device, resident, shape, tau, iters, symmetric):
    x = _logits(shape, torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("path,n", [("resident", 16), ("tiled", 37)])
@pytest.mark.parametrize("iters", [1, 2, 20])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_dominated_rows(device, request, path, n, iters, symmetric):
    # the resident kernels' plain sums and iterate factors, and the tiled forward's plain sums
    # after the first iteration, must stay in range where rows and columns lie hundreds apart
    request.getfixturevalue(path)
    x = dominated_logits((2, n, n), device)
    check_against_reference(uk.sinkhorn, (x, 0.05, iters, symmetric), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["strided", "transposed"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_resident_noncontiguous_16bit(device, resident, layout, symmetric):
    x = _logits((3, 11, 11), torch.bfloat16, device, noncontiguous=layout == "strided",
                transposed=layout == "transposed")
    check_against_reference(uk.sinkhorn, (x, 0.3, 5, symmetric), backend="triton")


@pytest.mark.triton
def test_sinkhorn_poll_switch_checked(device, resident, monkeypatch):
    monkeypatch.setenv("UNIMIXER_SINKHORN_POLL", "warp")
    x = _logits((12, 12), torch.float32, device)
    with pytest.raises(ValueError, match="UNIMIXER_SINKHORN_POLL: expected 'thread' or 'block'"):
        uk.sinkhorn(x, 0.5, 3, backend="triton")


@pytest.mark.triton
def test_sinkhorn_resident_path_taken(device, resident, monkeypatch):
    # where the tiles fit, the forward and backward are one resident launch each, and nothing else
    launched = []
    for name in ("sinkhorn_resident_fwd_kernel", "sinkhorn_resident_bwd_kernel", "sinkhorn_tile_fwd_kernel",
                 "sinkhorn_tile_bwd_kernel"):
        kernel = getattr(sk_kernels, name)
        monkeypatch.setattr(sk_kernels, name, _Recorder(kernel, name, launched))
    x = _logits((2, 12, 12), torch.float32, device)
    uk.sinkhorn(x, 0.5, 3, False, backend="triton").sum().backward()
    assert launched == [("sinkhorn_resident_fwd_kernel", (1, 2)), ("sinkhorn_resident_bwd_kernel", (1, 2))]


class _Recorder:
    """A kernel whose launches (name, grid) are recorded, and with ``options``, the launch's
    keyword arguments too."""

    def __init__(self, kernel, name, log, options=None):
        self.kernel, self.name, self.log, self.options = kernel, name, log, options

    def __getitem__(self, grid):
        self.log.append((self.name, grid))
        launch = self.kernel[grid]
        if self.options is None:
            return launch

        def run(*args, **kwargs):
            self.options.append((self.name, kwargs))
            return launch(*args, **kwargs)

        return run


@pytest.mark.triton
def test_sinkhorn_fma_contraction_dense_off(device, resident, monkeypatch):
    # the batched and resident kernels compile without FMA contraction, so that S0 = x * scale is one
    # rounded number in all its uses (a contracted use differs from the rest: see DENSE_FP_FUSION)
    launched, options = [], []
    for name in ("sinkhorn_small_fwd_kernel", "sinkhorn_small_bwd_kernel", "sinkhorn_resident_fwd_kernel",
                 "sinkhorn_resident_bwd_kernel"):
        monkeypatch.setattr(sk_kernels, name, _Recorder(getattr(sk_kernels, name), name, launched, options))
    for n in (5, 12):  # batched, resident
        x = _logits((2, n, n), torch.float32, device)
        uk.sinkhorn(x, 0.5, 3, False, backend="triton").sum().backward()
    assert len(options) == 4
    assert all(kw.get("enable_fp_fusion") is False for _, kw in options), options
    # Lite: the batched kernels (local weights) write their products as explicit FMAs and compile
    # without contraction; the resident kernels form the low-rank tile with contraction on
    options.clear()
    omega, basis, a_g, b_g = (t.to(device) for t in lite_weights_inputs(12, 2, 3, 4, torch.float32))
    sum(w.sum() for w in uk.lite_weights(omega, basis, a_g, b_g, 0.5, 2, False, backend="triton")).backward()
    assert len(options) == 4
    assert {name: kw.get("enable_fp_fusion") for name, kw in options} == {
        "sinkhorn_small_fwd_kernel": False, "sinkhorn_small_bwd_kernel": False,
        "sinkhorn_resident_fwd_kernel": True, "sinkhorn_resident_bwd_kernel": True}, options


# --- properties ---------------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("path", ["small", "tiled"])
def test_sinkhorn_doubly_stochastic(device, monkeypatch, path):
    if path == "tiled":
        monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 8)
        monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    x = random_input((2, 19, 19), torch.float32, device)
    p = uk.sinkhorn(x, tau=1.0, iters=20, symmetric=True, backend="triton")
    assert p.dtype == torch.float32 and (p >= 0).all()
    ones = torch.ones(2, 19, dtype=torch.float64)
    # the last half-step normalises columns: they sum to 1 to rounding
    torch.testing.assert_close(p.double().sum(-2).cpu(), ones, rtol=0, atol=1e-5)
    # rows converge with K
    torch.testing.assert_close(p.double().sum(-1).cpu(), ones, rtol=0, atol=1e-3)


@pytest.mark.triton
def test_sinkhorn_temperature_sharpens(device):
    # at tau = 0.05 and K = 20 the output of a symmetric matrix is close to a permutation-like
    # doubly stochastic matrix: its largest entries dominate every row
    x = random_input((12, 12), torch.float32, device)
    p = uk.sinkhorn(x, tau=0.05, iters=20, backend="triton")
    assert torch.isfinite(p).all()
    assert (p.amax(-1) > 0.5).float().mean() > 0.5


@pytest.mark.triton
@pytest.mark.parametrize("path", ["small", "tiled"])
def test_sinkhorn_saves_only_potentials(device, monkeypatch, path):
    """What autograd keeps for backward is the input (by reference) and O(K * n) floats."""
    if path == "tiled":
        monkeypatch.setattr(sk_kernels, "SMALL_MAX_N", 8)
        monkeypatch.setattr(sk_kernels, "TILE_OVERRIDE", (16, 16))
    n_mat, n, k = 2, 24, 6
    x = random_input((n_mat, n, n), torch.float32, device, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        p = uk.sinkhorn(x, tau=0.5, iters=k, backend="triton")
    new = [t for t in saved if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
    assert sum(t.numel() for t in new) <= 2 * k * n * n_mat
    p.sum().backward()
    assert torch.isfinite(x.grad).all()

    saved.clear()
    xr = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        uk.sinkhorn(xr, tau=0.5, iters=k, backend="reference")
    # the reference keeps every iterate: at least K * n^2 floats per matrix
    assert sum(t.numel() for t in saved) >= k * n * n * n_mat


@pytest.mark.triton
def test_sinkhorn_stride0_grad(device):
    x = random_input((11, 11), torch.float32, device, requires_grad=True)
    p = uk.sinkhorn(x, tau=0.5, iters=4, backend="triton")
    g = torch.randn(11, device=device).expand_as(p)  # stride-0 grad_output
    (dx,) = torch.autograd.grad(p, x, g)
    xr = x.detach().double().requires_grad_()
    (ex,) = torch.autograd.grad(uk.sinkhorn(xr, tau=0.5, iters=4, backend="reference"), xr, g.double())
    torch.testing.assert_close(dx.double(), ex, rtol=1e-4, atol=1e-5)


@pytest.mark.triton
def test_sinkhorn_empty_batch(device):
    x = torch.randn(0, 5, 5, device=device, requires_grad=True)
    p = uk.sinkhorn(x, backend="triton")
    assert p.shape == (0, 5, 5)
    p.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.triton
def test_sinkhorn_rejects_float64_on_triton(device):
    with pytest.raises(TypeError, match="logits"):
        uk.sinkhorn(torch.randn(4, 4, dtype=torch.float64, device=device), backend="triton")


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(tau=0.0), ValueError, "tau"),
        (dict(tau=-1.0), ValueError, "tau"),
        (dict(iters=0), ValueError, "iters"),
        (dict(iters=2.5), TypeError, "iters"),
    ],
)
def test_sinkhorn_bad_args(kwargs, err, match):
    with pytest.raises(err, match=match):
        uk.sinkhorn(torch.randn(4, 4), **kwargs)


def test_sinkhorn_bad_shape():
    with pytest.raises(ValueError, match="logits"):
        uk.sinkhorn(torch.randn(3, 4))
    with pytest.raises(TypeError, match="logits"):
        uk.sinkhorn(torch.ones(3, 3, dtype=torch.int64))


# --- PT2 conformance ----------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_opcheck(device, symmetric):
    x = random_input((2, 5, 5), torch.float32, device, requires_grad=True)
    torch.library.opcheck(sinkhorn_fwd, (x, 0.5, 3, symmetric))
    p, u, v = sinkhorn_fwd(x.detach(), 0.5, 3, symmetric)
    dp = torch.randn_like(p)
    torch.library.opcheck(sinkhorn_bwd, (dp, x.detach(), u, v, 0.5, 3, symmetric))


@pytest.mark.triton
def test_sinkhorn_opcheck_tiled(device, tiled):
    x = random_input((20, 20), torch.float32, device, requires_grad=True)
    torch.library.opcheck(sinkhorn_fwd, (x, 0.5, 2, True))


def _compile_backend() -> str:
    # inductor needs a C compiler on the CPU; aot_eager still traces the custom ops, fake
    # implementations and autograd registration
    if torch.cuda.is_available():
        return "inductor"
    try:
        torch.compile(lambda t: t * 2, backend="inductor", fullgraph=True)(torch.ones(2))
        return "inductor"
    except Exception:
        return "aot_eager"


@pytest.mark.triton
def test_sinkhorn_compile_fullgraph(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda t: uk.sinkhorn(t, 0.3, 4, True, backend="triton"),
                       backend=_compile_backend(), fullgraph=True)
    x = random_input((3, 6, 6), torch.float32, device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out = fn(x)
    expect = uk.sinkhorn(x2, 0.3, 4, True, backend="triton")
    torch.testing.assert_close(out, expect, rtol=1e-6, atol=1e-7)
    g = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, g)
    (ex,) = torch.autograd.grad(expect, x2, g)
    torch.testing.assert_close(dx, ex, rtol=1e-6, atol=1e-6)


# --- GPU: SPEC §10 presets and sweeps -----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("n", [1024, 4096])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("launch", ["auto", "per-half-step"])
def test_sinkhorn_preset_gpu(monkeypatch, kernel_dtype, n, symmetric, launch):
    # n = 1024 takes the resident kernels by default; n = 4096 one launch per half-step either way
    if launch == "per-half-step":
        if n != 1024:
            pytest.skip("n = 4096 runs one launch per half-step in the 'auto' case already")
        monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    else:
        monkeypatch.setattr(sk_kernels, "RESIDENT_CHECK", True)
    x = random_input((n, n), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("shape,symmetric",
                         [((2, 100, 100), True), ((100, 100), False), ((3, 61, 61), False)])
@pytest.mark.parametrize("poll", ["thread", "block"])
def test_sinkhorn_resident_tiles_gpu(resident, monkeypatch, shape, symmetric, poll):
    # 16 x 16 tiles: up to 7 x 7 programs per matrix wait on each other's tagged partials, ragged
    # edge tiles included (n = 61: a last tile of 13); either wait (UNIMIXER_SINKHORN_POLL)
    monkeypatch.setenv("UNIMIXER_SINKHORN_POLL", poll)
    x = random_input(shape, torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_resident_dominated_rows_gpu(resident, symmetric):
    x = dominated_logits((2, 100, 100), "cuda")
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("n", [300, 4096])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_tiled_dominated_rows_gpu(monkeypatch, n, symmetric):
    # one launch per half-step with the default tiles (n = 300: a ragged last tile; it would run the
    # resident kernels by default)
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    x = dominated_logits((n, n), "cuda")
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
def test_sinkhorn_local_preset_gpu(kernel_dtype):
    # paper-small local weights: N = 1024 matrices of B = 4
    x = random_input((1024, 4, 4), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, True), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
def test_sinkhorn_saved_memory_gpu():
    n, k = 1024, 20
    x = random_input((n, n), torch.float32, "cuda", requires_grad=True)
    held = held_bytes(lambda: uk.sinkhorn(x, 0.05, k, backend="triton"))
    assert held <= 4 * 2 * k * n + (1 << 20)  # the potentials, and the allocator's rounding


@pytest.mark.gpu
@pytest.mark.triton
def test_sinkhorn_hypothesis_gpu():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(deadline=None, max_examples=40)
    # a failure once seen: n = 2 at tau = 0.1 (the batched kernels' exponentials at |x| ~ 27)
    @hypothesis.example(seed=139, n=2, batch=2, iters=1, tau=0.1, symmetric=False)
    @hypothesis.given(
        seed=st.integers(0, 2**31 - 1),
        n=st.integers(1, 300),
        batch=st.integers(1, 3),
        iters=st.integers(1, 25),
        tau=st.sampled_from([0.05, 0.1, 0.5, 1.0, 2.0]),
        symmetric=st.booleans(),
    )
    def run(seed, n, batch, iters, tau, symmetric):
        torch.manual_seed(seed)  # fresh inputs per example, reproducible from the example
        x = random_input((batch, n, n), torch.float32, "cuda", requires_grad=True)
        check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="triton")

    run()



def compile_resident_for_sm90() -> None:
    """Compile both resident kernels (n = 1024 tiles, dense and low-rank, with the launcher's warps)
    for sm_90 and check how they wait (volatile polls of the tagged partials; no fence, barrier
    atomic or spill in the forward) and, where ptxas and cuobjdump are found, what one iteration of
    the K loop issues: no maximum (FMNMX) after the first iteration, one exponential per entry (the
    tile's entries per thread, plus a few logs and reciprocals), and at most 12800 instructions over
    the program's warps (16 warps: 632-717 a thread in v2, v1 took 972-1695; 8 warps: 919-1040);
    waiting with per-thread polls, at most 24 block-wide barriers per iteration (22-24; the
    block-wide poll 34-36)."""
    from bench.sm90 import SMEM_LIMIT, sinkhorn_resident_rows

    warps, rt_p, ct_p = sk_kernels._resident_shape(64, 128, 16, 8)
    entries = 64 * 128 // (32 * warps)
    for label, res in sinkhorn_resident_rows():
        assert res["shared"] <= SMEM_LIMIT, label
        assert "ld.volatile.global" in res["ptx"], label
        assert not any(op in res["ptx"] for op in ("fence.", "membar", ".acquire", ".release")), label
        if "fwd" in label:
            assert res["spill"] in (0, None), label
        loop = res["loop"]
        if loop is not None:
            assert loop["FMNMX"] == 0, (label, loop)
            assert entries <= loop["MUFU"] <= entries + 4, (label, loop)
            assert sum(loop.values()) * warps <= 12800, (label, sum(loop.values()))
            if "thread poll" in label:
                assert loop["BAR"] <= 24, (label, loop["BAR"])
        if "thread poll" in label:
            # one polling loop per partial word a thread holds: a row and a column wait ([CT_P, 64]
            # and [RT_P, 128] words over the warps: 2 + 8 per thread at 8 warps), twice in the
            # forward (before its K loop and in it), once in the backward; no replicated words, and no
            # clone of the impure asm left behind by a layout change (an early version had both)
            per_pair = (ct_p * 64 + rt_p * 128) // (32 * warps)
            assert res["ptx"].count("spin_loop:") == (2 if "fwd" in label else 1) * per_pair, label


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_sinkhorn_resident_compiles_for_sm90(sm90_compile):
    sm90_compile("import test_sinkhorn as t; t.compile_resident_for_sm90()")


# --- programmatic dependent launch (UNIMIXER_PDL=1) --------------------------------------------


@pytest.mark.triton
def test_sinkhorn_pdl_switch_refuses_where_it_cannot_work(device, tiled, monkeypatch):
    x = _logits((20, 20), torch.float32, device)
    monkeypatch.setenv("UNIMIXER_PDL", "2")
    with pytest.raises(ValueError, match="UNIMIXER_PDL"):
        uk.sinkhorn(x, 0.5, 2, backend="triton")
    if device == "cuda" and torch.cuda.get_device_capability() >= (9, 0):
        return
    monkeypatch.setenv("UNIMIXER_PDL", "1")
    with pytest.raises(RuntimeError, match="UNIMIXER_PDL=1 needs"):
        uk.sinkhorn(x, 0.5, 2, backend="triton")


def compile_tiles_pdl_for_sm90() -> None:
    """Compile the tiled kernels for sm_90 with and without ``PDL`` and check that only the PDL
    build waits on the previous grid and releases the next one. Run without ``TRITON_INTERPRET``."""
    from unimixer_kernels.triton_kernels import sinkhorn as k

    from bench.sm90 import compile_sm90

    ptrs = {a: "*fp32" for a in "SRC A B WS P U V PR PC QR QC DP CS RS G DX".split()} | {"CNT": "*i32"}
    tile = dict(BM=64, BN=128)
    common = dict(tile, MODE=1, SYMMETRIC=True, BK=32, DOT_IEEE=True, RT_P=16, CT_P=8)
    builds = [(k.sinkhorn_tile_fwd_kernel, dict(common, PHASE=1, PLAIN=True)),
              (k.sinkhorn_tile_bwd_kernel, dict(common, PHASE=1, LAST=False, FIRST=False)),
              (k.sinkhorn_tile_sym_kernel, tile)]
    for kernel, consts in builds:
        for pdl, early in ((True, False), (False, False), (True, True)):
            if early and kernel is k.sinkhorn_tile_sym_kernel:
                continue
            opts = dict(consts, PDL=pdl) | (dict(EARLY=early) if "MODE" in consts else {})
            ptx = compile_sm90(kernel, ptrs, opts, 8, 1, floats=("scale", "grad_scale"), ptx=True)["ptx"]
            has = "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx
            assert has == pdl, (kernel.__name__, pdl)
            if pdl:  # the wait comes before the kernel's first global load, unless the S0 tile is early
                before = "ld.global" in ptx[:ptx.index("griddepcontrol.wait")]
                assert before == early, (kernel.__name__, early)
    # FAST_EXP: every exponential of a half-step flushes subnormal results (ex2.approx.ftz), none other
    for kernel, consts in builds[:2]:
        for fast in (False, True):
            ptx = compile_sm90(kernel, ptrs, dict(consts, PDL=False, EARLY=False, FAST_EXP=fast), 8, 1,
                               floats=("scale", "grad_scale"), ptx=True)["ptx"]
            exps = ptx.count("ex2.approx.f32"), ptx.count("ex2.approx.ftz.f32")
            expect = (exps[0] == 0 and exps[1] > 0) if fast else (exps[0] > 0 and exps[1] == 0)
            assert expect, (kernel.__name__, fast, exps)


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_sinkhorn_pdl_compiles_for_sm90(sm90_compile):
    sm90_compile("import test_sinkhorn as t; t.compile_tiles_pdl_for_sm90()")


@pytest.mark.triton
@pytest.mark.parametrize("n", [16, 33, 64, 70], ids=["1-tile", "3-tiles", "4-tiles", "5-tiles"])
def test_sinkhorn_tiled_pairs(device, tiled, monkeypatch, n):
    # symmetric logits: one program per pair of mirrored tiles (odd and even tile counts, whose last
    # pairs sit half the tiles apart), against the reference and against one program per tile
    n_t = -(-n // 16)
    assert sk_kernels._tile_programs(n_t, n_t, sk_kernels._pairs(True, 16, 16)) == n_t * (n_t + 1) // 2
    x = _logits((2, n, n), torch.float32, device)
    dp = torch.randn(x.shape, device=device)
    out = []
    for mode in ("0", "auto"):
        monkeypatch.setenv("UNIMIXER_SINKHORN_PAIRS", mode)
        check_against_reference(uk.sinkhorn, (x, 0.05, 3, True), backend="triton")
        p = uk.sinkhorn(x, 0.05, 3, True, backend="triton")
        out.append((p, *torch.autograd.grad(p, x, dp)))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
def test_sinkhorn_pairs_only_where_they_apply(monkeypatch):
    assert sk_kernels._pairs(True, 64, 64)
    assert not sk_kernels._pairs(False, 64, 64)  # not symmetric: tile (q, p) is not tile (p, q)^T
    assert not sk_kernels._pairs(True, 32, 64)  # a mirrored tile of another shape
    monkeypatch.setenv("UNIMIXER_SINKHORN_PAIRS", "0")
    assert not sk_kernels._pairs(True, 64, 64)
    monkeypatch.setenv("UNIMIXER_SINKHORN_PAIRS", "yes")
    with pytest.raises(ValueError, match="UNIMIXER_SINKHORN_PAIRS"):
        sk_kernels._pairs(True, 64, 64)


@pytest.mark.triton
def test_sinkhorn_serpentine_changes_no_number(device, tiled, monkeypatch):
    # every other launch walking the tiles and matrices in reverse (SERPENTINE) gives the same bits
    x = _logits((2, 37, 37), torch.float32, device)
    dp = torch.randn(x.shape, device=device)
    out = []
    for serpentine in (False, True):
        monkeypatch.setattr(sk_kernels, "SERPENTINE", serpentine)
        p = uk.sinkhorn(x, 0.1, 3, True, backend="triton")
        out.append((p, *torch.autograd.grad(p, x, dp)))
    for a, b in zip(*out):
        assert torch.equal(a, b)


@pytest.mark.triton
def test_sinkhorn_tile_switch(device, monkeypatch):
    # UNIMIXER_SINKHORN_TILE picks the tile shape of the tiled kernels; bad values name the switch
    from unimixer_kernels.triton_kernels import sinkhorn as k

    monkeypatch.setattr(k, "SMALL_MAX_N", 4)
    monkeypatch.setenv("UNIMIXER_SINKHORN_TILE", "16x32")
    assert k._tiles(40) == (16, 32)
    x = _logits((40, 40), torch.float32, device)
    check_against_reference(uk.sinkhorn, (x, 0.5, 3, True), backend="triton")
    for bad in ("32", "24x32", "8x32", "256x128"):
        monkeypatch.setenv("UNIMIXER_SINKHORN_TILE", bad)
        with pytest.raises(ValueError, match="UNIMIXER_SINKHORN_TILE: expected 'auto' or 'BMxBN'"):
            uk.sinkhorn(x, 0.5, 3, backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("tile", ["auto", "32x128"])
def test_sinkhorn_tile_switch_gpu(monkeypatch, tile):
    # the switch sets the tiles of the one-launch-per-half-step kernels (n = 1024 is resident by default)
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)
    monkeypatch.setenv("UNIMIXER_SINKHORN_TILE", tile)
    x = random_input((1024, 1024), torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, True), backend="triton")


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_pdl_gpu(monkeypatch, symmetric):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90 or newer")
    monkeypatch.setattr(sk_kernels, "RESIDENT", False)  # PDL is for the one-launch-per-half-step kernels
    monkeypatch.setenv("UNIMIXER_PDL", "1")
    x = random_input((1024, 1024), torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="triton")
    # captured in a CUDA graph (the launches keep their programmatic edges) and replayed: the same
    # values as the eager calls
    from bench.timing import capture_graph

    g_out = torch.randn(1024, 1024, device="cuda")

    def step(leaf):
        p = uk.sinkhorn(leaf, 0.05, 20, symmetric, backend="triton")
        return p, torch.autograd.grad(p, leaf, g_out)[0]

    expect = step(x)
    # a fresh leaf for the graph: x's AccumulateGrad node is bound to the stream of the eager calls,
    # and a capture that reached it would make that stream depend on the capturing one
    xg = x.detach().requires_grad_()
    graph, out = capture_graph(lambda: step(xg))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out[0], expect[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], expect[1], rtol=0, atol=0)


_PDL_AUTO_SCRIPT = """
import torch
import unimixer_kernels as uk
from unimixer_kernels.triton_kernels import sinkhorn as k
from bench.timing import capture_graph

seen = []
plain = k.pdl_options
k.pdl_options = lambda device: seen.append(plain(device)["PDL"]) or plain(device)
x = torch.randn(1024, 1024, device="cuda")
g_out = torch.randn(1024, 1024, device="cuda")

def step(leaf):
    p = uk.sinkhorn(leaf, 0.05, 20, True, backend="triton")
    return p, torch.autograd.grad(p, leaf, g_out)[0]

expect = step(x.clone().requires_grad_())
assert seen == [False, False], seen
xg = x.clone().requires_grad_()
graph, out = capture_graph(lambda: step(xg))
graph.replay()
torch.cuda.synchronize()
assert seen[-1] is True, seen
assert torch.equal(out[0], expect[0]) and torch.equal(out[1], expect[1])
print("ok", seen)
"""


@pytest.mark.gpu
@pytest.mark.triton
def test_sinkhorn_pdl_auto_capture_gpu():
    # UNIMIXER_PDL=auto: plain launches eagerly; PDL launches inside a CUDA-graph capture, whose
    # kernels (a variant not launched before in this fresh process) load during the capture; the
    # one-launch-per-half-step kernels, which PDL is for (n = 1024 is resident by default)
    import os
    import subprocess
    import sys

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90 or newer")
    env = dict(os.environ, UNIMIXER_PDL="auto", UNIMIXER_SINKHORN_PERSISTENT="0")
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _PDL_AUTO_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

