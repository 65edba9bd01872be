"""pswiglu: the Triton kernels against the fp64 reference (SPEC §4, §8), forward and every gradient."""

import math

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.pswiglu import pswiglu_bwd, pswiglu_fwd
from unimixer_kernels.testing import check_against_reference, random_input

# (bs, T, D, h): h and D not powers of two, bs = 1, a single token
SHAPES = [(1, 1, 8, 8), (3, 2, 24, 20), (5, 3, 16, 40)]


def _weights(t, d, h, dtype, device, bias):
    wg = random_input((t, d, h), dtype, device, requires_grad=True, scale=1 / math.sqrt(d))
    wu = random_input((t, d, h), dtype, device, requires_grad=True, scale=1 / math.sqrt(d))
    wd = random_input((t, h, d), dtype, device, requires_grad=True, scale=1 / math.sqrt(h))
    if not bias:
        return [wg, wu, wd, None, None, None]
    bg = random_input((t, h), dtype, device, requires_grad=True)
    bu = random_input((t, h), dtype, device, requires_grad=True)
    bd = random_input((t, d), dtype, device, requires_grad=True)
    return [wg, wu, wd, bg, bu, bd]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pswiglu_triton(device, kernel_dtype, shape, bias, recompute):
    bs, t, d, h = shape
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, device, bias)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.triton
@pytest.mark.parametrize("layout", ["strided", "token_major"])
def test_pswiglu_triton_noncontiguous(device, kernel_dtype, layout):
    bs, t, d, h = 4, 3, 24, 20
    if layout == "strided":
        u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    else:  # a [T, bs, D] buffer seen as [bs, T, D]: read in place through strides
        u = random_input((t, bs, d), kernel_dtype, device).transpose(0, 1).requires_grad_()
    assert not u.is_contiguous()
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, device, True)),
                            backend="triton")


@pytest.mark.triton
def test_pswiglu_triton_some_biases(device):
    bs, t, d, h = 3, 2, 16, 24
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    wg, wu, wd, bg, bu, bd = _weights(t, d, h, torch.float32, device, True)
    check_against_reference(uk.pswiglu, (u, wg, wu, wd, None, bu, None), backend="triton")
    check_against_reference(uk.pswiglu, (u, wg, wu, wd, bg, None, bd), backend="triton",
                            kwargs={"recompute": False})


@pytest.mark.triton
def test_pswiglu_triton_mixed_dtypes(device):
    """fp16 activations with fp32 weights: computed in fp32, output fp16."""
    bs, t, d, h = 3, 2, 16, 20
    u = random_input((bs, t, d), torch.float16, device, requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, torch.float32, device, True)),
                            backend="triton")


@pytest.mark.triton
def test_pswiglu_triton_stride0_grad_and_modes_agree(device):
    bs, t, d, h = 4, 2, 16, 20
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    ws = _weights(t, d, h, torch.float32, device, True)
    g = torch.randn(d, device=device).expand(bs, t, d)  # stride-0 grad_output
    diff = [u, *ws]
    res = {}
    for recompute in (True, False):
        o = uk.pswiglu(u, *ws, recompute=recompute, backend="triton")
        res[recompute] = (o, *torch.autograd.grad(o, diff, g))
    ur = [x.detach().double().requires_grad_() for x in diff]
    o_ref = uk.pswiglu(*ur, backend="reference")
    expect = (o_ref, *torch.autograd.grad(o_ref, ur, g.double()))
    for recompute in (True, False):
        for a, e in zip(res[recompute], expect):
            torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("path", ["fused", "wide-triton", "wide-cublas"])
