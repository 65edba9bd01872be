"""The maths identities of SPEC §1, §2, §2.1 and §5, checked on the references in fp64.

Every expected value here is built independently of the code under test (explicit index loops,
explicit operators, the classic formula of each method), never by calling the same function
twice.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unimixer_kernels as uk
from unimixer_kernels import reference
from unimixer_kernels.reference import attention as ref_attention
from unimixer_kernels.reference import blocks as ref_blocks
from unimixer_kernels.reference import unified as ref_unified

F64 = torch.float64


def permutation_index(tokens: int, dim: int, heads: int) -> torch.Tensor:
    """``src[o]``: the flat input index that TokenMixer sends to flat output index ``o``, from
    SPEC §1's sentence ``out[h, t*c + j] = x[t, h*c + j]``, one entry at a time."""
    c = dim // heads
    src = torch.empty(tokens * dim, dtype=torch.long)
    for h in range(heads):
        for t in range(tokens):
            for j in range(c):
                src[h * (tokens * c) + t * c + j] = t * dim + h * c + j
    return src


def explicit_operator(w_local: torch.Tensor, w_global: torch.Tensor) -> torch.Tensor:
    """The ``L x L`` matrix of UniMixing on column vectors, entry by entry:
    ``y[m*B + i] = sum_n sum_k W_G[m, n] * x[n*B + k] * W_B[n][k, i]``."""
    n, b, _ = w_local.shape
    op = torch.zeros(n * b, n * b, dtype=w_local.dtype)
    for m in range(n):
        for nn_ in range(n):
            for i in range(b):
                for k in range(b):
                    op[m * b + i, nn_ * b + k] = w_global[m, nn_] * w_local[nn_, k, i]
    return op


# --- TokenMixer is a permutation (SPEC §1) --------------------------------------------------------

TMX_SHAPES = [(4, 8, 4), (3, 12, 2), (2, 6, 3), (5, 10, 5), (4, 8, 8), (3, 4, 1), (6, 12, 4)]


