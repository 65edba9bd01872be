"""Every module against its reference (fp64, the module's own weights), plus shapes and gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimixer_kernels import nn as uknn
from unimixer_kernels import reference
from unimixer_kernels.reference import attention as ref_attention
from unimixer_kernels.reference import blocks as ref_blocks
from unimixer_kernels.reference import unified as ref_unified

F64 = torch.float64


def _perturb_(module):
    """Norm weights start at 1 and biases at 0; move them so the comparison sees them."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def _backward_reaches_everything(module, *inputs):
    out = module(*inputs)
    out = out if isinstance(out, torch.Tensor) else sum(o.square().sum() for o in out)
    out.square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _block_params(blk):
    w_local, w_global = blk.mixing.compute_weights()
    f = blk.ffn
    return dict(
        w_local=w_local, w_global=w_global, norm_y=blk.norm_y, norm_mix=blk.norm_mix, norm_x=blk.norm_x,
        w_gate=f.w_gate, w_up=f.w_up, w_down=f.w_down, b_gate=f.b_gate, b_up=f.b_up, b_down=f.b_down,
    )


@pytest.mark.parametrize("lite", [False, True])
@pytest.mark.parametrize("tokens,dim,block", [(4, 8, 2), (3, 4, 6)])
def test_unimixer_block_matches_reference(lite, tokens, dim, block):
    blk = _perturb_(uknn.UniMixerBlock(tokens, dim, block, lite=lite, hidden=12)).double()
    x, y = torch.randn(2, tokens, dim, dtype=F64), torch.randn(2, tokens, dim, dtype=F64)
    got = blk(x, y)
    p = _block_params(blk)
    expected = ref_blocks.unimixer_block(x, y, *(p[k] for k in ref_blocks.UNIMIXER_BLOCK_KEYS),
                                         p["b_gate"], p["b_up"], p["b_down"])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    x0 = blk(x)
    torch.testing.assert_close(x0[0], blk(x, x)[0])
    _backward_reaches_everything(blk.float(), x.float())