def test_pswiglu_triton_deterministic(device, monkeypatch, path):
    """The same bits twice: the fused path (fp32), and the wide-token path (fp16: the activation
    pass's bias partials, the GEMMs over the samples) with the project's GEMM and with ``torch.bmm``
    (cuBLAS on CUDA)."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    if path == "fused":
        (bs, t, d, h), dtype = (6, 2, 16, 20), torch.float32
    else:
        (bs, t, d, h), dtype = (37, 3, 24, 40), torch.float16
        monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
        monkeypatch.setenv("UNIMIXER_FFN_GEMM", path.removeprefix("wide-"))
    u = random_input((bs, t, d), dtype, device, requires_grad=True)
    ws = _weights(t, d, h, dtype, device, True)
    g = random_input((bs, t, d), dtype, device)
    runs = [torch.autograd.grad(uk.pswiglu(u, *ws, backend="triton"), [u, *ws], g) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.triton
@pytest.mark.parametrize("save", [False, True])
def test_pswiglu_opcheck(device, save):
    bs, t, d, h = 2, 2, 16, 16
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    wg, wu, wd, bg, bu, bd = _weights(t, d, h, torch.float32, device, True)
    torch.library.opcheck(pswiglu_fwd, (u, wg, wu, wd, bg, bu, bd, save))
    torch.library.opcheck(pswiglu_fwd, (u, wg, wu, wd, None, None, None, save))
    do = torch.randn(bs, t, d, device=device)
    g = torch.randn(t, bs, h, device=device) if save else None
    v = torch.randn(t, bs, h, device=device) if save else None
    args = (do, u.detach(), wg.detach(), wu.detach(), wd.detach(), bg.detach(), None, bd.detach(), g, v)
    torch.library.opcheck(pswiglu_bwd, args)


def test_pswiglu_bad_input():
    u = torch.randn(2, 3, 8)
    wg, wu, wd = torch.randn(3, 8, 4), torch.randn(3, 8, 4), torch.randn(3, 4, 8)
    with pytest.raises(TypeError, match="recompute"):
        uk.pswiglu(u, wg, wu, wd, recompute="yes")
    with pytest.raises(ValueError, match="w_down"):
        uk.pswiglu(u, wg, wu, torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="b_down"):
        uk.pswiglu(u, wg, wu, wd, b_down=torch.randn(3, 4))
    with pytest.raises(ValueError, match="u"):
        uk.pswiglu(u[0], wg, wu, wd)
    with pytest.raises(TypeError, match="u"):
        uk.pswiglu(u.long(), wg, wu, wd)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("backward", ["buffers", "recompute"])
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("preset", [(32, 128, 176), (16, 96, 128)], ids=["paper-small", "lite-2.5m"])
def test_pswiglu_presets_gpu(monkeypatch, kernel_dtype, recompute, preset, backward):
    """SPEC §10 paper-small (T=32, D=128, h=176) and lite-2.5m (T=16, D=96, h=128), with a
    smaller batch for the fp64 reference; both backward strategies of the fused path."""
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", backward)
    t, d, h = preset
    bs = 256
    u = random_input((bs, t, d), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, "cuda", True)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.gpu
@pytest.mark.triton
def test_pswiglu_paper_100m_gpu(kernel_dtype):
    """SPEC §10 paper-100m widths (D=512, h=688), small batch."""
    bs, t, d, h = 64, 4, 512, 688
    u = random_input((bs, t, d), kernel_dtype, "cuda", requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, "cuda", True)),
                            backend="triton")


def _tensor_core_tiles() -> list:
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    return [c for c in kernels._gemm_configs() if c.kwargs["BLOCK_K"] != 16]


def _check_ffn(op: str, u, dtype, device, h: int, **kwargs) -> None:
    """``op`` (``"pswiglu"`` or ``"pgelu_ffn"``) on ``u`` with fresh biased weights of width ``h``,
    against the reference (forward and every gradient)."""
    _, t, d = u.shape
    wg, wu, wd, bg, bu, bd = _weights(t, d, h, dtype, device, True)
    if op == "pswiglu":
        check_against_reference(uk.pswiglu, (u, wg, wu, wd, bg, bu, bd), backend="triton", kwargs=kwargs)
    else:
        check_against_reference(uk.pgelu_ffn, (u, wg, bg, wd, bd), backend="triton", kwargs=kwargs)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("tile", range(7))
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
def test_ffn_token_gemm_every_tile_gpu(tile, op, monkeypatch):
    """Each 16-bit tile of the wide-token GEMM (pointer loads), forced in turn, in every GEMM it
    runs (the hidden pre-activations, down, dA, du with its two products where it fits them, the
    weight gradients): the autotuner picks tiles only at large shapes, which the fp64-checked
    tests do not reach."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    tiles = _tensor_core_tiles()
    if tile >= len(tiles):
        pytest.skip(f"only {len(tiles)} tensor-core tiles")
    kernel = kernels.ffn_token_gemm_kernel
    dual_tiles = kernels._prune_gemm(tiles, dict(M_KEY=2048, N=4096, K_KEY=1024), DUAL=True, CDT=tl.bfloat16)
    single_only = tiles[tile] not in dual_tiles
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "triton")  # 16-bit operands on CUDA would take cuBLAS
    monkeypatch.setenv("UNIMIXER_FFN_TMA", "0")
    monkeypatch.setattr(kernel, "cache", {})
    monkeypatch.setattr(kernel, "early_config_prune",
                        lambda configs, named_args, **kw: [tiles[tile]] if (
                            not single_only or not kw["DUAL"]) else [tiles[0]])
    bs, t, d, h = 130, 2, 320, 200  # D > FUSED_MAX_D: the tiled path; edges in every dimension
    u = random_input((bs, t, d), torch.bfloat16, "cuda", requires_grad=True)
    _check_ffn(op, u, torch.bfloat16, "cuda", h)


