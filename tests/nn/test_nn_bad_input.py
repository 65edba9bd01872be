"""SPEC §9: every public op and every module rejects bad input before running anything, with a
ValueError/TypeError that names the argument, the expected and the actual value."""

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels import nn as uknn
from unimixer_kernels.models import FeatureTokenizer, Ranker, auc, make_click_dataset

T, D, B = 4, 8, 2
N = T * D // B
F8 = torch.float8_e4m3fn


def x3(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*(shape or (2, T, D)), device=device).to(dtype)


def ints(*shape):
    return torch.randint(0, 5, shape or (2, T, D))


def wl(n=N, b=B, **kw):
    return x3(n, b, b, **kw)


def wg(n=N, **kw):
    return x3(n, n, **kw)


def vec(d=D, **kw):
    return x3(d, **kw)


def ffn(h=6, **kw):
    return x3(T, D, h, **kw), x3(T, D, h, **kw), x3(T, h, D, **kw)


def lite(n=N, b=3, r=2, **kw):
    return x3(n, b, **kw), x3(b, B, B, **kw), x3(n, r, **kw), x3(r, n, **kw)


META = dict(device="meta")

# (id, call, exception, the argument the message must name)
OP_CASES = [
    # wrong rank
    ("unimixing/rank", lambda: uk.unimixing(x3(2, T * D), wl(), wg()), ValueError, "x"),
    ("unimixing/w_global rank", lambda: uk.unimixing(x3(), wl(), x3(N)), ValueError, "w_global"),
    ("unimixing_rmsnorm/rank", lambda: uk.unimixing_rmsnorm(x3(T, D), wl(), wg(), vec()), ValueError, "z"),
    ("token_mixer/rank", lambda: uk.token_mixer(x3(T, D), 2), ValueError, "x"),
    ("rms_norm/weight rank", lambda: uk.rms_norm(x3(), x3(1, D)), ValueError, "weight"),
    ("add_rms_norm/weight rank", lambda: uk.add_rms_norm(x3(), x3(), x3(1, D)), ValueError, "weight"),
    ("pswiglu/rank", lambda: uk.pswiglu(x3(T, D), *ffn()), ValueError, "u"),
    ("fm_interaction/rank", lambda: uk.fm_interaction(x3(T, D), x3(T, 3)), ValueError, "x"),
    ("dot_interaction/rank", lambda: uk.dot_interaction(x3(T, D)), ValueError, "x"),
    ("sinkhorn/rank", lambda: uk.sinkhorn(x3(5)), ValueError, "logits"),
    ("lite_weights/rank", lambda: uk.lite_weights(x3(N, 3, 1), *lite()[1:]), ValueError, "omega"),
    # L % B != 0 and D % H != 0
    ("unimixing/L%B", lambda: uk.unimixing(x3(2, 3, 5), wl(3, 4), wg(3)), ValueError, "w_local"),
    ("unimixing_rmsnorm/L%B", lambda: uk.unimixing_rmsnorm(x3(2, 3, 5), wl(3, 4), wg(3), vec(5)),
     ValueError, "w_local"),
    ("token_mixer/D%H", lambda: uk.token_mixer(x3(), 3), ValueError, "heads"),
    # mismatched weight shapes
    ("unimixing/w_global shape", lambda: uk.unimixing(x3(), wl(), wg(N - 1)), ValueError, "w_global"),
    ("unimixing/w_local N", lambda: uk.unimixing(x3(), wl(N - 1), wg()), ValueError, "w_local"),
    ("unimixing_rmsnorm/norm_weight", lambda: uk.unimixing_rmsnorm(x3(), wl(), wg(), vec(D + 1)),
     ValueError, "norm_weight"),
    ("rms_norm/weight shape", lambda: uk.rms_norm(x3(), vec(D + 1)), ValueError, "weight"),
    ("add_rms_norm/residual shape", lambda: uk.add_rms_norm(x3(), x3(2, T, D + 1), vec()),
     ValueError, "residual"),
    ("pswiglu/w_up shape", lambda: uk.pswiglu(x3(), ffn()[0], x3(T, D, 7), ffn()[2]), ValueError, "w_up"),
    ("pswiglu/w_down shape", lambda: uk.pswiglu(x3(), *ffn()[:2], x3(T, 7, D)), ValueError, "w_down"),
    ("pswiglu/b_down shape", lambda: uk.pswiglu(x3(), *ffn(), None, None, x3(T, D + 1)),
     ValueError, "b_down"),
    ("fm_interaction/y shape", lambda: uk.fm_interaction(x3(), x3(T + 1, 3)), ValueError, "y"),
    ("sinkhorn/not square", lambda: uk.sinkhorn(x3(4, 5)), ValueError, "logits"),
    ("lite_weights/b_g shape", lambda: uk.lite_weights(*lite()[:3], x3(2, N + 1)), ValueError, "b_g"),
    ("lite_weights/basis shape", lambda: uk.lite_weights(lite()[0], x3(2, B, B), *lite()[2:]),
     ValueError, "basis"),
    # unsupported dtype
    ("unimixing/float8", lambda: uk.unimixing(x3(dtype=F8), wl(), wg()), TypeError, "x"),
    ("unimixing/w_local float8", lambda: uk.unimixing(x3(), wl(dtype=F8), wg()), TypeError, "w_local"),
    ("token_mixer/float8", lambda: uk.token_mixer(x3(dtype=F8), 2), TypeError, "x"),
    ("rms_norm/float8", lambda: uk.rms_norm(x3(dtype=F8), vec()), TypeError, "x"),
    ("pswiglu/float8", lambda: uk.pswiglu(x3(dtype=F8), *ffn()), TypeError, "u"),
    ("fm_interaction/float8", lambda: uk.fm_interaction(x3(dtype=F8), x3(T, 3)), TypeError, "x"),
    ("sinkhorn/float8", lambda: uk.sinkhorn(x3(4, 4, dtype=F8)), TypeError, "logits"),
    ("add_rms_norm/residual dtype", lambda: uk.add_rms_norm(x3(), x3(dtype=torch.float16), vec()),
     TypeError, "residual"),
    # mixed devices
    ("unimixing/devices", lambda: uk.unimixing(x3(**META), wl(), wg()), ValueError, "w_local"),
    ("unimixing_rmsnorm/devices", lambda: uk.unimixing_rmsnorm(x3(), wl(), wg(), vec(**META)),
     ValueError, "norm_weight"),
    ("rms_norm/devices", lambda: uk.rms_norm(x3(), vec(**META)), ValueError, "weight"),
    ("add_rms_norm/devices", lambda: uk.add_rms_norm(x3(), x3(**META), vec()), ValueError, "residual"),
    ("pswiglu/devices", lambda: uk.pswiglu(x3(**META), *ffn()), ValueError, "w_gate"),
    ("fm_interaction/devices", lambda: uk.fm_interaction(x3(), x3(T, 3, **META)), ValueError, "y"),
    ("lite_weights/devices", lambda: uk.lite_weights(*lite()[:3], x3(2, N, **META)), ValueError, "b_g"),
    # tau <= 0, K < 1
    ("sinkhorn/tau=0", lambda: uk.sinkhorn(x3(4, 4), tau=0.0), ValueError, "tau"),
    ("sinkhorn/tau<0", lambda: uk.sinkhorn(x3(4, 4), tau=-1.0), ValueError, "tau"),
    ("sinkhorn/iters=0", lambda: uk.sinkhorn(x3(4, 4), iters=0), ValueError, "iters"),
    ("sinkhorn/iters float", lambda: uk.sinkhorn(x3(4, 4), iters=2.0), TypeError, "iters"),
    ("lite_weights/tau", lambda: uk.lite_weights(*lite(), tau=0.0), ValueError, "tau"),
    ("lite_weights/iters", lambda: uk.lite_weights(*lite(), iters=0), ValueError, "iters"),
    # non-floating input
    ("unimixing/int", lambda: uk.unimixing(ints(), wl(), wg()), TypeError, "x"),
    ("unimixing_rmsnorm/int", lambda: uk.unimixing_rmsnorm(ints(), wl(), wg(), vec()), TypeError, "z"),
    ("token_mixer/int", lambda: uk.token_mixer(ints(), 2), TypeError, "x"),
    ("rms_norm/int", lambda: uk.rms_norm(ints(), vec()), TypeError, "x"),
    ("add_rms_norm/int", lambda: uk.add_rms_norm(x3(), ints(), vec()), TypeError, "residual"),
    ("pswiglu/int", lambda: uk.pswiglu(ints(), *ffn()), TypeError, "u"),
    ("fm_interaction/int", lambda: uk.fm_interaction(ints(), x3(T, 3)), TypeError, "x"),
    ("dot_interaction/int", lambda: uk.dot_interaction(ints()), TypeError, "x"),
    ("sinkhorn/int", lambda: uk.sinkhorn(ints(4, 4)), TypeError, "logits"),
    ("sinkhorn/list", lambda: uk.sinkhorn([[1.0]]), TypeError, "logits"),
    ("lite_weights/int", lambda: uk.lite_weights(ints(N, 3), *lite()[1:]), TypeError, "omega"),
    # other arguments
    ("token_mixer/heads type", lambda: uk.token_mixer(x3(), 2.0), TypeError, "heads"),
    ("dot_interaction/order", lambda: uk.dot_interaction(x3(), "diag"), ValueError, "order"),
    ("rms_norm/eps", lambda: uk.rms_norm(x3(), vec(), eps=-1.0), ValueError, "eps"),
    ("unimixing/backend", lambda: uk.unimixing(x3(), wl(), wg(), backend="fast"), ValueError, "backend"),
]


