"""unimixing_rmsnorm_pswiglu: the UniMixer block's mixing and FFN sub-layers, the Triton backend
against the fp64 reference (SPEC §8), and against the two ops it replaces run one after the other.

The Triton backend's second node saves ``s`` instead of the FFN's input ``u``, recomputes ``u``
token pass by token pass in its backward, and writes ``ds`` over ``s``: the tests pin each of those
(several passes, the wide-token path, what is saved, where ``dz`` lands, the caller's ``s`` left
alone when it is not the op's own, a second backward refused).

Against the reference in fp32. In fp16 and bf16 the check is equality with ``unimixing_rmsnorm``
then ``pswiglu``, each held to SPEC §8's rule by its own tests: the chain of two rounded ops is not
held to the rule against torch's own chain (``u`` rounded to the activation dtype between them
moves the output by more than twice torch's error at some seeds, the same numbers either way).
"""

import math
import weakref

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels.ops.unimixing_rmsnorm_pswiglu import rms_norm_pswiglu_bwd, rms_norm_pswiglu_fwd
from unimixer_kernels.testing import check_against_reference, random_input

# (bs, T, D, B, h): N = T*D/B
SHAPES = [
    (3, 20, 12, 4, 10),  # T = 20: the FFN backward in passes of 8, 8 and 4 tokens
    (1, 6, 12, 8, 6),  # bs = 1, B does not divide D (blocks straddle tokens)
    (2, 2, 24, 16, 20),  # B >= 16: the natural-layout mixing paths, B straddling tokens
    (4, 2, 136, 8, 12),  # D = 136: the wide-token FFN path in fp32
]


def _inputs(shape, dtype, device, bias=True, noncontiguous=False):
    bs, t, d, b, h = shape
    n = t * d // b
    z = random_input((bs, t, d), dtype, device, requires_grad=True, noncontiguous=noncontiguous)
    wl = random_input((n, b, b), dtype, device, requires_grad=True, scale=b ** -0.5)
    wg = random_input((n, n), dtype, device, requires_grad=True, scale=n ** -0.5)
    nw = random_input((d,), dtype, device, requires_grad=True)
    ffn = [random_input((t, d, h), dtype, device, requires_grad=True, scale=1 / math.sqrt(d)),
           random_input((t, d, h), dtype, device, requires_grad=True, scale=1 / math.sqrt(d)),
           random_input((t, h, d), dtype, device, requires_grad=True, scale=1 / math.sqrt(h))]
    biases = [random_input(s, dtype, device, requires_grad=True) for s in ((t, h), (t, h), (t, d))]
    return [z, wl, wg, nw, *ffn, *(biases if bias else [None] * 3)]


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_unimixing_rmsnorm_pswiglu_triton(device, shape, bias):
    inputs = _inputs(shape, torch.float32, device, bias=bias, noncontiguous=shape[0] % 2 == 1)
    check_against_reference(uk.unimixing_rmsnorm_pswiglu, inputs, backend="triton")


def _check_equals_the_two_ops(shape, dtype, device, noncontiguous=False, exact_ds=False):
    """The same numbers as ``unimixing_rmsnorm`` then ``pswiglu``: the recomputed ``u`` is the
    forward's, so the output and every FFN gradient match bit for bit; the norm weight's partials are
    summed in another order. ``exact_ds`` (the wide-token path): ``ds``, and so ``dz`` and the mixing
    weights' gradients, bit for bit too; else (the fused path) they differ by roundings: ``du`` is
    fp32 there, rounded to the activation dtype before the norm's backward in the two ops."""
    inputs = _inputs(shape, dtype, device, noncontiguous=noncontiguous)
    z, wl, wg, nw, *ffn = inputs
    out = uk.unimixing_rmsnorm_pswiglu(*inputs, backend="triton")
    two = uk.pswiglu(uk.unimixing_rmsnorm(z, wl, wg, nw, backend="triton"), *ffn, backend="triton")
    assert torch.equal(out, two)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, do)
    want = torch.autograd.grad(two, inputs, do)
    for k, (a, e) in enumerate(zip(got, want)):
        if k == 3 or (k < 3 and not exact_ds):  # the norm weight; dz and the mixing weights from ds
            tol = 1e-5 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
            torch.testing.assert_close(a, e, rtol=tol, atol=tol * e.abs().max().item())
        else:
            assert torch.equal(a, e), f"grad of input {k}"