def _force_tma(monkeypatch, kernels, persistent: bool) -> None:
    """Every GEMM of the wide-token path through tensor descriptors, launched persistent (three
    programs, so that each walks several tiles; two stages where two products would not fit three)
    or one program per tile."""
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "triton")  # 16-bit operands on CUDA would take cuBLAS
    monkeypatch.setattr(kernels, "_use_tma", lambda m, n, k, dual: True)
    monkeypatch.setattr(kernels, "sm_count", lambda device: 3)
    for dual, (bm, bn, bk, warps, stages, _) in list(kernels._TMA_LAUNCH.items()):
        stages = min(stages, 2) if dual and persistent else stages
        monkeypatch.setitem(kernels._TMA_LAUNCH, dual, (bm, bn, bk, warps, stages, persistent))


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "tile-per-program"])
def test_ffn_tma_path_gpu(op, recompute, persistent, monkeypatch):
    """Every GEMM of the wide-token path through TMA descriptors (forced), bf16, with the GPU's tile:
    edges clipped in M, N and K (130 samples, h = 200); persistent launches with three programs, so
    that each walks several tiles; one token per pass (descriptors inside the tensors) and the bias
    partials over three sample blocks."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    _force_tma(monkeypatch, kernels, persistent)
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "1")  # descriptors over token slices
    monkeypatch.setattr(kernels, "ACT_ROWS", 64)  # the bias partials over three sample blocks
    bs, t, d, h = 130, 2, 320, 200
    u = random_input((bs, t, d), torch.bfloat16, "cuda", requires_grad=True)
    _check_ffn(op, u, torch.bfloat16, "cuda", h, recompute=recompute)


@pytest.mark.triton
def test_pswiglu_weight_grad_split_matches_single_pass(device):
    """The weight gradients reduced over sample ranges (fp32 partials) equal the one-range ones."""
    from unimixer_kernels.triton_kernels.pswiglu import ffn_bwd

    bs, t, d, h = 40, 2, 16, 24
    u = random_input((bs, t, d), torch.float32, device)
    wg, wu, wd, bg, bu, _ = (x.detach() if x is not None else None
                             for x in _weights(t, d, h, torch.float32, device, True))
    do = torch.randn(bs, t, d, device=device)
    one = ffn_bwd(do, u, wg, wu, wd, bg, bu, None, None, n_split=1)
    three = ffn_bwd(do, u, wg, wu, wd, bg, bu, None, None, n_split=3)
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# the fused path's weight kernel with several sample ranges a token: bs = 36 in sample tiles of 16
# (the interpreter's) makes ranges of 16, 16 and 4 samples at n_split = 3, and at 5 two empty ones
# too; D = 72, h = 80 give two d tiles and two h tiles (buffers) or three h tiles (recompute), so
# that the bias gradients' owners (the first program column or row) are not every program
SPLIT_SHAPE = (36, 3, 72, 80)


def _force_splits(monkeypatch, kernels, n_split: int) -> list:
    """Every launch of the fused path's weight kernel with ``n_split`` sample ranges a token; the list
    returned collects the tiles of each launch."""
    launches = []
    monkeypatch.setattr(kernels, "_num_splits", lambda bs, tiles, device: launches.append(tiles) or n_split)
    return launches


@pytest.mark.triton
@pytest.mark.parametrize("backward", ["buffers", "recompute"])
@pytest.mark.parametrize("n_split", [1, 2, 3, 5])
def test_pswiglu_fused_weight_grads_every_split(device, kernel_dtype, monkeypatch, backward, n_split):
    """The weight and bias gradients (in the weights' and biases' dtypes) with one sample range a
    token and with several (fp32 partials summed by ``sum_partials``), 5 not dividing the batch:
    against the fp64 reference, every output NaN-poisoned first, in token passes of two and one
    tokens."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", backward)
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")
    launches = _force_splits(monkeypatch, kernels, n_split)
    bs, t, d, h = SPLIT_SHAPE
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, device, True)), backend="triton")
    assert len(launches) == 2  # the fused path, in two passes