@pytest.mark.parametrize("tokens,dim,heads", TMX_SHAPES)
def test_token_mixer_is_the_independent_permutation(tokens, dim, heads):
    x = torch.randn(3, tokens, dim, dtype=F64)
    expected = x.reshape(3, -1)[:, permutation_index(tokens, dim, heads)]
    for out in (reference.token_mixer(x, heads), uk.token_mixer(x, heads, backend="reference")):
        assert out.shape == (3, heads, tokens * dim // heads)
        assert torch.equal(out.reshape(3, -1), expected)


def test_token_mixer_really_mixes():
    # guards against a "mixing" that is secretly the identity
    x = torch.randn(2, 4, 8, dtype=F64)
    assert not torch.equal(reference.token_mixer(x, 4), x)


@pytest.mark.parametrize("tokens,heads", [(4, 4), (3, 3), (6, 6)])
def test_token_mixer_square_is_an_involution(tokens, heads):
    x = torch.randn(2, tokens, 2 * heads, dtype=F64)
    assert torch.equal(reference.token_mixer(reference.token_mixer(x, heads), heads), x)


@pytest.mark.parametrize("tokens,dim,heads", TMX_SHAPES)
def test_token_unmixer_inverts_token_mixer(tokens, dim, heads):
    x = torch.randn(2, tokens, dim, dtype=F64)
    assert torch.equal(ref_blocks.token_unmixer(reference.token_mixer(x, heads), tokens), x)


# --- UniMixing equals its L x L operator (SPEC §2) ----------------------------------------------

MIX_SHAPES = [(4, 8, 4), (4, 8, 2), (3, 4, 6), (2, 6, 4), (5, 3, 5), (2, 5, 1), (3, 6, 9)]


@pytest.mark.parametrize("tokens,dim,block", MIX_SHAPES)
def test_unimixing_equals_explicit_operator(tokens, dim, block):
    n = tokens * dim // block
    x = torch.randn(3, tokens, dim, dtype=F64)
    w_local, w_global = torch.randn(n, block, block, dtype=F64), torch.randn(n, n, dtype=F64)
    op = explicit_operator(w_local, w_global)
    torch.testing.assert_close(reference.unimixing_operator(w_local, w_global), op, rtol=0, atol=0)
    expected = (op @ x.reshape(3, -1).T).T.reshape(3, tokens, dim)
    torch.testing.assert_close(reference.unimixing(x, w_local, w_global), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        uk.unimixing(x, w_local, w_global, backend="reference"), expected, rtol=1e-12, atol=1e-12
    )


def test_unimixing_blocks_straddle_tokens():
    # B = 6 does not divide D = 4: block 1 holds the end of token 1 and all of token 2
    x = torch.randn(1, 3, 4, dtype=F64)
    w_local = torch.randn(2, 6, 6, dtype=F64)
    w_global = torch.eye(2, dtype=F64)
    y = reference.unimixing(x, w_local, w_global).reshape(-1)
    flat = x.reshape(-1)
    torch.testing.assert_close(y[6:], flat[6:] @ w_local[1])


# --- TokenMixer is the UniMixing special case (SPEC §2) ---------------------------------------------

SPECIAL = [
    (4, 8, 4, 2), (4, 16, 4, 2), (4, 16, 4, 1), (3, 12, 2, 3), (3, 12, 2, 2), (2, 8, 4, 1), (4, 8, 2, 4),
]


@pytest.mark.parametrize("tokens,dim,heads,block", SPECIAL)
def test_tokenmixer_is_unimixing_special_case(tokens, dim, heads, block):
    assert (dim // heads) % block == 0
    n = tokens * dim // block
    x = torch.randn(2, tokens, dim, dtype=F64)
    w_g = reference.tokenmixer_global(tokens, heads, dim, block).to(F64)
    # a 0/1 permutation, entry by entry from SPEC §2's formula
    r = dim // heads // block
    expected_g = torch.zeros(n, n, dtype=F64)
    for h in range(heads):
        for t in range(tokens):
            for j in range(r):
                expected_g[(h * tokens + t) * r + j, (t * heads + h) * r + j] = 1
    assert torch.equal(w_g, expected_g)
    eye = torch.eye(block, dtype=F64).expand(n, block, block)
    mixed = reference.unimixing(x, eye, w_g).reshape(2, -1)
    expected = x.reshape(2, -1)[:, permutation_index(tokens, dim, heads)]
    assert torch.equal(mixed, expected)


# --- Sinkhorn (SPEC §2.1) --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 8, 17])
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_sinkhorn_columns_exact_rows_converge(n, tau):
    logits = torch.randn(2, n, n, dtype=F64)
    p = reference.sinkhorn(logits, tau=tau, iters=1)
    torch.testing.assert_close(p.sum(-2), torch.ones(2, n, dtype=F64), rtol=0, atol=1e-12)
    p = reference.sinkhorn(logits, tau=1.0, iters=300)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, n, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(p.sum(-2), torch.ones(2, n, dtype=F64), rtol=0, atol=1e-12)
    assert (p >= 0).all()


def test_sinkhorn_symmetric_output_at_large_k():
    logits = torch.randn(9, 9, dtype=F64)
    p = reference.sinkhorn(logits, tau=1.0, iters=400, symmetric=True)
    torch.testing.assert_close(p, p.T, rtol=0, atol=1e-9)
    q = reference.sinkhorn(logits, tau=1.0, iters=400, symmetric=False)
    assert (q - q.T).abs().max() > 1e-3  # without symmetrising the logits it is not symmetric


def test_sinkhorn_low_temperature_is_finite_and_log_domain():
    logits = 30 * torch.randn(16, 16)
    p = reference.sinkhorn(logits, tau=0.05, iters=20)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-2), torch.ones(16), rtol=0, atol=1e-5)


def test_sinkhorn_fp32_for_half_input():
    p = reference.sinkhorn(torch.randn(5, 5).half(), tau=0.5, iters=3)
    assert p.dtype == torch.float32


# --- the unified framework (SPEC §5): each row equals its classic formula --------------------------


def _classic_attention(x, w_q, w_k, w_v):
    q, k, v = x @ w_q, x @ w_k, x @ w_v
    scores = torch.einsum("std,sud->stu", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("stu,sue->ste", torch.softmax(scores, -1), v)


def test_unified_tokenmixer_row():
    for tokens, dim, heads in [(4, 8, 4), (3, 12, 2), (2, 6, 3)]:
        x = torch.randn(2, tokens, dim, dtype=F64)
        out = ref_unified.unified_row(x, "tokenmixer", heads=heads)
        expected = x.reshape(2, -1)[:, permutation_index(tokens, dim, heads)]
        assert torch.equal(out.reshape(2, -1), expected)


def test_unified_self_attention_row():
    x = torch.randn(3, 5, 8, dtype=F64)
    w_q, w_k, w_v = (torch.randn(8, d, dtype=F64) for d in (4, 4, 6))
    out = ref_unified.unified_row(x, "self-attention", w_q=w_q, w_k=w_k, w_v=w_v)
    expected = _classic_attention(x, w_q, w_k, w_v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ref_attention.self_attention(x, w_q, w_k, w_v), expected)


def test_unified_heterogeneous_attention_row():
    x = torch.randn(3, 4, 6, dtype=F64)
    w_q, w_k, w_v = (torch.randn(4, 6, d, dtype=F64) for d in (3, 3, 5))
    out = ref_unified.unified_row(x, "heterogeneous-attention", w_q=w_q, w_k=w_k, w_v=w_v)
    # classic: token-specific projections, then softmax attention, token by token
    expected = torch.empty(3, 4, 5, dtype=F64)
    for t in range(4):
        q_t = x[:, t] @ w_q[t]
        scores = torch.stack([(q_t * (x[:, s] @ w_k[s])).sum(-1) for s in range(4)], -1) / math.sqrt(3)
        att = torch.softmax(scores, -1)
        expected[:, t] = sum(att[:, s, None] * (x[:, s] @ w_v[s]) for s in range(4))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ref_attention.heterogeneous_attention(x, w_q, w_k, w_v, None, 1), expected)


