"""sinkhorn on the ``cuda`` backend (csrc/sinkhorn.cu) against the fp64 reference (SPEC §2.1, §8).

Every test runs the compiled kernels, so all of them need a GPU (``-m gpu``) and the built
extension; without the build they skip, unless ``UNIMIXER_REQUIRE_CUDA_EXT=1`` makes that a failure.
Each call is checked for timed-out waits (``UNIMIXER_SINKHORN_CHECK=1``): a wait that gave up would
mean the blocks of a launch were not all resident.
"""

from __future__ import annotations

import pytest
import torch
from unimixer_kernels.triton_kernels import sinkhorn as sk_kernels

import unimixer_kernels as uk
from unimixer_kernels.ops import sinkhorn_cuda
from unimixer_kernels.testing import (
    check_against_reference,
    dominated_logits,
    held_bytes,
    lite_weights_inputs,
    random_input,
)

pytestmark = pytest.mark.gpu

TAU_ITERS = [(0.05, 20), (1.0, 1), (1.0, 20), (0.05, 1)]
# one tile (n <= 64, a cluster of one block), ragged edges in both directions, full row bands (n = 1024:
# clusters of 8 blocks of 128 x 128 on the H200), and odd sizes
SIZES = [1, 2, 37, 128, 129, 300, 777, 1000, 1024]


@pytest.fixture(autouse=True)
def _check_waits(cuda_extension, monkeypatch):
    monkeypatch.setenv("UNIMIXER_SINKHORN_CHECK", "1")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_sinkhorn_cuda_sizes(kernel_dtype, n, symmetric):
    x = random_input((n, n), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, symmetric), backend="cuda")


@pytest.mark.parametrize("tau,iters", TAU_ITERS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(3, 200, 200), (2, 2, 64, 64), (1, 1024, 1024), (4, 1, 300, 300)])
def test_sinkhorn_cuda_batches(shape, tau, iters, symmetric):
    x = random_input(shape, torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="cuda")


@pytest.mark.parametrize("tile,n", [("128x64", 300), ("128x64", 512), ("128x64", 1024), ("64x128", 300),
                                    ("64x128", 512), ("64x128", 700), ("128x128", 300), ("128x128", 512),
                                    ("128x128", 1024)])
def test_sinkhorn_cuda_every_tile(monkeypatch, tile, n):
    # 8 warps of 16 rows x 2 columns a lane (clusters of up to 16 blocks), 8 warps of 8 x 4, 16 warps of
    # 8 x 4; n = 512 and 1024 whole tiles (the kernels' instance without bounds checks), 300 and 700
    # ragged ones. Where the tile's clusters do not all fit the device at once the backend says so
    monkeypatch.setenv("UNIMIXER_SINKHORN_CUDA_TILE", tile)
    fwd, bwd = sinkhorn_cuda.cuda_ops().sinkhorn_plan(torch.empty(n, n, device="cuda"), True)
    if min(fwd, bwd) < 0:
        with pytest.raises(ValueError, match="do not all fit the device at once; use 'auto'"):
            uk.sinkhorn(torch.randn(n, n, device="cuda"), 0.05, 3, backend="cuda")
        pytest.skip(f"{tile} tiles at n = {n} do not all fit this device at once (refused, as checked)")
    x = random_input((n, n), torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, True), backend="cuda")


@pytest.mark.parametrize("layout", ["strided", "transposed"])
@pytest.mark.parametrize("n,symmetric", [(300, True), (300, False), (1100, True)])
def test_sinkhorn_cuda_noncontiguous(kernel_dtype, layout, n, symmetric):
    if layout == "transposed":
        x = random_input((2, n, n), kernel_dtype, "cuda").mT.requires_grad_(True)
    else:
        x = random_input((2, n, n), kernel_dtype, "cuda", requires_grad=True, noncontiguous=True)
    assert not x.is_contiguous()
    check_against_reference(uk.sinkhorn, (x, 0.1, 7, symmetric), backend="cuda")