@pytest.mark.triton
@pytest.mark.parametrize("backward", ["buffers", "recompute"])
def test_pswiglu_fused_weight_grads_repeat_bit_for_bit(device, backward, monkeypatch):
    """Two backwards with three sample ranges a token give the same bits (fp16 weights, fp32 biases:
    the gradients cast to both): the partials' sums do not depend on the programs' order."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", backward)
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")
    bs, t, d, h = SPLIT_SHAPE
    u = random_input((bs, t, d), torch.float16, device)
    w1, w3, w2, b1, b3, _ = (x.detach() for x in _weights(t, d, h, torch.float16, device, True))
    do = random_input((bs, t, d), torch.float16, device)
    f32 = (torch.float32,) * 3
    runs = [kernels.ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None, n_split=3, bias_dtypes=f32)
            for _ in range(2)]
    for k, (a, b) in enumerate(zip(*runs)):  # (du, dw1, dw3, dw2, db1, db3, db2)
        assert a.dtype == (torch.float16 if k < 4 else torch.float32), k
        assert torch.equal(a, b), f"gradient {k} differs between two backwards"


@pytest.fixture
def recompute_backward(monkeypatch):
    """The fused path's weight-gradient kernel forms A, dG, dV itself (no [T, bs, h] buffers)."""
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", "recompute")


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES + [(33, 2, 40, 50)])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pswiglu_triton_recomputing_backward(device, kernel_dtype, recompute_backward, shape, bias,
                                             recompute):
    bs, t, d, h = shape
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, device, bias)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.triton
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_pgelu_ffn_triton_recomputing_backward(device, kernel_dtype, recompute_backward, bias):
    bs, t, d, h = 9, 3, 24, 36
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True)
    w1, _, w2, b1, _, b2 = _weights(t, d, h, kernel_dtype, device, bias)
    check_against_reference(uk.pgelu_ffn, (u, w1, b1, w2, b2), backend="triton")


@pytest.mark.triton
def test_pswiglu_recomputing_backward_matches_buffers(device, monkeypatch):
    """Both backward strategies, and one or three sample ranges, give the same gradients."""
    from unimixer_kernels.triton_kernels.pswiglu import ffn_bwd

    bs, t, d, h = 40, 2, 16, 24
    u = random_input((bs, t, d), torch.float32, device)
    wg, wu, wd, bg, bu, _ = (x.detach() if x is not None else None
                             for x in _weights(t, d, h, torch.float32, device, True))
    do = torch.randn(bs, t, d, device=device)
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", "buffers")
    ref = ffn_bwd(do, u, wg, wu, wd, bg, bu, None, None, n_split=1)
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", "recompute")
    for n_split in (1, 3):
        got = ffn_bwd(do, u, wg, wu, wd, bg, bu, None, None, n_split=n_split)
        for a, b in zip(ref, got):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ffn_backward_switch_is_checked(monkeypatch):
    from unimixer_kernels.triton_kernels.pswiglu import recompute_hidden_grads

    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", "lean")
    with pytest.raises(ValueError, match="UNIMIXER_FFN_BACKWARD.*'buffers' or 'recompute'"):
        recompute_hidden_grads()


@pytest.fixture
def tiled_path(monkeypatch):
    """Force the tiled per-token GEMMs that wide tokens (D > FUSED_MAX_D) take."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(3, 2, 24, 20), (5, 1, 40, 36)])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
def test_pswiglu_triton_tiled_path(device, kernel_dtype, tiled_path, shape, bias, recompute):
    bs, t, d, h = shape
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    check_against_reference(uk.pswiglu, (u, *_weights(t, d, h, kernel_dtype, device, bias)),
                            backend="triton", kwargs={"recompute": recompute})


@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "tile-per-program"])
def test_ffn_tiled_path_through_tensor_descriptors(device, tiled_path, monkeypatch, op, recompute,
                                                   persistent):
    """Every GEMM of the wide-token path reads and writes through TMA tensor descriptors (forced:
    an operand that a descriptor cannot address raises), the transposed operands of the weight
    gradients included; tiles clip at every edge. Persistent launches: three programs, each walking
    several tiles. Token chunks of two: the descriptors start inside the tensors."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    _force_tma(monkeypatch, kernels, persistent)
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")  # descriptors over token slices, one uneven
    bs, t, d, h = 5, 3, 24, 40  # rows of 48 and 80 bytes: the 16-byte strides TMA needs
    u = random_input((bs, t, d), torch.float16, device, requires_grad=True)
    _check_ffn(op, u, torch.float16, device, h, recompute=recompute)