@pytest.mark.triton
@pytest.mark.parametrize("chunk", ["auto", "all", "3"])
@pytest.mark.parametrize("path", ["fused", "wide"])
def test_unimixing_rmsnorm_pswiglu_equals_the_two_ops(device, kernel_dtype, monkeypatch, chunk, path):
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", chunk)
    if path == "wide":
        monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
    _check_equals_the_two_ops((3, 10, 12, 4, 10), kernel_dtype, device, noncontiguous=True,
                              exact_ds=path == "wide")


@pytest.mark.triton
def test_wide_token_passes_free_their_buffers_before_the_next(device, monkeypatch):
    # the wide-token path behind the folded norm: forward in two passes, backward in passes of
    # four tokens (T = 10: 4, 4, 2); when a pass allocates its hidden buffers, no earlier pass's
    # are alive (assigning them over the previous pass's names once kept two passes' at once)
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    monkeypatch.delenv("UNIMIXER_FFN_TOKEN_CHUNK", raising=False)
    monkeypatch.setattr(kernels, "FUSED_MAX_D", 0)
    made, alive_at_call = [], []
    pre_tiled = kernels._pre_tiled

    def tracked(*args, **kwargs):
        alive_at_call.append([ref().shape[0] for ref in made if ref() is not None])  # tokens
        out = pre_tiled(*args, **kwargs)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(kernels, "_pre_tiled", tracked)
    inputs = _inputs((3, 10, 12, 4, 10), torch.float32, device)
    out = uk.unimixing_rmsnorm_pswiglu(*inputs, backend="triton")
    torch.autograd.grad(out, inputs, torch.randn_like(out))
    # forward: G then V of each of two passes (5 tokens); backward: of each of three passes
    assert [len(a) for a in alive_at_call] == [0, 1] * 5
    assert [a for a in alive_at_call[1::2]] == [[5], [5], [4], [4], [2]]


@pytest.mark.triton
def test_unimixing_rmsnorm_pswiglu_recomputing_ffn_backward(device, monkeypatch):
    # UNIMIXER_FFN_BACKWARD=recompute: the weight kernel forms A, dG, dV from each pass's u itself
    monkeypatch.setenv("UNIMIXER_FFN_BACKWARD", "recompute")
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "3")
    _check_equals_the_two_ops((3, 10, 12, 4, 10), torch.float32, device)


@pytest.mark.triton
def test_unimixing_rmsnorm_pswiglu_fused_norm_switch(device, monkeypatch):
    # UNIMIXER_UNIMIXING_NORM=fused: unimixing_rmsnorm's one-node fused epilogue, then pswiglu
    monkeypatch.setenv("UNIMIXER_UNIMIXING_NORM", "fused")
    check_against_reference(uk.unimixing_rmsnorm_pswiglu, _inputs((3, 4, 8, 4, 12), torch.float32, device),
                            backend="triton")