@pytest.mark.parametrize("n,symmetric", [(1024, True), (1024, False), (2048, True)])
def test_sinkhorn_cuda_vector_and_element_reads_agree(n, symmetric):
    # aligned contiguous rows are read and written as 16-byte vectors; logits 4 bytes off alignment and a
    # transposed P gradient are read one element at a time. The arithmetic is the same: identical bits
    # (n = 2048: the paired kernels)
    wide = torch.randn(n, n + 4, device="cuda")
    g = torch.randn(n, n, device="cuda")
    results = []
    for x, dp in ((wide[:, 1:n + 1].contiguous(), g), (wide[:, 1:n + 1], g.mT.contiguous().mT)):
        x = x.detach().requires_grad_(True)
        p = uk.sinkhorn(x, 0.05, 5, symmetric, backend="cuda")
        results.append((p, torch.autograd.grad(p, x, dp)[0]))
    (p_vec, dx_vec), (p_elem, dx_elem) = results
    assert torch.equal(p_vec, p_elem)
    assert torch.equal(dx_vec, dx_elem)


@pytest.mark.parametrize("iters", [1, 2, 20])
@pytest.mark.parametrize("shape,symmetric",
                         [((2, 300, 300), True), ((2, 300, 300), False), ((1100, 1100), True)])
def test_sinkhorn_cuda_dominated_rows(iters, shape, symmetric):
    # the first iteration's maxima, then plain sums from normalised iterates
    x = dominated_logits(shape, "cuda")
    check_against_reference(uk.sinkhorn, (x, 0.05, iters, symmetric), backend="cuda")