@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("chunk", ["all", "2"])
def test_ffn_tiled_path_through_torch_bmm(device, tiled_path, monkeypatch, op, recompute, chunk):
    """Every GEMM of the wide-token path through ``torch.bmm`` / ``baddbmm_`` (``UNIMIXER_FFN_GEMM=
    cublas``; the CPU's GEMM in the interpreter): strided views of the token-major buffers, the
    down projection's bias written first, ``du``'s second product added, token slices (chunks of
    two, one uneven); a non-contiguous input. No Triton GEMM runs."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "cublas")
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", chunk)
    monkeypatch.setattr(kernels, "ffn_token_gemm_kernel", None)  # any launch of it would raise
    bs, t, d, h = 5, 3, 24, 40
    u = random_input((bs, t, d), torch.float16, device, requires_grad=True, noncontiguous=True)
    _check_ffn(op, u, torch.float16, device, h, recompute=recompute)


@pytest.mark.triton
@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float16], ids=["fp32-bias", "fp16-bias"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=["fp32-out", "fp16-out"])
def test_fill_rows_writes_the_bias_into_every_row_of_a_strided_view(device, bias_dtype, out_dtype):
    """The cuBLAS path's bias fill (``beta = 1`` then adds the product): ``c[t, i, :] = bias[t, :]``
    through the token-major view of a ``[bs, T, D]`` output; rows and columns that do not divide
    the tiles; nothing outside the view is written."""
    from unimixer_kernels.triton_kernels.pswiglu import _fill_rows

    bs, t, d = 37, 3, 21
    out = torch.full((bs, t + 1, d), 7.0, device=device, dtype=out_dtype)
    view = out[:, 1:, :].transpose(0, 1)  # [T, bs, D] with strides (D, (T + 1) D, 1)
    bias = random_input((t, d), bias_dtype, device)
    _fill_rows(view, bias)
    assert torch.equal(view, bias.to(out_dtype)[:, None, :].expand(t, bs, d))
    assert (out[:, 0, :] == 7.0).all()


def test_ffn_gemm_switch_names_its_values(monkeypatch):
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "cuBLAS")
    with pytest.raises(ValueError, match="UNIMIXER_FFN_GEMM: expected 'auto', 'triton' or 'cublas'"):
        kernels.cublas_token_gemms(torch.float16, cpu)
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "cublas")
    with pytest.raises(ValueError, match="UNIMIXER_FFN_GEMM=cublas: needs fp16 or bf16 operands"):
        kernels.cublas_token_gemms(torch.float32, cpu)
    assert kernels.cublas_token_gemms(torch.bfloat16, cpu)
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "triton")
    assert not kernels.cublas_token_gemms(torch.bfloat16, cuda)
    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "auto")
    assert not kernels.cublas_token_gemms(torch.bfloat16, cpu)  # the Triton GEMM (interpreted) off CUDA
    assert not kernels.cublas_token_gemms(torch.float32, cuda)  # fp32 keeps the exact ieee dots
    assert kernels.cublas_token_gemms(torch.float16, cuda) == (not kernels.interpreting())


@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("chunk", ["1", "2"])
def test_ffn_tiled_path_in_token_chunks(device, kernel_dtype, tiled_path, monkeypatch, op, recompute, chunk):
    """The wide-token path through its hidden buffers a few tokens at a time (``T = 3``: chunks of
    one, or of two and one), non-contiguous input: every output and gradient as in one pass. The
    activation pass's bias partials over sample blocks of 4 (two blocks, the second partial)."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", chunk)
    monkeypatch.setattr(kernels, "ACT_ROWS", 4)
    bs, t, d, h = 6, 3, 24, 20
    u = random_input((bs, t, d), kernel_dtype, device, requires_grad=True, noncontiguous=True)
    _check_ffn(op, u, kernel_dtype, device, h, recompute=recompute)