def _assert_informative(exc: BaseException, name: str) -> None:
    msg = str(exc)
    assert msg.startswith(f"{name}:") or f"{name}:" in msg or f"{name}=" in msg, msg
    assert "expected" in msg or "must" in msg, msg  # what was wanted ...
    assert "got" in msg or "%" in msg, msg  # ... and what was given


@pytest.mark.parametrize("call,exc,name", [c[1:] for c in OP_CASES], ids=[c[0] for c in OP_CASES])
def test_public_op_rejects(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    _assert_informative(info.value, name)


# --- modules ----------------------------------------------------------------------------------------

MODULES = {
    "UniMixing": lambda: uknn.UniMixing(T, D, B),
    "UniMixing-lite": lambda: uknn.UniMixing(T, D, B, lite=True),
    "UniMixerBlock": lambda: uknn.UniMixerBlock(T, D, B),
    "UniMixer": lambda: uknn.UniMixer(T, D, B, 2),
    "TokenMixer": lambda: uknn.TokenMixer(T, D),
    "RankMixerBlock": lambda: uknn.RankMixerBlock(T, D),
    "TokenMixerLargeBlock": lambda: uknn.TokenMixerLargeBlock(T, D, 2),
    "PerTokenFFN-swiglu": lambda: uknn.PerTokenFFN(T, D),
    "PerTokenFFN-gelu": lambda: uknn.PerTokenFFN(T, D, activation="gelu"),
    "WukongLayer": lambda: uknn.WukongLayer(T, D),
    "HeterogeneousAttention": lambda: uknn.HeterogeneousAttention(T, D, 2),
    "UnifiedMixing-fm": lambda: uknn.UnifiedMixing(T, D, "fm"),
    "UnifiedMixing-unimixing": lambda: uknn.UnifiedMixing(T, D, "unimixing", block=B),
    "UnifiedMixing-attention": lambda: uknn.UnifiedMixing(T, D, "self-attention", fused=False),
}

INPUTS = {
    "rank": (lambda: x3(T, D), ValueError),
    "wrong T": (lambda: x3(2, T + 1, D), ValueError),
    "wrong D": (lambda: x3(2, T, D + 2), ValueError),
    "float8": (lambda: x3(dtype=F8), TypeError),
    "int": (lambda: ints(), TypeError),
    "not a tensor": (lambda: [[0.0] * D] * T, TypeError),
    "device": (lambda: x3(device="meta"), ValueError),
}


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("module", list(MODULES))
def test_module_rejects_input(module, kind):
    if kind == "device" and module == "TokenMixer":
        pytest.skip("TokenMixer has no parameters, so there is no device to mismatch")
    m = MODULES[module]()
    make, exc = INPUTS[kind]
    with pytest.raises(exc) as info:
        m(make())
    _assert_informative(info.value, "x")
    if kind in ("wrong T", "wrong D"):
        assert f"T={T}" in str(info.value) and f"D={D}" in str(info.value)


CONSTRUCTOR_CASES = [
    ("UniMixing L%B", lambda: uknn.UniMixing(3, 5, 4), ValueError, "block"),
    ("UniMixing block 0", lambda: uknn.UniMixing(T, D, 0), ValueError, "block"),
    ("UniMixing tau=0", lambda: uknn.UniMixing(T, D, B, tau=0.0), ValueError, "tau"),
    ("UniMixing tau<0", lambda: uknn.UniMixing(T, D, B, tau=-0.5), ValueError, "tau"),
    ("UniMixing K=0", lambda: uknn.UniMixing(T, D, B, iters=0), ValueError, "iters"),
    ("UniMixing K float", lambda: uknn.UniMixing(T, D, B, iters=1.5), TypeError, "iters"),
    ("UniMixing init", lambda: uknn.UniMixing(T, D, B, init="zeros"), ValueError, "init"),
    ("UniMixing tokenmixer D%H", lambda: uknn.UniMixing(T, D, B, heads=3, init="tokenmixer"),
     ValueError, "heads"),
    ("UniMixing tokenmixer B", lambda: uknn.UniMixing(T, D, 4, init="tokenmixer"), ValueError, "block"),
    ("UniMixing rank", lambda: uknn.UniMixing(T, D, B, lite=True, rank=0), ValueError, "rank"),
    ("UniMixing bases", lambda: uknn.UniMixing(T, D, B, lite=True, bases=0), ValueError, "bases"),
    ("UniMixing backend", lambda: uknn.UniMixing(T, D, B, backend="fast"), ValueError, "backend"),
    ("UniMixerBlock L%B", lambda: uknn.UniMixerBlock(3, 5, 4), ValueError, "block"),
    ("UniMixerBlock K", lambda: uknn.UniMixerBlock(T, D, B, iters=0), ValueError, "iters"),
    ("UniMixer blocks", lambda: uknn.UniMixer(T, D, B, 0), ValueError, "num_blocks"),
    ("UniMixer tau", lambda: uknn.UniMixer(T, D, B, 2, tau=0.0), ValueError, "tau"),
    ("TokenMixer D%H", lambda: uknn.TokenMixer(T, D, heads=3), ValueError, "heads"),
    ("RankMixer D%T", lambda: uknn.RankMixerBlock(3, D), ValueError, "tokens"),
    ("RankMixer k", lambda: uknn.RankMixerBlock(T, D, k=0), ValueError, "k"),
    ("TokenMixerLarge D%H", lambda: uknn.TokenMixerLargeBlock(T, D, 3), ValueError, "heads"),
    ("PerTokenFFN activation", lambda: uknn.PerTokenFFN(T, D, activation="relu"), ValueError, "activation"),
    ("PerTokenFFN hidden", lambda: uknn.PerTokenFFN(T, D, hidden=0), ValueError, "hidden"),
    ("PerTokenFFN recompute", lambda: uknn.PerTokenFFN(T, D, recompute=1), TypeError, "recompute"),
    ("RankMixer recompute", lambda: uknn.RankMixerBlock(T, D, recompute="no"), TypeError, "recompute"),
    ("WukongLayer rank", lambda: uknn.WukongLayer(T, D, rank=0), ValueError, "rank"),
    ("WukongLayer mlp", lambda: uknn.WukongLayer(T, D, mlp_hidden=(0,)), ValueError, "mlp_hidden[0]"),
    ("HeterogeneousAttention heads", lambda: uknn.HeterogeneousAttention(T, D, 0), ValueError, "heads"),
    ("UnifiedMixing row", lambda: uknn.UnifiedMixing(T, D, "mlp"), ValueError, "row"),
    ("UnifiedMixing block", lambda: uknn.UnifiedMixing(T, D, "unimixing"), TypeError, "block"),
    ("UnifiedMixing D%H", lambda: uknn.UnifiedMixing(T, D, "tokenmixer", heads=3), ValueError, "heads"),
    ("UnifiedMixing tau", lambda: uknn.UnifiedMixing(T, D, "unimixing", block=B, tau=0.0), ValueError, "tau"),
    ("Ranker family", lambda: Ranker(make_click_dataset(10).fields, "mlp"), ValueError, "family"),
]


@pytest.mark.parametrize(
    "call,exc,name", [c[1:] for c in CONSTRUCTOR_CASES], ids=[c[0] for c in CONSTRUCTOR_CASES]
)
def test_module_constructor_rejects(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    _assert_informative(info.value, name)


def test_unimixer_block_rejects_mismatched_second_stream():
    blk = uknn.UniMixerBlock(T, D, B)
    with pytest.raises(ValueError) as info:
        blk(x3(), x3(3, T, D))
    _assert_informative(info.value, "y")
    with pytest.raises(ValueError) as info:
        blk(x3(), x3(2, T, D + 2))
    _assert_informative(info.value, "y")


def test_tokenizer_and_metrics_reject_bad_input():
    fields = make_click_dataset(10).fields
    tok = FeatureTokenizer(fields, T, D)
    with pytest.raises(TypeError, match="features"):
        tok(torch.zeros(2, len(fields)))
    with pytest.raises(ValueError, match="features"):
        tok(torch.zeros(2, len(fields) + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        auc(torch.rand(4), torch.ones(4))
    with pytest.raises(ValueError, match="labels"):
        auc(torch.rand(4), torch.ones(5))