@pytest.mark.parametrize("n", [1024, 2048])
def test_sinkhorn_cuda_agrees_with_triton(n):
    # the same maths as the Triton resident (n = 1024) and tiled (2048) kernels: close, not bitwise
    # (another summation order)
    x = random_input((n, n), torch.float32, "cuda")
    p_cuda = uk.sinkhorn(x, 0.05, 20, True, backend="cuda")
    p_triton = uk.sinkhorn(x, 0.05, 20, True, backend="triton")
    torch.testing.assert_close(p_cuda, p_triton, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n", [1024, 4096])
def test_sinkhorn_cuda_saves_only_potentials(n):
    k = 20
    x = random_input((n, n), torch.float32, "cuda", requires_grad=True)
    held = held_bytes(lambda: uk.sinkhorn(x, 0.05, k, backend="cuda"))
    assert held <= 4 * 2 * k * n + (1 << 20)  # the potentials, and the allocator's rounding


@pytest.mark.parametrize("n", [1000, 2000])
def test_sinkhorn_cuda_deterministic(n):
    x = random_input((n, n), torch.float32, "cuda", requires_grad=True)
    g = torch.randn(n, n, device="cuda")
    runs = []
    for _ in range(2):
        p = uk.sinkhorn(x, 0.05, 20, True, backend="cuda")
        (dx,) = torch.autograd.grad(p, x, g)
        runs.append((p, dx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("n", [1024, 4096])
def test_sinkhorn_cuda_cuda_graph(monkeypatch, n):
    from bench.timing import capture_graph

    x = random_input((n, n), torch.float32, "cuda")
    g = torch.randn(n, n, device="cuda")

    def step(leaf):
        p = uk.sinkhorn(leaf, 0.05, 20, True, backend="cuda")
        return p, torch.autograd.grad(p, leaf, g)[0]

    expect = step(x.clone().requires_grad_())
    # the check synchronises, which a capture cannot: it ran above
    monkeypatch.delenv("UNIMIXER_SINKHORN_CHECK")
    leaf = x.clone().requires_grad_()  # a leaf of its own: its gradient's stream is the capture's
    graph, out = capture_graph(lambda: step(leaf))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[0], expect[0]) and torch.equal(out[1], expect[1])


def test_sinkhorn_cuda_empty_batch():
    x = torch.randn(0, 300, 300, device="cuda", requires_grad=True)
    p = uk.sinkhorn(x, 0.05, 5, backend="cuda")
    assert p.shape == x.shape
    (dx,) = torch.autograd.grad(p.sum(), x)
    assert dx.shape == x.shape


def test_sinkhorn_cuda_refuses_too_many_matrices():
    # two matrices of 1024: 128 tiles of 128 x 128, more than the backend keeps resident
    x = torch.randn(2, 1024, 1024, device="cuda")
    with pytest.raises(ValueError, match=r"at most 64 tiles; 2 matrices of n = 1024 have 128.*'triton'"):
        uk.sinkhorn(x, 0.05, 3, backend="cuda")
    uk.sinkhorn(x[:1], 0.05, 3, backend="cuda")  # one is within the bound


def test_sinkhorn_cuda_auto_plan():
    ops = sinkhorn_cuda.cuda_ops()
    # n = 300: 128 x 64 tiles fit (3 clusters of 5); n = 1024: on the H200 neither 128 x 64 (8 clusters of
    # 16) nor 64 x 128 (16 of 8), but 128 x 128 (8 of 8; the Python side's bound keeps it within reach)
    assert ops.sinkhorn_plan(torch.empty(300, 300, device="cuda"), True) == [0, 0]
    assert min(ops.sinkhorn_plan(torch.empty(1024, 1024, device="cuda"), True)) >= 0


def test_sinkhorn_cuda_tile_switch_checked(monkeypatch):
    monkeypatch.setenv("UNIMIXER_SINKHORN_CUDA_TILE", "64x64")
    with pytest.raises(ValueError, match=r"UNIMIXER_SINKHORN_CUDA_TILE: expected one of .*got '64x64'"):
        uk.sinkhorn(torch.randn(64, 64, device="cuda"), 0.05, 3, backend="cuda")


@pytest.mark.parametrize("shape,symmetric",
                         [((2, 150, 150), True), ((2, 150, 150), False), ((1100, 1100), True)])
def test_sinkhorn_cuda_opcheck(shape, symmetric):
    ops = sinkhorn_cuda.cuda_ops()
    x = random_input(shape, torch.float32, "cuda", requires_grad=True)
    torch.library.opcheck(ops.sinkhorn_fwd, (x, 0.5, 3, symmetric))
    p, u, v = ops.sinkhorn_fwd(x.detach(), 0.5, 3, symmetric)
    dp = torch.randn_like(p)
    torch.library.opcheck(ops.sinkhorn_bwd, (dp, x.detach(), u, v, 0.5, 3, symmetric))
    torch.library.opcheck(ops.sinkhorn_bwd_, (dp, x.detach().clone(), u, v, 0.5, 3, symmetric))


# sinkhorn_bwd_ writes the gradient over the logits: in place for contiguous symmetric n > 1024 (the paired
# kernels), through a temporary in the clusters' regime and for a strided view
@pytest.mark.parametrize("shape,symmetric,layout,dtype", [
    ((300, 300), True, "contiguous", torch.float32), ((2, 300, 300), False, "contiguous", torch.float32),
    ((1100, 1100), True, "contiguous", torch.float32), ((2, 1300, 1300), True, "contiguous", torch.float32),
    ((1100, 1100), True, "contiguous", torch.bfloat16), ((1100, 1100), True, "transposed", torch.float32),
    ((1, 1030, 1030), True, "offset", torch.float32)])
def test_sinkhorn_cuda_bwd_in_place_equals_bwd(shape, symmetric, layout, dtype):
    ops = sinkhorn_cuda.cuda_ops()
    x = random_input(shape, dtype, "cuda")
    if layout == "transposed":
        x = x.mT
    elif layout == "offset":  # contiguous, but 4 bytes past an aligned address: the stores one at a time
        x = torch.cat([torch.zeros(1, device="cuda", dtype=dtype), x.flatten()])[1:].view(shape)
    _, u, v = ops.sinkhorn_fwd(x, 0.05, 20, symmetric)
    dp = torch.randn(shape, device="cuda")
    expect = ops.sinkhorn_bwd(dp, x, u, v, 0.05, 20, symmetric)
    buf = x.clone() if layout == "contiguous" else x
    ptr = buf.data_ptr()
    ops.sinkhorn_bwd_(dp, buf, u, v, 0.05, 20, symmetric)
    assert buf.data_ptr() == ptr
    assert torch.equal(buf, expect)


def test_sinkhorn_cuda_bwd_in_place_refuses_an_aliased_gradient():
    ops = sinkhorn_cuda.cuda_ops()
    x = torch.randn(1100, 1100, device="cuda")
    _, u, v = ops.sinkhorn_fwd(x, 0.05, 3, True)
    match = r"logits: sinkhorn_bwd_ writes the gradient over the logits.*clone"
    with pytest.raises(RuntimeError, match=match):
        ops.sinkhorn_bwd_(x, x, u, v, 0.05, 3, True)


def test_sinkhorn_cuda_compile_fullgraph():
    uk.sinkhorn(torch.randn(8, 8, device="cuda"), backend="cuda")  # loaded before tracing (the docstring)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: uk.sinkhorn(t, 0.3, 4, True, backend="cuda"), fullgraph=True)
    x = random_input((3, 200, 200), torch.float32, "cuda", requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out = fn(x)
    expect = uk.sinkhorn(x2, 0.3, 4, True, backend="cuda")
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    g = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, g)
    (ex,) = torch.autograd.grad(expect, x2, g)
    torch.testing.assert_close(dx, ex, rtol=0, atol=0)


def test_sinkhorn_cuda_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 1024), batch=st.integers(1, 4),
                      iters=st.integers(1, 20), tau=st.sampled_from([0.05, 0.3, 1.0]),
                      symmetric=st.booleans(),
                      dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    def check(seed, n, batch, iters, tau, symmetric, dtype):
        torch.manual_seed(seed)  # fresh inputs per example, reproducible from the example
        batch = min(batch, sinkhorn_cuda.MAX_BLOCKS // ((n + 127) // 128) ** 2)
        x = random_input((batch, n, n), dtype, "cuda", requires_grad=True)
        check_against_reference(uk.sinkhorn, (x, tau, iters, symmetric), backend="cuda")

    check()


# --- symmetric logits above n = 1024: mirrored 64 x 64 tiles kept once (csrc/sinkhorn_paired.cu) ------

# just above the cluster path, ragged last bands (1100: 18 bands, the last of 12 rows; 2000), whole bands
# (1536, 2048), and the benchmark's n = 4096 (2080 pairs of tiles: 16 per block, 4 of them streamed)
PAIRED_SIZES = [1025, 1100, 1536, 2000, 2048, 4096]


@pytest.mark.parametrize("n", PAIRED_SIZES)
def test_sinkhorn_cuda_paired_sizes(kernel_dtype, n):
    x = random_input((n, n), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, 0.05, 20, True), backend="cuda")


@pytest.mark.parametrize("tau,iters", TAU_ITERS + [(0.2, 2), (0.1, 3)])
@pytest.mark.parametrize("shape", [(1100, 1100), (2, 1300, 1300), (3, 1, 1030, 1030)])
def test_sinkhorn_cuda_paired_batches(shape, tau, iters):
    x = random_input(shape, torch.float32, "cuda", requires_grad=True)
    check_against_reference(uk.sinkhorn, (x, tau, iters, True), backend="cuda")


def test_sinkhorn_cuda_paired_refusals():
    with pytest.raises(ValueError, match=r"symmetric logits of n <= 5120.*symmetric=False.*'triton'"):
        uk.sinkhorn(torch.randn(1100, 1100, device="cuda"), 0.05, 3, False, backend="cuda")
    with pytest.raises(ValueError, match=r"n <= 1024.*got n = 5184.*'triton'"):
        uk.sinkhorn(torch.randn(5184, 5184, device="cuda"), 0.05, 1, True, backend="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    batch = sinkhorn_cuda.PAIRED_UNITS_PER_SM * sms // sinkhorn_cuda.paired_units(4096, 1) + 1
    x = torch.randn(batch, 4096, 4096, device="cuda")
    with pytest.raises(ValueError, match=rf"{batch} matrices of n = 4096 have .* pairs.*'triton'"):
        uk.sinkhorn(x, 0.05, 1, True, backend="cuda")


def test_sinkhorn_cuda_paired_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    @hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
    @hypothesis.given(seed=st.integers(0, 2**31 - 1), n=st.integers(1025, 4096), batch=st.integers(1, 3),
                      iters=st.integers(1, 20), tau=st.sampled_from([0.05, 0.3, 1.0]),
                      dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    def check(seed, n, batch, iters, tau, dtype):
        torch.manual_seed(seed)
        # within the residency rules: 16 pairs of tiles per SM, 32 rows reduced per block
        batch = max(1, min(batch, sinkhorn_cuda.PAIRED_UNITS_PER_SM * sms // sinkhorn_cuda.paired_units(n, 1),
                           sinkhorn_cuda.PAIRED_ROWS_PER_BLOCK * sms // n))
        x = random_input((batch, n, n), dtype, "cuda", requires_grad=True)
        check_against_reference(uk.sinkhorn, (x, tau, iters, True), backend="cuda")

    check()


@pytest.mark.parametrize("shape,symmetric,chosen", [
    ((1024, 1024), True, "cuda"), ((3, 300, 300), False, "cuda"), ((4096, 4096), True, "cuda"),
    ((2048, 2048), False, "reference"),  # non-symmetric above n = 1024: the kernels refuse it
    ((65, 128, 128), True, "reference"),  # more than 64 resident tiles
])
def test_sinkhorn_auto_takes_the_cuda_backend_where_it_accepts_the_call(monkeypatch, shape, symmetric,
                                                                        chosen):
    monkeypatch.delenv("UNIMIXER_BACKEND", raising=False)
    x = random_input(shape, torch.float32, "cuda", requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out = uk.sinkhorn(x, 0.05, 4, symmetric)
    expect = uk.sinkhorn(x2, 0.05, 4, symmetric, backend=chosen)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expect, x2, g)[0],
                               rtol=0, atol=0)


def test_sinkhorn_auto_float64_takes_the_reference():
    x = random_input((64, 64), torch.float64, "cuda")
    expect = uk.sinkhorn(x, 0.5, 3, backend="reference")
    torch.testing.assert_close(uk.sinkhorn(x, 0.5, 3, backend="auto"), expect, rtol=0, atol=0)


def test_sinkhorn_auto_compiles_in_a_fresh_process():
    # nothing loads the library before tracing: the backend's selection must load it and register the
    # fakes (`_cuda_ext.on_load`), or the traced call would have no fake
    import os
    import subprocess
    import sys

    code = (
        "import torch, unimixer_kernels as uk\n"
        "x = torch.randn(512, 512, device='cuda', requires_grad=True)\n"
        "x2 = x.detach().clone().requires_grad_()\n"
        "out = torch.compile(lambda t: uk.sinkhorn(t, 0.3, 4, True), fullgraph=True)(x)\n"
        "expect = uk.sinkhorn(x2, 0.3, 4, True, backend='cuda')\n"
        "torch.testing.assert_close(out, expect, rtol=0, atol=0)\n"
        "g = torch.randn_like(out)\n"
        "torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expect, x2, g)[0],"
        " rtol=0, atol=0)\n"
        "print('compiled auto ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "UNIMIXER_BACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and "compiled auto ok" in done.stdout, done.stdout + done.stderr


def _block_on_spec(monkeypatch, op_name: str, spec: str, base: str = "triton", device: str = "cuda",
                   **kw) -> list[tuple[str, tuple[int, ...]]]:
    """A UniMixer block's training step on ``spec`` against the same block on ``base``, by the module
    tests' rule; returns which of ``op_name``'s backends took each call (and the first argument's shape)."""
    from unimixer_kernels import nn as uknn

    op, seen = uk.OPS[op_name], []
    for name in {b for b in (base, *spec.split("=")[-1].split("/")) if b in op.impls}:
        impl = op.impls[name]
        monkeypatch.setitem(op.impls, name, lambda x, *rest, name=name, impl=impl:
                            seen.append((name, tuple(x.shape))) or impl(x, *rest))
    torch.manual_seed(0)
    kw = dict(hidden=24, bias=False, iters=20, **kw)
    plain = uknn.UniMixerBlock(8, 36, 4, backend=base, **kw).to(device)
    mixed = uknn.UniMixerBlock(8, 36, 4, backend=spec, **kw).to(device)
    mixed.load_state_dict(plain.state_dict())
    x = torch.randn(64, 8, 36, device=device)
    outs, grads = [], []
    for m in (plain, mixed):
        xi = x.clone().requires_grad_()
        out = torch.cat(m(xi), -1)
        out.backward(torch.ones_like(out) / out.numel() ** 0.5)
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    scale = outs[0].abs().max().item()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4 * scale)
    for k, (g_plain, g_mixed) in enumerate(zip(*grads)):
        assert g_mixed is not None and torch.isfinite(g_mixed).all(), k
        torch.testing.assert_close(g_mixed, g_plain, rtol=1e-3, atol=1e-4 * g_plain.abs().max().item() + 1e-7)
    return seen


def test_a_block_runs_its_sinkhorn_on_cuda_and_the_rest_on_triton(monkeypatch):
    # backend="triton+sinkhorn=cuda/triton": the global weight (one 72 x 72 matrix) on the cuda kernels,
    # the local weights (72 matrices of 4 x 4: more than 64 resident tiles, which cuda declines) on
    # Triton, every other op on Triton; the step equals the all-Triton block's. Which backend takes which
    # matrix, in either order (on their side streams W_G's Sinkhorn is queued first)
    seen = _block_on_spec(monkeypatch, "sinkhorn", "triton+sinkhorn=cuda/triton")
    assert sorted(seen) == sorted([("triton", (72, 4, 4)), ("triton", (72, 72)), ("triton", (72, 4, 4)),
                                   ("cuda", (72, 72))])


def test_a_lite_block_runs_its_global_weight_on_cuda_and_the_rest_on_triton(monkeypatch):
    # backend="triton+lite_global_weights=cuda/triton": SK(A_G @ B_G) (one 72 x 72 matrix) with its logits
    # formed by torch and the cuda Sinkhorn on them; the local weights and every other op on Triton; the
    # step equals the all-Triton block's (matrix-free global weight)
    seen = _block_on_spec(monkeypatch, "lite_global_weights", "triton+lite_global_weights=cuda/triton",
                          lite=True, rank=8)
    assert seen == [("triton", (72, 8)), ("cuda", (72, 8))]


# the Lite global weight on the cuda kernels: the logits of A_G @ B_G in each of the kernels' regimes (one
# cluster; row bands; the paired kernels, symmetric only)
LITE_GLOBAL = [(300, 16, True), (1000, 128, False), (1024, 128, True), (4096, 256, True)]


@pytest.mark.parametrize("n,r,symmetric", LITE_GLOBAL)
def test_lite_global_weights_cuda(kernel_dtype, n, r, symmetric):
    a_g, b_g = lite_weights_inputs(n, 2, 2, r, kernel_dtype, "cuda")[2:]
    check_against_reference(uk.lite_global_weights, (a_g, b_g, 0.05, 20, symmetric), backend="cuda")


@pytest.mark.parametrize("n,r,symmetric", LITE_GLOBAL)
def test_lite_global_weights_cuda_equals_its_logits_on_the_cuda_sinkhorn(n, r, symmetric):
    # the logits by the Triton backend's GEMM for them (split GEMM by default), formed again by the
    # backward rather than saved: output and gradients equal, bit for bit, those logits on the cuda
    # Sinkhorn under autograd, then dL's two GEMMs: the split GEMM up to SAVED_LOGITS_MAX_N (the forward's
    # logits saved), IEEE fp32 cuBLAS above
    from unimixer_kernels.ops import sinkhorn_cuda

    a_g, b_g = lite_weights_inputs(n, 2, 2, r, torch.float32, "cuda")[2:]
    out = uk.lite_global_weights(a_g, b_g, 0.05, 20, symmetric, backend="cuda")
    logits = sk_kernels.lowrank_logits(a_g.detach(), b_g.detach())[0].requires_grad_()
    expect = uk.sinkhorn(logits, 0.05, 20, symmetric, backend="cuda")
    assert torch.equal(out, expect)
    g = torch.randn_like(out)
    (dl,) = torch.autograd.grad(expect, logits, g)
    mode = "split" if n <= sinkhorn_cuda.SAVED_LOGITS_MAX_N else "cublas"
    da, db = sk_kernels.Fp32Products(mode)((dl, b_g.detach().t()), (a_g.detach().t(), dl))
    for got, want in zip(torch.autograd.grad(out, (a_g, b_g), g), (da, db)):
        assert torch.equal(got, want)
    # and the logits are A_G @ B_G to fp32's accuracy: no further from fp64's than cuBLAS's IEEE fp32
    a, b = a_g.detach(), b_g.detach()
    exact = a.double() @ b.double()
    ieee = sk_kernels.Fp32Products("cublas")((a, b))[0]
    err, err_ieee = ((t.double() - exact).abs().max().item() for t in (logits.detach(), ieee))
    assert err <= 2 * err_ieee + 1e-12, (err, err_ieee)


@pytest.mark.parametrize("n,r", [(1024, 128), (4096, 256)])
def test_lite_global_weights_cuda_saves_logits_only_where_small(n, r):
    # up to SAVED_LOGITS_MAX_N the fp32 logits and the factors' bf16 parts (5.5 MiB at n = 1024), above
    # only the potentials (A_G, B_G are the caller's)
    k = 20
    a_g, b_g = lite_weights_inputs(n, 2, 2, r, torch.float32, "cuda")[2:]
    held = held_bytes(lambda: uk.lite_global_weights(a_g, b_g, 0.05, k, True, backend="cuda"))
    small = 4 * n * n + 2 * 3 * n * r * 2 if n <= sinkhorn_cuda.SAVED_LOGITS_MAX_N else 0
    assert small <= held <= 4 * 2 * k * n + small + (1 << 20), (held, small)


@pytest.mark.parametrize("n,r", [(300, 16), (1100, 16)], ids=["logits-saved", "logits-formed-again"])
def test_lite_global_weights_cuda_opcheck(n, r):
    a_g, b_g = lite_weights_inputs(n, 2, 2, r, torch.float32, "cuda")[2:]
    torch.library.opcheck(sinkhorn_cuda.lite_global_cuda_fwd, (a_g, b_g, 0.5, 3, True))
    w, u, v, logits, pa, pb = sinkhorn_cuda.lite_global_cuda_fwd(a_g.detach(), b_g.detach(), 0.5, 3, True)
    assert logits.numel() == (n * n if n <= sinkhorn_cuda.SAVED_LOGITS_MAX_N else 0)
    args = (torch.randn_like(w), a_g.detach(), b_g.detach(), u, v, logits, pa, pb, 0.5, 3, True)
    torch.library.opcheck(sinkhorn_cuda.lite_global_cuda_bwd, args)


def test_lite_global_weights_cuda_refuses_what_its_kernels_cannot_take():
    a_g, b_g = torch.randn(1025, 8, device="cuda"), torch.randn(8, 1025, device="cuda")
    with pytest.raises(ValueError, match=r"a_g, b_g: the logits A_G @ B_G \[1025, 1025\]"):
        uk.lite_global_weights(a_g, b_g, 0.05, 2, False, backend="cuda")
    # in a list, the next backend takes the call
    listed = uk.lite_global_weights(a_g, b_g, 0.05, 2, False, backend="auto+lite_global_weights=cuda/triton")
    expect = uk.lite_global_weights(a_g, b_g, 0.05, 2, False, backend="triton")
    torch.testing.assert_close(listed, expect, rtol=0, atol=0)


@pytest.mark.parametrize("n,r,symmetric,chosen", [
    (72, 8, True, "cuda"), (1000, 128, False, "cuda"), (4096, 256, True, "cuda"),
    (1025, 8, False, "reference"),  # non-symmetric above n = 1024: the kernels refuse it
])
def test_lite_global_weights_auto_takes_the_cuda_backend_where_it_accepts_the_call(
        monkeypatch, n, r, symmetric, chosen):
    monkeypatch.delenv("UNIMIXER_BACKEND", raising=False)
    a_g, b_g = lite_weights_inputs(n, 2, 2, r, torch.float32, "cuda")[2:]
    twins = [t.detach().clone().requires_grad_() for t in (a_g, b_g)]
    out = uk.lite_global_weights(a_g, b_g, 0.05, 4, symmetric)
    expect = uk.lite_global_weights(*twins, 0.05, 4, symmetric, backend=chosen)
    torch.testing.assert_close(out, expect, rtol=0, atol=0)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (a_g, b_g), g), torch.autograd.grad(expect, twins, g)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("lite,spec", [(False, "triton+sinkhorn=cuda/triton"),
                                       (True, "triton+lite_global_weights=cuda/triton")])
def test_a_block_with_a_per_op_spec_compiles_without_graph_breaks(lite, spec):
    # torch.compile(fullgraph=True) of the block on a per-op spec: the per-call choice (cuda where its
    # kernels take the call) is made at trace time; outputs and gradients equal eager's
    from unimixer_kernels import nn as uknn

    torch.manual_seed(0)
    blk = uknn.UniMixerBlock(8, 36, 4, hidden=24, bias=False, iters=20, backend=spec,
                             **(dict(lite=True, rank=8) if lite else {})).cuda()
    x = torch.randn(64, 8, 36, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(blk, fullgraph=True)
    results = []
    for fn in (blk, compiled):
        xi = x.clone().requires_grad_()
        out = torch.cat(fn(xi), -1)
        grads = torch.autograd.grad(out, [xi, *blk.parameters()], torch.ones_like(out) / out.numel() ** 0.5)
        results.append((out.detach(), grads))
    (out_e, g_e), (out_c, g_c) = results
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4 * out_e.abs().max().item())
    for k, (a, b) in enumerate(zip(g_c, g_e)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item() + 1e-7, msg=str(k))