@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "pgelu_ffn"])
@pytest.mark.parametrize("backward", ["buffers", "recompute"])
@pytest.mark.parametrize("recompute", [True, False], ids=["recompute", "save"])
@pytest.mark.parametrize("chunk", ["all", "1", "2"])
def test_ffn_fused_path_in_token_chunks(device, monkeypatch, op, backward, recompute, chunk):
    """The fused path's backward a few tokens at a time (``T = 3``: one pass, chunks of one, or of two
    and one), with its hidden buffers or their
    recompute in the weight kernel, saved or recomputed pre-activations, non-contiguous input: every
    output and gradient as the reference's."""
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", chunk)
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", backward)
    u = random_input((5, 3, 24), torch.float32, device, requires_grad=True, noncontiguous=True)
    _check_ffn(op, u, torch.float32, device, 20, recompute=recompute)


def test_ffn_token_chunk_switch(monkeypatch):
    """``UNIMIXER_FFN_TOKEN_CHUNK``: 'auto' is one pass on the wide-token path (with the norm folded
    in, about six backward and two forward passes of at least four tokens) and up to four passes
    of at least eight tokens on the fused one; 'all' is one pass; an integer is capped at ``T``;
    anything else names the switch and what it takes."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.delenv("UNIMIXER_FFN_TOKEN_CHUNK", raising=False)
    assert kernels._token_chunk(16) == 16 and kernels._token_chunk(15, fused=True) == 8
    assert kernels._token_chunk(32, fused=True) == 8 and kernels._token_chunk(64, fused=True) == 16
    assert kernels._token_chunk(1, fused=True) == 1 and kernels._token_chunk(6, fused=True) == 6
    # the wide-token path with the norm folded in: about six passes of at least four tokens
    assert kernels._token_chunk(32, folded=True) == 6 and kernels._token_chunk(100, folded=True) == 17
    assert kernels._token_chunk(10, folded=True) == 4 and kernels._token_chunk(3, folded=True) == 3
    assert kernels._token_chunk(32, folded=True, forward=True) == 16  # the forward: two passes
    assert kernels._token_chunk(6, folded=True, forward=True) == 4
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "all")
    assert kernels._token_chunk(16) == 16 and kernels._token_chunk(16, fused=True) == 16
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "4")
    assert kernels._token_chunk(3) == 3
    assert kernels._token_chunk(16) == 4
    assert [(c.start, c.stop) for c in kernels._chunks(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    for bad in ("0", "two", "-1", "Auto"):
        monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", bad)
        with pytest.raises(ValueError, match="TOKEN_CHUNK: expected 'auto', 'all' or a positive integer"):
            kernels._token_chunk(16)


def test_ffn_tma_switch_is_checked(monkeypatch):
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_TMA", "yes")
    with pytest.raises(ValueError, match="UNIMIXER_FFN_TMA: expected 'auto', '0' or '1'"):
        kernels._use_tma(256, 256, 256, False)


def test_ffn_tma_auto_takes_descriptors_where_no_tile_clips(monkeypatch):
    """'auto': descriptors where the TMA tile divides M, N and K (RankMixer's shapes), pointers where
    a tile would clip (``h = 688``); '1' wherever the operands allow, '0' never."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_TMA", "auto")
    assert kernels._use_tma(2048, 3072, 768, False) is None
    assert kernels._use_tma(768, 3072, 2048, False) is None
    assert kernels._use_tma(2048, 688, 512, False) is False
    assert kernels._use_tma(2048, 512, 688, True) is False
    monkeypatch.setenv("UNIMIXER_FFN_TMA", "1")
    assert kernels._use_tma(2048, 688, 512, False) is None
    monkeypatch.setenv("UNIMIXER_FFN_TMA", "0")
    assert kernels._use_tma(2048, 3072, 768, False) is False