def _saved_activations(fn, inputs, shape):
    """``data_ptr``s of the tensors of ``shape`` that autograd saves while ``fn`` runs."""
    saved = []

    def pack(t):
        if tuple(t.shape) == tuple(shape):
            saved.append(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, set(saved)


@pytest.mark.triton
def test_unimixing_rmsnorm_pswiglu_saves_no_u_and_writes_dz_over_s(device, monkeypatch):
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    inputs = _inputs((3, 10, 12, 4, 10), torch.float32, device)
    z, wl, wg, nw, *ffn = inputs
    shape = z.shape
    out, saved = _saved_activations(lambda *a: uk.unimixing_rmsnorm_pswiglu(*a, backend="triton"),
                                    inputs, shape)
    _, saved_two = _saved_activations(
        lambda z, wl, wg, nw, *f: uk.pswiglu(uk.unimixing_rmsnorm(z, wl, wg, nw, backend="triton"), *f,
                                             backend="triton"), inputs, shape)
    assert len(saved) == 2 and len(saved_two) == 3  # z and s; the two ops also save u
    seen = []
    bwd = kernels.rms_norm_ffn_bwd_

    def spy(do, s, *args, **kwargs):
        seen.append((s.data_ptr(), weakref.ref(s)))
        return bwd(do, s, *args, **kwargs)

    monkeypatch.setattr(kernels, "rms_norm_ffn_bwd_", spy)
    out.backward(torch.randn_like(out))
    (s_ptr, _), = seen
    assert s_ptr in saved
    assert z.grad.data_ptr() == s_ptr  # ds over s, then dz over ds


@pytest.mark.triton
def test_unimixing_rmsnorm_pswiglu_second_backward_raises(device):
    inputs = _inputs((2, 3, 8, 4, 6), torch.float32, device)
    out = uk.unimixing_rmsnorm_pswiglu(*inputs, backend="triton")
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.triton
@pytest.mark.parametrize("private", [False, True])
def test_rms_norm_pswiglu_opcheck(device, private):
    _, _, _, nw, *ffn = _inputs((3, 2, 12, 4, 10), torch.float32, device)
    s = torch.randn(3, 2, 12, device=device, requires_grad=True)
    torch.library.opcheck(rms_norm_pswiglu_fwd, (s, nw, 1e-6, *ffn, private))
    rstd = rms_norm_pswiglu_fwd(s, nw, 1e-6, *ffn, private)[1].detach()
    do = torch.randn(3, 2, 12, device=device)
    detached = [t.detach() if t is not None else None for t in ffn]
    torch.library.opcheck(rms_norm_pswiglu_bwd, (do, s.detach().clone(), rstd, nw.detach(), 1e-6, *detached))


@pytest.mark.triton
def test_rms_norm_pswiglu_leaves_an_input_it_does_not_own(device):
    # called directly (input_is_private=False) the backward writes ds over a copy of s
    _, _, _, nw, *ffn = _inputs((3, 4, 12, 4, 10), torch.float32, device)
    s = torch.randn(3, 4, 12, device=device, requires_grad=True)
    keep = s.detach().clone()
    o = rms_norm_pswiglu_fwd(s, nw, 1e-6, *ffn, False)[0]
    (ds,) = torch.autograd.grad(o, (s,), torch.randn_like(o))
    assert torch.equal(s.detach(), keep)
    u = uk.rms_norm(s, nw, backend="triton")
    o2 = uk.pswiglu(u, *ffn, backend="triton")
    assert torch.equal(o, o2)


@pytest.mark.triton
def test_rms_norm_pswiglu_bwd_rejects_an_s_it_cannot_overwrite(device):
    _, _, _, nw, *ffn = _inputs((3, 2, 12, 4, 10), torch.float32, device)
    s = torch.randn(3, 12, 2, device=device).transpose(1, 2)
    detached = [t.detach() for t in ffn]
    with pytest.raises(ValueError, match="s: expected a contiguous"):
        rms_norm_pswiglu_bwd(torch.randn(3, 2, 12, device=device), s, torch.ones(3, 2, device=device),
                             nw.detach(), 1e-6, *detached)


@pytest.mark.triton
def test_token_pass_norm_matches_the_norm_kernels(device):
    # each pass's u is the forward kernel's u bit for bit; ds rows as the whole-tensor backward's;
    # every pass on the first pass's grid, adding its norm-weight partials to the rows it wrote
    from unimixer_kernels.triton_kernels import rms_norm as kernels

    s = torch.randn(300, 7, 12, device=device)  # 900 rows a pass: several programs each
    w = torch.randn(12, device=device)
    u, _, rstd = kernels.rms_norm_fwd(s, None, w, 1e-6)
    du = torch.randn_like(u)
    ds_all, dw_all = kernels.rms_norm_bwd(du, None, s, w, rstd)
    ds = torch.full_like(s, float("nan"))
    norm = kernels.TokenPassNorm(s, w, 1e-6, ds)
    chunks = [slice(0, 3), slice(3, 6), slice(6, 7)]
    norm.plan(chunks)
    assert norm.partial.shape[0] == kernels._bwd_grid(900, 12, s.device)[1] > 1
    for sl in chunks:
        assert torch.equal(norm.rows(sl), u[:, sl])
        norm.grads(sl, du[:, sl].contiguous())
    from unimixer_kernels.triton_kernels._partials import sum_partials

    sum_partials(norm.weight_grad_pair())
    assert torch.equal(ds, ds_all)
    torch.testing.assert_close(norm.dw, dw_all, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="the first pass must be the longest"):
        norm.plan([slice(0, 1), slice(1, 7)])


def test_token_pass_norm_sums_the_rows_the_fused_passes_wrote(device):
    # the fused route's kernel writes a row per program of its grid into a buffer sized for the smallest
    # tile: the sum reads the first pass's rows, and a later pass that would add to rows the first never
    # wrote (a tile smaller than the first pass's) is an error, not a sum of poison
    from unimixer_kernels.triton_kernels import rms_norm as kernels

    s = torch.randn(40, 5, 12, device=device)
    norm = kernels.TokenPassNorm(s, torch.randn(12, device=device), 1e-6, s.clone(),
                                 rstd=torch.ones(40, 5, device=device))
    norm.plan([slice(0, 3), slice(3, 5)], rows_per_token=5)
    assert norm.partial.shape[0] == 15 and norm.weight_grad_pair()[0].shape[0] == 15
    norm.wrote(6)  # the first pass: 3 tokens x 2 tiles
    norm.wrote(4)  # the second: 2 tokens x 2 tiles
    assert norm.weight_grad_pair()[0].shape[0] == 6
    with pytest.raises(RuntimeError, match="past the 6 the first pass wrote"):
        norm.wrote(8)
    norm.plan([slice(0, 5)], rows_per_token=5)
    with pytest.raises(RuntimeError, match="past the 25 the buffer holds"):
        norm.wrote(30)


def test_unimixing_rmsnorm_pswiglu_bad_input():
    z, wl, wg, nw, wgate, wup, wdown, *_ = _inputs((2, 3, 8, 4, 6), torch.float32, "cpu", bias=False)
    with pytest.raises(ValueError, match="norm_weight: expected shape"):
        uk.unimixing_rmsnorm_pswiglu(z, wl, wg, torch.ones(7), wgate, wup, wdown)
    with pytest.raises(ValueError, match="w_gate: expected shape"):
        uk.unimixing_rmsnorm_pswiglu(z, wl, wg, nw, wgate[:2], wup, wdown)
    with pytest.raises(ValueError, match="b_down: expected shape"):
        uk.unimixing_rmsnorm_pswiglu(z, wl, wg, nw, wgate, wup, wdown, b_down=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="w_local"):
        uk.unimixing_rmsnorm_pswiglu(z, wl[:, :2, :2], wg, nw, wgate, wup, wdown)


# --- GPU: SPEC §10 presets (smaller batch so the fp64 reference stays cheap) --------------------

PRESETS = {
    "paper-small": (64, 32, 128, 4, 176),
    "lite-2.5m": (64, 16, 96, 4, 128),
    "paper-100m": (16, 32, 512, 4, 688),
}


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("preset", list(PRESETS))
def test_unimixing_rmsnorm_pswiglu_preset_gpu(kernel_dtype, preset):
    if kernel_dtype == torch.float32:
        check_against_reference(uk.unimixing_rmsnorm_pswiglu, _inputs(PRESETS[preset], kernel_dtype, "cuda"),
                                backend="triton")
    else:
        _check_equals_the_two_ops(PRESETS[preset], kernel_dtype, "cuda")


def norm_kernels_compile_for_sm90() -> None:
    """The RMSNorm kernels with the token-slice rows the backward's passes read (``GROUPED``),
    compiled for sm_90 in bf16: the same global loads and stores as with plain rows."""
    import re

    from unimixer_kernels.triton_kernels import rms_norm as kernels

    from bench.sm90 import compile_sm90

    fwd = dict(X="*bf16", R="*bf16", W="*fp32", Y="*bf16", S="*bf16", RSTD="*fp32")
    bwd = dict(DY="*bf16", DSUM="*bf16", S="*bf16", W="*fp32", RSTD="*fp32", DS="*bf16", DW_PARTIAL="*fp32")
    for kernel, ptrs, consts in ((kernels.rms_norm_fwd_kernel, fwd, dict(RESIDUAL=0)),
                                 (kernels.rms_norm_bwd_kernel, bwd, dict(HAS_DSUM=False))):
        accesses = []
        for grouped in (False, True):
            ptx = compile_sm90(kernel, ptrs, dict(consts, GROUPED=grouped, BLOCK_M=32, BLOCK_D=128), 4, 1,
                               ptx=True)["ptx"]
            accesses.append(sorted(set(re.findall(r"(?:ld|st)\.global[.\w]*", ptx))))
        assert accesses[0] == accesses[1], (kernel, accesses)


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_norm_kernels_compile_for_sm90(sm90_compile):
    sm90_compile("import test_unimixing_rmsnorm_pswiglu as t; t.norm_kernels_compile_for_sm90()")


@pytest.mark.triton
@pytest.mark.parametrize("tiles", [1, 2])
def test_prenorm_act_kernel_is_tuned_on_scratch_once_per_kind(device, monkeypatch, tiles):
    # the PRENORM act kernel writes ds over s and adds to earlier passes' partials, so its tile is
    # tuned on scratch tensors (no timed call overwrites the caller's), once per kind; the launches then
    # run that tile. With one candidate tile (small batches, the interpreter) there is nothing to tune and
    # no scratch launch; two candidates stand for a batch the tuner would tune (_tuning.fastest, here with
    # a stand-in timer that launches once a timing). Two backwards give the same bits
    import triton
    from unimixer_kernels.triton_kernels import _tuning
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    class Spy:
        """The act kernel, recording each launch's ds, partials and PRENORM flag."""

        def __init__(self, kernel):
            self.kernel, self.seen = kernel, []

        def __getattr__(self, name):
            return getattr(self.kernel, name)

        def __getitem__(self, grid):
            def launch(*args, **meta):
                self.seen.append((args[kernels._DS_ARG], args[kernels._PART_ARG], meta["PRENORM"]))
                return self.kernel[grid](*args, **meta)
            return launch

    prune = kernels._prune_tiles

    def two_tiles(*args, **kwargs):
        (one,) = prune(*args, **kwargs)
        other = triton.Config(dict(one.kwargs), num_warps=one.num_warps, num_stages=one.num_stages + 1)
        return [one, other]

    real = kernels.ffn_bwd_act
    spy = Spy(real.kernel)
    tuner = _tuning.TileTuner(spy, real.configs, key=real.key, prune=two_tiles if tiles == 2 else prune)
    monkeypatch.setattr(kernels, "ffn_bwd_act", tuner)
    monkeypatch.setattr(_tuning, "_bench", lambda fn: (fn(), 1.0)[1])
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")
    inputs = _inputs((3, 5, 12, 4, 10), torch.float32, device)
    grads = []
    for _ in range(2):
        out = uk.unimixing_rmsnorm_pswiglu(*inputs, backend="triton")
        grads.append(torch.autograd.grad(out, inputs, torch.ones_like(out)))
    # passes of 2, 2 and 1 tokens: the first pass tunes, once; the later ones, which add to its partials
    # (ACCUMULATE), take its tile. Tuning, each tile runs once, then once a timing
    n_tuned = 0 if tiles == 1 else tiles * (1 + _tuning.ROUNDS)
    tuned, launched = spy.seen[:n_tuned], spy.seen[n_tuned:]
    assert len(tuner.tiles) == 1 and len(tuner.times) == (tiles == 2) and len(launched) == 6
    assert all(prenorm for _, _, prenorm in spy.seen)
    # the first backward's launches: their ds and partials were alive while the scratch was
    written = {t.data_ptr() for ds, part, _ in launched[:3] for t in (ds, part)}
    assert not written & {t.data_ptr() for ds, part, _ in tuned for t in (ds, part)}
    for a, b in zip(*grads):
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.triton
@pytest.mark.parametrize("buffer", ["tile", "smaller tile"])
@pytest.mark.parametrize("chunk", ["all", "2"])
def test_fused_ffn_pass_does_the_norm_as_the_norm_kernels(device, monkeypatch, chunk, buffer):
    # the fused FFN's act kernel with the norm in front (PRENORM): u from the forward's rstd (the
    # weight gradients then equal those from the norm kernel's u bit for bit), ds written over s and
    # the norm weight's partials (a row per program, later passes adding to the first's), as the FFN
    # backward on u followed by the norm's backward. bs = 40 on 32-sample tiles: a tile past the batch.
    # The partial buffer is sized for the smallest tile; "smaller tile" sizes it for 8-sample tiles, so
    # that it holds rows no program writes (poisoned, tests/conftest.py): the sum must read only the rows
    # the first pass wrote
    from unimixer_kernels.triton_kernels import pswiglu as kernels
    from unimixer_kernels.triton_kernels import rms_norm as norms

    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", chunk)
    if buffer == "smaller tile":
        monkeypatch.setattr(kernels, "_MIN_BLOCK_S", 8)
    sums, planned = [], []
    real_sum, real_plan = kernels.sum_partials, norms.TokenPassNorm.plan

    def spy_sum(*pairs, **kwargs):
        sums.append(pairs)
        return real_sum(*pairs, **kwargs)

    def spy_plan(self, chunks, rows_per_token=None):
        real_plan(self, chunks, rows_per_token)
        planned.append((chunks[0].stop - chunks[0].start, self.partial.shape[0]))

    monkeypatch.setattr(kernels, "sum_partials", spy_sum)
    monkeypatch.setattr(norms.TokenPassNorm, "plan", spy_plan)
    bs, t, d, h = 40, 5, 12, 10
    s = torch.randn(bs, t, d, device=device)
    nw = torch.randn(d, device=device)
    w1, w3 = (torch.randn(t, d, h, device=device) / d ** 0.5 for _ in range(2))
    w2 = torch.randn(t, h, d, device=device) / h ** 0.5
    b1, b3 = torch.randn(t, h, device=device), torch.randn(t, h, device=device)
    do = torch.randn(bs, t, d, device=device)
    u, _, rstd = norms.rms_norm_fwd(s, None, nw, 1e-6)
    du, *want = kernels.ffn_bwd(do, u, w1, w3, w2, b1, b3, None, None)
    ds_want, dnw_want = norms.rms_norm_bwd(du, None, s, nw, rstd)
    ds = s.clone()
    sums.clear()
    dnw, *got = kernels.rms_norm_ffn_bwd_(do, ds, rstd.view(bs, t), nw, 1e-6, w1, w3, w2, b1, b3)
    for k, (a, e) in enumerate(zip(got, want)):
        assert torch.equal(a, e), f"FFN gradient {k}"
    torch.testing.assert_close(ds, ds_want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dnw, dnw_want, rtol=1e-5, atol=1e-5)
    # the last sum's last pair is the norm weight's: the first pass's tokens x 2 sample tiles of 32
    (first, buffer_rows), = planned
    read = sums[-1][-1][0]
    assert read.shape[0] == first * 2
    assert buffer_rows == first * -(-bs // kernels._MIN_BLOCK_S)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_a_pending_w_global_is_waited_for_once_and_the_result_is_the_ops(device, monkeypatch, backend):
    # the UniMixer block hands W_G over still pending (_pending.py): the Triton backend waits for it
    # after the per-block products, whose H the memory path writes first (the autocast casts of the
    # FFN weights too, before the op); the reference waits before it runs
    from unimixer_kernels.triton_kernels import unimixing as kernels

    from unimixer_kernels import _pending

    monkeypatch.setenv("UNIMIXER_UNIMIXING_FORWARD", "gemm")
    log = []
    local = kernels._local_products
    monkeypatch.setattr(kernels, "_local_products", lambda *a, **k: (log.append("local"), local(*a, **k))[1])
    inputs = _inputs((3, 20, 12, 4, 10), torch.float32, device)
    expect = uk.unimixing_rmsnorm_pswiglu(*inputs, backend=backend)
    log.clear()
    _pending.read_late(inputs[2], lambda: log.append("wait"))
    got = uk.unimixing_rmsnorm_pswiglu(*inputs, backend=backend)
    _pending.settled(inputs[2], "unimixing_rmsnorm_pswiglu")
    assert log == (["local", "wait"] if backend == "triton" else ["wait"])
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


# --- programmatic dependent launch in the FFN backward's token passes (UNIMIXER_PDL) ---------------


def ffn_pdl_compile_for_sm90() -> None:
    """The FFN backward's chain compiled for sm_90 (bf16, paper-small's tiles): with ``PDL`` each kernel
    waits on the previous grid and releases the next; the act kernel's ``EARLY`` build loads before its
    wait and the plain one does not; no kernel stores before its wait; the weight kernel and the
    ``RELEASE_FIRST`` sums release before they wait, the first act kernel and the last sum after."""
    import triton.language as tl
    from unimixer_kernels.triton_kernels import _partials
    from unimixer_kernels.triton_kernels import pswiglu as k

    from bench.sm90 import compile_sm90

    def before_wait(ptx):
        head = ptx[:ptx.index("griddepcontrol.wait")]
        return "ld.global" in head, "st.global" in head, "griddepcontrol.launch_dependents" in head

    act_ptrs = {a: "*bf16" for a in "DO U W1 W3 W2 B1 B3 G V DU A DG DV NW DS".split()}
    act_ptrs.update(RSTD="*fp32", DW_PART="*fp32")
    act = dict(GATED=True, HAS_B1=True, HAS_B3=True, SAVED=False, STORE=True, ACCUMULATE=True,
               CDT=tl.bfloat16, PREC="tf32", BLOCK_S=64, BLOCK_D=128, BLOCK_H=32,
               stride_dod=1, stride_ud=1)
    weight_ptrs = {a: "*bf16" for a in "DO U A DG DV W1 W3 W2 B1 B3 G V".split()}
    weight_ptrs.update({a: "*fp32" for a in "DW1 DW3 DW2 DB1 DB3 DB2".split()})
    weight = dict(GATED=True, HAS_B1=True, HAS_B3=True, SAVED=False, RECOMPUTE=False, CDT=tl.bfloat16,
                  PREC="tf32", BLOCK_S=64, BLOCK_D=64, BLOCK_H=64, stride_dod=1, stride_ud=1)
    sums_ptrs = {f"{a}{i}": "*fp32" for i in range(7) for a in "SD"}
    sums = {f"{a}{i}": 1 for i in range(7) for a in ("BP", "BM")}
    sums.update(NSEG=2, BP0=8, BM0=512, BP1=8, BM1=512)
    builds = [(k.ffn_bwd_act_kernel, act_ptrs, dict(act, PRENORM=prenorm, PDL=pdl, EARLY=early), 4, 3,
               (early, False, early) if pdl else None)
              for prenorm in (False, True) for pdl, early in ((False, False), (True, False), (True, True))]
    builds += [(k.ffn_bwd_weight_kernel, weight_ptrs, dict(weight, PDL=pdl), 4, 3,
                (False, False, True) if pdl else None) for pdl in (False, True)]
    builds += [(_partials.sum_partials_kernel, sums_ptrs, dict(sums, PDL=pdl, RELEASE_FIRST=first), 4, 1,
                (False, False, first) if pdl else None) for pdl, first in ((False, False), (True, False),
                                                                            (True, True))]
    for kernel, ptrs, consts, warps, stages, expect in builds:
        ptx = compile_sm90(kernel, ptrs, consts, warps, stages, ptx=True, floats=())["ptx"]
        has = "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx
        assert has == (expect is not None), (kernel.__name__, consts)
        if expect is not None:
            # (a load, a store, the release) before the wait
            assert before_wait(ptx) == expect, (kernel.__name__, consts, before_wait(ptx))


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels run for real")
def test_ffn_pdl_compiles_for_sm90(sm90_compile):
    sm90_compile("import test_unimixing_rmsnorm_pswiglu as t; t.ffn_pdl_compile_for_sm90()")


@pytest.mark.triton
def test_ffn_backward_pdl_chain_order_and_flags(device, monkeypatch):
    # the token passes' launches as the PDL chain needs them (pswiglu.ffn_bwd): pass k's sums after pass
    # k + 1's act kernel; the first act kernel waits before it reads, the later ones read first (EARLY);
    # every weight kernel and every sum but the last releases the next kernel before its wait, the last sum
    # after it. PDL itself needs a GPU: here the chain is planned as on one (pdl_options stands in) and
    # each launch runs without it, so the numbers are the plain launches'
    from unimixer_kernels.triton_kernels import pswiglu as kernels

    seen = []

    def on(device):
        return dict(PDL=True, launch_pdl=True)

    def plain(meta):
        return {k: v for k, v in meta.items() if k not in ("PDL", "EARLY", "RELEASE_FIRST", "launch_pdl")}

    act, weight, sums = kernels.ffn_bwd_act, kernels.ffn_bwd_weight, kernels.sum_partials

    class Act:
        def run(self, grid, args, meta, scratch=None):
            seen.append(("act", meta["PDL"], meta["EARLY"]))
            return act.run(grid, args, plain(meta), scratch)

    class Weight:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                seen.append(("weight", meta["PDL"], False))
                return weight[grid](*args, **plain(meta))
            return launch

    def summed(*pairs, launch=None):
        seen.append(("sum", launch["PDL"], launch.get("RELEASE_FIRST", False)))
        return sums(*pairs)

    monkeypatch.setattr(kernels, "pdl_options", on)
    monkeypatch.setattr(kernels, "ffn_bwd_act", Act())
    monkeypatch.setattr(kernels, "ffn_bwd_weight", Weight())
    monkeypatch.setattr(kernels, "sum_partials", summed)
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")
    inputs = _inputs((3, 5, 12, 4, 10), torch.float32, device)  # T = 5: passes of 2, 2 and 1 tokens
    got = _step(uk.unimixing_rmsnorm_pswiglu, inputs)
    chain = [("act", True, False), ("weight", True, False),
             ("act", True, True), ("sum", True, True), ("weight", True, False),
             ("act", True, True), ("sum", True, True), ("weight", True, False),
             ("sum", True, False)]
    assert seen == chain, seen
    monkeypatch.undo()
    monkeypatch.setenv("UNIMIXER_FFN_TOKEN_CHUNK", "2")
    for g, e in zip(got, _step(uk.unimixing_rmsnorm_pswiglu, inputs)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def _step(op, inputs):
    """The op's output and every input's gradient, for a fixed output gradient."""
    leaves = [x for x in inputs if x is not None]
    out = op(*inputs, backend="triton")
    g_out = torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out).to(out.dtype)
    return [out, *torch.autograd.grad(out, leaves, g_out)]


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.parametrize("op", ["pswiglu", "unimixing_rmsnorm_pswiglu"])
def test_ffn_backward_pdl_gpu(monkeypatch, op):
    # the token passes' launches with programmatic dependent launch (UNIMIXER_PDL=1, eager; and 'auto'
    # inside a CUDA graph capture) give the plain launches' numbers bit for bit: four passes at T = 32,
    # so that three act kernels read their rows before their wait
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90 or newer")
    from bench.timing import capture_graph

    shape = (512, 32, 128, 4, 176)
    inputs = _inputs(shape, torch.bfloat16, "cuda")
    if op == "pswiglu":
        inputs = [inputs[0]] + inputs[4:]
    fn = getattr(uk, op)
    monkeypatch.setenv("UNIMIXER_PDL", "0")
    expect = _step(fn, inputs)
    monkeypatch.setenv("UNIMIXER_PDL", "1")
    for got in (_step(fn, inputs), _step(fn, inputs)):
        for g, e in zip(got, expect):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    monkeypatch.setenv("UNIMIXER_PDL", "auto")
    # fresh leaves for the graph: the eager calls' AccumulateGrad nodes are bound to their stream
    leaves = [x.detach().requires_grad_() if x is not None else None for x in inputs]
    graph, got = capture_graph(lambda: _step(fn, leaves))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