def test_unified_fm_row():
    x = torch.randn(3, 6, 5, dtype=F64)
    y = torch.randn(6, 4, dtype=F64)
    out = ref_unified.unified_row(x, "fm", y=y)
    expected = torch.einsum("snd,sdk->snk", x, torch.einsum("snd,nk->sdk", x, y))  # X (X^T Y)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(reference.fm_interaction(x, y), expected)


@pytest.mark.parametrize("lite", [False, True])
def test_unified_unimixing_rows(lite):
    tokens, dim, block = 3, 4, 2
    n = tokens * dim // block
    x = torch.randn(2, tokens, dim, dtype=F64)
    if lite:
        p = dict(omega=torch.randn(n, 3, dtype=F64), basis=torch.randn(3, block, block, dtype=F64),
                 a_g=torch.randn(n, 2, dtype=F64), b_g=torch.randn(2, n, dtype=F64))
        w_local, w_global = reference.lite_weights(**p, tau=0.7, iters=2)
        out = ref_unified.unified_row(x, "unimixing-lite", tau=0.7, iters=2, **p)
    else:
        tl, tg = torch.randn(n, block, block, dtype=F64), torch.randn(n, n, dtype=F64)
        w_local, w_global = reference.sinkhorn(tl, 0.7, 2), reference.sinkhorn(tg, 0.7, 2)
        out = ref_unified.unified_row(x, "unimixing", theta_local=tl, theta_global=tg, tau=0.7, iters=2)
    expected = (explicit_operator(w_local, w_global) @ x.reshape(2, -1).T).T.reshape(x.shape)
    torch.testing.assert_close(out, expected)


def test_unified_unknown_row():
    with pytest.raises(ValueError, match="row"):
        ref_unified.unified_row(torch.randn(1, 2, 2), "mlp")


# --- hypothesis sweeps --------------------------------------------------------------------------


@st.composite
def mixing_shapes(draw):
    tokens = draw(st.integers(1, 6))
    heads = draw(st.integers(1, 4))
    c = draw(st.integers(1, 4))
    dim = heads * c
    blocks_of_c = [b for b in range(1, c + 1) if c % b == 0]
    block = draw(st.sampled_from(blocks_of_c))
    return tokens, dim, heads, block


@settings(max_examples=25, deadline=None)
@given(shape=mixing_shapes(), bs=st.integers(1, 3))
def test_sweep_tokenmixer_permutation_and_special_case(shape, bs):
    tokens, dim, heads, block = shape
    x = torch.randn(bs, tokens, dim, dtype=F64)
    expected = x.reshape(bs, -1)[:, permutation_index(tokens, dim, heads)]
    assert torch.equal(reference.token_mixer(x, heads).reshape(bs, -1), expected)
    n = tokens * dim // block
    eye = torch.eye(block, dtype=F64).expand(n, block, block)
    w_g = reference.tokenmixer_global(tokens, heads, dim, block).to(F64)
    assert torch.equal(reference.unimixing(x, eye, w_g).reshape(bs, -1), expected)


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 5), dim=st.integers(1, 6), block=st.integers(1, 8), bs=st.integers(1, 3))
def test_sweep_unimixing_operator(tokens, dim, block, bs):
    length = tokens * dim
    if length % block:
        block = math.gcd(length, block)
    n = length // block
    x = torch.randn(bs, tokens, dim, dtype=F64)
    w_local, w_global = torch.randn(n, block, block, dtype=F64), torch.randn(n, n, dtype=F64)
    expected = (explicit_operator(w_local, w_global) @ x.reshape(bs, -1).T).T.reshape(x.shape)
    torch.testing.assert_close(reference.unimixing(x, w_local, w_global), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), tau=st.sampled_from([0.05, 0.3, 1.0, 3.0]), iters=st.integers(1, 5),
       symmetric=st.booleans())
def test_sweep_sinkhorn_columns_sum_to_one(n, tau, iters, symmetric):
    p = reference.sinkhorn(torch.randn(n, n, dtype=F64) * 3, tau, iters, symmetric)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(0), torch.ones(n, dtype=F64), rtol=0, atol=1e-10)