def test_ffn_tma_refuses_operands_it_cannot_address(monkeypatch):
    """An operand whose rows are not 16-byte aligned: ``tma=True`` says so, ``tma=None`` falls back."""
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_GEMM", "triton")
    a = torch.zeros(2, 3, 5, dtype=torch.float16)  # rows of 10 bytes
    b = torch.zeros(3, 5, 8, dtype=torch.float16)
    assert kernels._operand_desc(a, 2, 3, 5, (15, 5, 1), torch.float16) is None
    assert kernels._operand_desc(b, 5, 3, 8, (8, 40, 1), torch.float16) is not None
    assert kernels._operand_desc(b, 5, 3, 8, (8, 40, 1), torch.float32) is None  # fp32: CUDA-core dots
    c = torch.zeros(3, 2, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="tma=True"):
        kernels._token_gemm(a, b, c, 3, 2, 8, 5, (15, 5, 1), (40, 8, 1), (8, 16, 1), torch.float16, tma=True)


def test_pswiglu_tile_pruning_always_leaves_a_config():
    """The autotuner's shared-memory pruning keeps at least one configuration for every width,
    dtype and batch, and the small-batch choice is a single configuration."""
    import triton
    import triton.language as tl
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    tiles = [triton.Config({"BLOCK_S": s, "BLOCK_H": h}, num_warps=4, num_stages=st)
             for s, h, st in [(128, 64, 3), (64, 64, 2), (32, 32, 2), (16, 32, 1)]]
    weights = [triton.Config({"BLOCK_S": s}, num_warps=4, num_stages=st) for s, st in [(128, 3), (32, 1)]]
    for block_d in (16, 128, 256, 1024, 2048):
        for cdt in (tl.float16, tl.bfloat16, tl.float32):
            for bs_key in (1, 256, 4096):
                args = {"BS_KEY": bs_key}
                kept = kernels._prune_tiles(tiles, args, BLOCK_D=block_d, CDT=cdt, GATED=True)
                assert kept and (bs_key >= 1024 or len(kept) == 1)
                assert kernels._prune_weight(weights, args, CDT=cdt)


@pytest.mark.triton
def test_pswiglu_compile_fullgraph(device):
    """The custom ops trace into one graph (fake kernels, autograd) with no graph break."""
    bs, t, d, h = 3, 2, 16, 20
    u = random_input((bs, t, d), torch.float32, device, requires_grad=True)
    ws = _weights(t, d, h, torch.float32, device, True)
    fn = torch.compile(lambda *a: uk.pswiglu(*a, recompute=False, backend="triton"),
                       fullgraph=True, backend="aot_eager")
    check_against_reference(lambda *a, backend: fn(*a) if backend == "triton"
                            else uk.pswiglu(*a, backend=backend), (u, *ws), backend="triton")


@pytest.mark.triton
def test_pswiglu_triton_empty_batch(device):
    u = random_input((0, 2, 16), torch.float32, device, requires_grad=True)
    ws = _weights(2, 16, 20, torch.float32, device, True)
    o = uk.pswiglu(u, *ws, backend="triton")
    assert o.shape == (0, 2, 16)
    grads = torch.autograd.grad(o.sum(), [u, *ws])
    assert grads[0].shape == u.shape
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[1:])


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_ffn_token_gemm_tiles_compile_for_sm90(sm90_compile):
    # every (mode, tile) the autotuner may pick for a large bf16 GEMM, and every weight-gradient tile
    # of the fused path (both backward strategies), compiles and fits an SM
    sm90_compile(
        "from bench.sm90 import SMEM_LIMIT, ffn_gemm_rows, ffn_weight_rows\n"
        "for label, cfg, res in [*ffn_gemm_rows(usage=False), *ffn_weight_rows(usage=False)]:\n"
        "    assert res['shared'] <= SMEM_LIMIT, (label, cfg, res)\n"
    )



def ffn_weight_loop_sm90() -> None:
    """The weight-gradient kernel's sample loop (bf16, buffers mode, every tile the autotuner may
    keep) has no shuffles and at most its pipeline's barriers: the bias sums stay elementwise in
    the loop and are reduced once after it."""
    from bench.sm90 import ffn_weight_rows, loop_body

    for label, cfg, res in ffn_weight_rows(usage=False, ptx=True):
        if "recompute" in label:
            continue
        loop = loop_body(res["ptx"])
        # a warp-index broadcast (shfl.sync.idx) at most; a per-step reduction takes dozens of shuffles
        assert loop.count("shfl.sync.bfly") == 0 and loop.count("bar.sync") <= 2, (label, cfg)


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_ffn_weight_loop_sm90(sm90_compile):
    sm90_compile("import test_pswiglu as t; t.ffn_weight_loop_sm90()")