def test_unimixer_block_one_stream_takes_the_norms_sum():
    # y=None reuses add_rms_norm's sum as Ybar'; it must equal the two-stream path with y = x
    blk = _perturb_(uknn.UniMixerBlock(4, 8, 2, hidden=12)).double()
    x = torch.randn(3, 4, 8, dtype=F64, requires_grad=True)
    one = blk(x)
    two = blk(x, x.clone())
    g = [torch.randn_like(t) for t in one]
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(one, [x, *blk.parameters()], g)
    gb = torch.autograd.grad(two, [x, *blk.parameters()], g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lite", [False, True])
def test_unimixer_stack_matches_reference(lite):
    stack = _perturb_(uknn.UniMixer(4, 8, 2, 3, lite=lite, hidden=16, bias=False)).double()
    x = torch.randn(3, 4, 8, dtype=F64)
    blocks = [_block_params(b) for b in stack.blocks]
    torch.testing.assert_close(stack(x), ref_blocks.unimixer_stack(x, blocks, stack.final_norm))
    assert stack(x).shape == x.shape
    _backward_reaches_everything(stack.float(), x.float())


def test_unimixer_temperature_reaches_every_block():
    stack = uknn.UniMixer(4, 8, 2, 2)
    stack.set_temperature(0.2)
    assert stack.tau == 0.2 and all(b.mixing.tau == 0.2 for b in stack.blocks)


def test_unimixer_overlap_reaches_every_block(monkeypatch):
    # the blocks pass overlap to their mixing; UNIMIXER_OVERLAP is its default when none is given
    assert not any(b.mixing.overlap for b in uknn.UniMixer(4, 8, 2, 2, overlap=False).blocks)
    assert all(b.mixing.overlap for b in uknn.UniMixer(4, 8, 2, 2).blocks)
    monkeypatch.setenv("UNIMIXER_OVERLAP", "0")
    assert not uknn.UniMixerBlock(4, 8, 2, lite=True).mixing.overlap


def test_unimixer_eval_equals_train():
    stack = uknn.UniMixer(4, 8, 2, 2, lite=True, init="random")
    x = torch.randn(2, 4, 8)
    y = stack(x).detach()
    stack.eval()
    assert torch.equal(stack(x), y)


def test_token_mixer_module():
    m = uknn.TokenMixer(3, 12, heads=2)
    x = torch.randn(2, 3, 12)
    out = m(x)
    assert torch.equal(out, reference.token_mixer(x, 2))
    assert torch.equal(m.inverse(out), x)
    assert list(m.parameters()) == []


def test_rankmixer_block_matches_reference_and_parameter_count():
    tokens, dim, k = 4, 8, 4
    m = _perturb_(uknn.RankMixerBlock(tokens, dim, k)).double()
    x = torch.randn(2, tokens, dim, dtype=F64)
    f = m.ffn
    expected = ref_blocks.rankmixer_block(x, m.ln1_weight, m.ln1_bias, f.w1, f.b1, f.w2, f.b2,
                                          m.ln2_weight, m.ln2_bias)
    torch.testing.assert_close(m(x), expected)
    _backward_reaches_everything(m.float(), x.float())


@pytest.mark.parametrize("tokens,dim,layers", [(16, 64, 2), (8, 32, 3)])
def test_rankmixer_parameter_count_is_about_2kLTD2(tokens, dim, layers):
    k = 4
    stack = torch.nn.Sequential(*(uknn.RankMixerBlock(tokens, dim, k) for _ in range(layers)))
    approx = 2 * k * layers * tokens * dim**2
    exact_extra = layers * (tokens * (k * dim + dim) + 4 * dim)  # FFN biases and the two LayerNorms
    assert uknn.num_parameters(stack) == approx + exact_extra
    assert abs(uknn.num_parameters(stack) / approx - 1) < 0.05


@pytest.mark.parametrize("tokens,dim,heads", [(4, 8, 4), (4, 8, 2), (3, 12, 4)])
def test_tokenmixer_large_block_matches_reference(tokens, dim, heads):
    m = _perturb_(uknn.TokenMixerLargeBlock(tokens, dim, heads, hidden=10)).double()
    x = torch.randn(2, tokens, dim, dtype=F64)
    f = m.ffn
    assert f.w_gate.shape == (heads, tokens * dim // heads, 10)
    expected = ref_blocks.tokenmixer_large_block(x, heads, m.norm_weight, f.w_gate, f.w_up, f.w_down,
                                                 f.b_gate, f.b_up, f.b_down)
    torch.testing.assert_close(m(x), expected)
    _backward_reaches_everything(m.float(), x.float())


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_per_token_ffn_matches_reference(activation):
    m = uknn.PerTokenFFN(3, 8, 12, activation).double()
    x = torch.randn(2, 3, 8, dtype=F64)
    if activation == "swiglu":
        expected = reference.pswiglu(x, m.w_gate, m.w_up, m.w_down, m.b_gate, m.b_up, m.b_down)
    else:
        expected = reference.pgelu_ffn(x, m.w1, m.b1, m.w2, m.b2)
    torch.testing.assert_close(m(x), expected)
    _backward_reaches_everything(m.float(), x.float())


@pytest.mark.triton
@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_per_token_ffn_recompute_option(device, monkeypatch, activation):
    """``recompute=False`` reaches the op (it then saves the hidden pre-activations) and gives the same
    output and gradients as the default, bit for bit: the saved values are the recomputed ones."""
    from unimixer_kernels import ops

    op = ops.pswiglu if activation == "swiglu" else ops.pgelu_ffn
    seen = []
    monkeypatch.setattr(ops, op.__name__, lambda *a, **kw: seen.append(kw["recompute"]) or op(*a, **kw))
    x = torch.randn(3, 2, 8, device=device)
    results = []
    for recompute in (True, False):
        torch.manual_seed(0)
        m = uknn.PerTokenFFN(2, 8, 12, activation, recompute=recompute, backend="triton").to(device)
        xr = x.clone().requires_grad_()
        out = m(xr)
        out.square().sum().backward()
        results.append([out.detach(), xr.grad] + [p.grad for p in m.parameters()])
    assert seen == [True, False]
    for a, b in zip(*results):
        assert torch.equal(a, b)
    blk = uknn.RankMixerBlock(2, 8, recompute=False)
    assert blk.ffn.recompute is False


def test_per_token_ffn_default_widths():
    assert uknn.PerTokenFFN(2, 96).hidden == 128  # SPEC §10 lite-2.5m: D=96, h=128
    assert uknn.PerTokenFFN(2, 128).hidden == 176  # paper-small: D=128, h=176
    assert uknn.PerTokenFFN(2, 512).hidden == 688  # paper-100m: D=512, h=688
    assert uknn.PerTokenFFN(2, 8, activation="gelu").hidden == 32


@pytest.mark.parametrize("num_fm,num_lcb", [(2, 2), (3, 2)])
def test_wukong_layer_matches_reference(num_fm, num_lcb):
    n, d = 4, 6
    m = _perturb_(uknn.WukongLayer(n, d, num_fm=num_fm, num_lcb=num_lcb, rank=3, mlp_hidden=(10,))).double()
    assert (m.w_res is None) == (num_fm + num_lcb == n)
    x = torch.randn(2, n, d, dtype=F64)
    expected = ref_blocks.wukong_layer(x, m.y, m.fm_ln_weight, m.fm_ln_bias, m.mlp_layers(), m.w_l,
                                       m.ln_weight, m.ln_bias, m.w_res)
    out = m(x)
    assert out.shape == (2, num_fm + num_lcb, d)
    torch.testing.assert_close(out, expected)
    _backward_reaches_everything(m.float(), x.float())


def test_heterogeneous_attention_matches_reference():
    m = uknn.HeterogeneousAttention(4, 8, heads=2, head_dim=3, value_dim=5).double()
    x = torch.randn(2, 4, 8, dtype=F64)
    expected = ref_attention.heterogeneous_attention(x, m.w_q, m.w_k, m.w_v, m.w_o, 2)
    torch.testing.assert_close(m(x), expected)
    assert m.w_q.shape == (4, 8, 6) and m.w_o.shape == (4, 10, 8)
    _backward_reaches_everything(m.float(), x.float())


UNIFIED = [
    ("tokenmixer", dict(heads=2)),
    ("unimixing", dict(block=2, init="random")),
    ("unimixing-lite", dict(block=2, init="random")),
    ("self-attention", dict(qk_dim=3, value_dim=5)),
    ("heterogeneous-attention", dict(qk_dim=3, value_dim=5)),
    ("fm", dict(rank=3)),
]


@pytest.mark.parametrize("row,kwargs", UNIFIED, ids=[u[0] for u in UNIFIED])
def test_unified_mixing_fused_equals_framework(row, kwargs):
    m = uknn.UnifiedMixing(4, 8, row, **kwargs).double()
    x = torch.randn(3, 4, 8, dtype=F64)
    fused = m(x)
    m.fused = False
    torch.testing.assert_close(m(x), fused)
    if list(m.parameters()):
        _backward_reaches_everything(m.float(), x.float())


def test_unified_mixing_rows_equal_classic_formulas():
    x = torch.randn(3, 4, 8, dtype=F64)
    tm = uknn.UnifiedMixing(4, 8, "tokenmixer", heads=2, fused=False)
    assert torch.equal(tm(x), reference.token_mixer(x, 2))
    sa = uknn.UnifiedMixing(4, 8, "self-attention", fused=False).double()
    q, k, v = x @ sa.w_q, x @ sa.w_k, x @ sa.w_v
    att = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
    torch.testing.assert_close(sa(x), att @ v)
    fm = uknn.UnifiedMixing(4, 8, "fm", rank=3, fused=False).double()
    torch.testing.assert_close(fm(x), x @ (x.transpose(-1, -2) @ fm.y))
    ha = uknn.UnifiedMixing(4, 8, "heterogeneous-attention", fused=False).double()
    expected = ref_attention.heterogeneous_attention(x, ha.w_q, ha.w_k, ha.w_v, None, 1)
    torch.testing.assert_close(ha(x), expected)
    um = uknn.UnifiedMixing(4, 8, "unimixing", block=2, init="random", fused=False).double()
    expected = ref_unified.unified_row(
        x, "unimixing", theta_local=um.mixing.theta_local, theta_global=um.mixing.theta_global,
        tau=1.0, iters=20,
    )
    torch.testing.assert_close(um(x), expected)
    assert um.global_pattern(x).shape == (16, 16) and sa.global_pattern(x).shape == (3, 4, 4)


def test_unified_mixing_temperature():
    m = uknn.UnifiedMixing(4, 8, "unimixing", block=2)
    m.set_temperature(0.3)
    assert m.mixing.tau == 0.3
    with pytest.raises(ValueError, match="row"):
        uknn.UnifiedMixing(4, 8, "fm").set_temperature(0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(dtype):
    x = torch.randn(2, 4, 8).to(dtype)
    for m in (uknn.UniMixer(4, 8, 2, 1), uknn.RankMixerBlock(4, 8), uknn.TokenMixerLargeBlock(4, 8, 2)):
        out = m(x)
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


@settings(max_examples=20, deadline=None)
@given(tokens=st.integers(1, 4), dim=st.integers(1, 6), block=st.integers(1, 8), lite=st.booleans(),
       bs=st.integers(1, 3))
def test_sweep_unimixer_block_matches_reference(tokens, dim, block, lite, bs):
    block = math.gcd(tokens * dim, block)  # any divisor of L, straddling tokens or not
    blk = _perturb_(uknn.UniMixerBlock(tokens, dim, block, lite=lite, hidden=8, tau=0.5)).double()
    x, y = torch.randn(bs, tokens, dim, dtype=F64), torch.randn(bs, tokens, dim, dtype=F64)
    p = _block_params(blk)
    expected = ref_blocks.unimixer_block(x, y, *(p[k] for k in ref_blocks.UNIMIXER_BLOCK_KEYS),
                                         p["b_gate"], p["b_up"], p["b_down"])
    for g, e in zip(blk(x, y), expected):
        torch.testing.assert_close(g, e)


@pytest.mark.triton
@pytest.mark.parametrize("two_streams", [False, True], ids=["x", "x-y"])
def test_unimixer_block_triton_step_has_no_torch_glue(device, two_streams):
    """A training step of the Triton block leaves nothing to torch but the one gradient sum
    autograd must do (x feeds both the first norm and the last one's residual; with two streams,
    y and o are used twice too): the weight-gradient partials are summed in the kernels' own
    launches, Xbar + RMSNorm(Ybar) is one kernel, and no zero gradient is filled for an output
    that only the backward reads."""
    from torch.profiler import ProfilerActivity, profile

    blk = uknn.UniMixerBlock(4, 16, 4, hidden=24, bias=False, backend="triton", iters=2).to(device)
    x = torch.randn(3, 4, 16, device=device, requires_grad=True)
    y = torch.randn(3, 4, 16, device=device, requires_grad=True) if two_streams else None
    leaves = [x, *([y] if two_streams else []), *blk.parameters()]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outs = blk(x, y)
        torch.autograd.grad(outs, leaves, [torch.randn_like(o) for o in outs])
    calls = [ev.name for ev in prof.events()]
    assert calls.count("aten::sum") == 0
    assert calls.count("aten::zero_") == 0
    # the one accumulation of x's gradient; with two streams also y's and o's, and y + o itself
    assert calls.count("aten::add") + calls.count("aten::add_") == (4 if two_streams else 1)


@pytest.mark.triton
@pytest.mark.parametrize("lite", [False, True])
def test_unimixer_block_mixing_weights_backward_runs_after_the_first_norm(device, lite):
    """The block records its mixing weights before ``Xbar + RMSNorm(Ybar)``: autograd runs the ready
    node recorded last first, so the weights' backward (Sinkhorn's ``N x N`` buffers, at large ``N``
    the training step's peak) waits until the norm's backward has freed the gradients it consumes."""
    blk = uknn.UniMixerBlock(4, 16, 4, hidden=24, lite=lite, rank=2, bases=2, backend="triton",
                             iters=2).to(device)
    x = torch.randn(3, 4, 16, device=device, requires_grad=True)
    seen, stack = {}, [o.grad_fn for o in blk(x)]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen[node] = node.name()
            stack += [f for f, _ in node.next_functions]
    seq = {name: node._sequence_nr() for node, name in seen.items()}
    weights = [s for name, s in seq.items() if "sinkhorn" in name or "lite_" in name]
    norm = [s for name, s in seq.items() if "rms_norm_residual" in name]
    assert weights and len(norm) == 1 and max(weights) < norm[0], sorted(seq.items(), key=lambda kv: kv[1])
