"""``torch.autograd.gradcheck`` of every reference in fp64 on tiny shapes.

The references are the ground truth for every kernel's backward, so their own gradients must be
the true derivatives of the SPEC's functions.
"""

import inspect

import pytest
import torch

from unimixer_kernels import reference
from unimixer_kernels.reference import attention as ref_attention
from unimixer_kernels.reference import blocks as ref_blocks
from unimixer_kernels.reference import token_mixer_norm as ref_tm_norm
from unimixer_kernels.reference import unified as ref_unified

F64 = torch.float64


def r(*shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def _stack(x, fn, *params, n_blocks=2):
    """``unimixer_stack`` takes a list of dicts; rebuild it from flat positional tensors."""
    keys = ref_blocks.UNIMIXER_BLOCK_KEYS
    blocks = [dict(zip(keys, params[i * len(keys) : (i + 1) * len(keys)])) for i in range(n_blocks)]
    return fn(x, blocks, params[-1])


def _mixing_params(n, b, h, d, t):
    return [
        r(n, b, b).detach().abs().requires_grad_(),  # any weights; abs only to avoid cancellation
        r(n, n), 1 + 0.1 * r(d).detach().requires_grad_(), 1 + 0.1 * r(d).detach().requires_grad_(),
        1 + 0.1 * r(d).detach().requires_grad_(), r(t, d, h), r(t, d, h), r(t, h, d),
    ]


# (name, function, inputs) -- the function takes exactly the tensors, in order
CASES = [
    ("sinkhorn", lambda m: reference.sinkhorn(m, 0.7, 3), (r(2, 4, 4),)),
    ("sinkhorn_asym", lambda m: reference.sinkhorn(m, 1.3, 2, symmetric=False), (r(5, 5),)),
    ("lite_weights", lambda o, z, a, b: reference.lite_weights(o, z, a, b, 0.8, 2),
     (r(4, 2), r(2, 3, 3), r(4, 2), r(2, 4))),
    ("lite_local_logits", reference.lite_local_logits, (r(4, 2), r(2, 3, 3))),
    ("lite_local_weights", lambda o, z: reference.lite_local_weights(o, z, 0.8, 2, False),
     (r(4, 2), r(2, 3, 3))),
    ("lite_global_weights", lambda a, b: reference.lite_global_weights(a, b, 0.8, 2), (r(4, 2), r(2, 4))),
    ("unimixing", reference.unimixing, (r(2, 3, 4), r(6, 2, 2), r(6, 6))),
    ("unimixing_straddle", reference.unimixing, (r(2, 3, 4), r(2, 6, 6), r(2, 2))),
    ("unimixing_rmsnorm", reference.unimixing_rmsnorm, (r(2, 3, 4), r(3, 4, 4), r(3, 3), r(4))),
    ("unimixing_operator", reference.unimixing_operator, (r(3, 2, 2), r(3, 3))),
    ("token_mixer", lambda x: reference.token_mixer(x, 2), (r(2, 3, 4),)),
    ("token_unmixer", lambda m: ref_blocks.token_unmixer(m, 3), (r(2, 2, 6),)),
    ("token_mixer_residual_norm_layer", lambda x, w, b: ref_tm_norm.token_mixer_residual_norm(x, 3, w, b),
     (r(2, 3, 6), r(6), r(6))),
    ("token_mixer_residual_norm_rms",
     lambda x, w: ref_tm_norm.token_mixer_residual_norm(x, 3, w, None, 1e-6, "rms"), (r(2, 3, 6), r(6))),
    ("residual_norm_layer", ref_tm_norm.residual_norm, (r(2, 3, 6), r(2, 3, 6), r(6), r(6))),
    ("residual_norm_rms", lambda x, y, w: ref_tm_norm.residual_norm(x, y, w, None, 1e-6, "rms"),
     (r(2, 3, 6), r(2, 3, 6), r(6))),
    ("rms_norm", reference.rms_norm, (r(2, 3, 5), r(5))),
    ("add_rms_norm", reference.add_rms_norm, (r(2, 3, 5), r(2, 3, 5), r(5))),
    ("layer_norm", reference.layer_norm, (r(2, 3, 5), r(5), r(5))),
    ("pswiglu", reference.pswiglu,
     (r(2, 3, 4), r(3, 4, 5), r(3, 4, 5), r(3, 5, 4), r(3, 5), r(3, 5), r(3, 4))),
    ("pswiglu_nobias", reference.pswiglu, (r(2, 3, 4), r(3, 4, 5), r(3, 4, 5), r(3, 5, 4))),
    ("pgelu_ffn", reference.pgelu_ffn, (r(2, 3, 4), r(3, 4, 6), r(3, 6), r(3, 6, 4), r(3, 4))),
    ("fm_interaction", reference.fm_interaction, (r(2, 4, 3), r(4, 2))),
    ("dot_interaction_triu", lambda x: reference.dot_interaction(x, "triu"), (r(2, 4, 3),)),
    ("dot_interaction_tril", lambda x: reference.dot_interaction(x, "tril"), (r(2, 4, 3),)),
    ("rankmixer_block", ref_blocks.rankmixer_block,
     (r(2, 3, 6), r(6), r(6), r(3, 6, 8), r(3, 8), r(3, 8, 6), r(3, 6), r(6), r(6))),
    ("tokenmixer_large_block", lambda x, w, g, u, d, bg, bu, bd: ref_blocks.tokenmixer_large_block(
        x, 2, w, g, u, d, bg, bu, bd),
     (r(2, 3, 4), r(4), r(2, 6, 5), r(2, 6, 5), r(2, 5, 6), r(2, 5), r(2, 5), r(2, 6))),
    ("unimixing_rmsnorm_pswiglu", reference.unimixing_rmsnorm_pswiglu,
     (r(2, 3, 4), r(6, 2, 2), r(6, 6), r(4), r(3, 4, 5), r(3, 4, 5), r(3, 5, 4), r(3, 5), r(3, 5), r(3, 4))),
    ("unimixer_block", ref_blocks.unimixer_block, (r(2, 3, 4), r(2, 3, 4), *_mixing_params(6, 2, 5, 4, 3))),
    ("unimixer_stack", lambda x, *p: _stack(x, ref_blocks.unimixer_stack, *p),
     (r(2, 3, 4), *_mixing_params(6, 2, 5, 4, 3), *_mixing_params(6, 2, 5, 4, 3), r(4))),
    ("mlp", lambda x, w1, b1, w2: ref_blocks.mlp(x, [(w1, b1), (w2, None)]),
     (r(3, 4), r(4, 5), r(5), r(5, 2))),
    ("wukong_fmb",
     lambda x, y, lw, lb, w1, b1, w2, b2: ref_blocks.wukong_fmb(x, y, lw, lb, [(w1, b1), (w2, b2)]),
     (r(2, 4, 3), r(4, 2), r(8), r(8), r(8, 5), r(5), r(5, 6), r(6))),
    ("wukong_lcb", ref_blocks.wukong_lcb, (r(2, 4, 3), r(2, 4))),
    ("wukong_layer", lambda x, y, fw, fb, w1, b1, wl, lw, lb: ref_blocks.wukong_layer(
        x, y, fw, fb, [(w1, b1)], wl, lw, lb),
     (r(2, 4, 3), r(4, 2), r(8), r(8), r(8, 6), r(6), r(2, 4), r(3), r(3))),
    ("wukong_layer_projected_residual", lambda x, y, fw, fb, w1, b1, wl, lw, lb, wr: ref_blocks.wukong_layer(
        x, y, fw, fb, [(w1, b1)], wl, lw, lb, wr),
     (r(2, 4, 3), r(4, 2), r(8), r(8), r(8, 6), r(6), r(3, 4), r(3), r(3), r(5, 4))),
    ("self_attention", lambda x, q, k, v, o: ref_attention.self_attention(x, q, k, v, o, heads=2),
     (r(2, 3, 4), r(4, 4), r(4, 4), r(4, 6), r(6, 4))),
    ("heterogeneous_attention", lambda x, q, k, v, o: ref_attention.heterogeneous_attention(x, q, k, v, o, 2),
     (r(2, 3, 4), r(3, 4, 4), r(3, 4, 4), r(3, 4, 6), r(3, 6, 4))),
    ("unified_tokenmixer", lambda x: ref_unified.unified_row(x, "tokenmixer", heads=2), (r(2, 3, 4),)),
    ("unified_unimixing", lambda x, tl, tg: ref_unified.unified_row(
        x, "unimixing", theta_local=tl, theta_global=tg, tau=0.9, iters=2),
     (r(2, 3, 4), r(6, 2, 2), r(6, 6))),
    ("unified_unimixing_lite", lambda x, o, z, a, b: ref_unified.unified_row(
        x, "unimixing-lite", omega=o, basis=z, a_g=a, b_g=b, tau=0.9, iters=1),
     (r(2, 3, 4), r(6, 2), r(2, 2, 2), r(6, 3), r(3, 6))),
    ("unified_self_attention", lambda x, q, k, v: ref_unified.unified_row(
        x, "self-attention", w_q=q, w_k=k, w_v=v), (r(2, 3, 4), r(4, 2), r(4, 2), r(4, 3))),
    ("unified_heterogeneous_attention", lambda x, q, k, v: ref_unified.unified_row(
        x, "heterogeneous-attention", w_q=q, w_k=k, w_v=v), (r(2, 3, 4), r(3, 4, 2), r(3, 4, 2), r(3, 4, 3))),
    ("unified_fm", lambda x, y: ref_unified.unified_row(x, "fm", y=y), (r(2, 4, 3), r(4, 2))),
]


@pytest.mark.parametrize("fn,inputs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reference_gradcheck(fn, inputs):
    inputs = tuple(t.detach().clone().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _public_functions(module) -> set[str]:
    return {
        name for name, obj in vars(module).items()
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    }


def test_every_public_reference_is_gradchecked():
    names = {c[0] for c in CASES}
    exported = {n for n in reference.__all__ if inspect.isfunction(getattr(reference, n))}
    for module in (ref_blocks, ref_attention, ref_tm_norm):
        exported |= _public_functions(module)
    exported -= {"tokenmixer_global"}  # a fixed 0/1 matrix, no differentiable input
    # every unified_* case runs unified_row, which composes G and V through unified_mixing
    if any(n.startswith("unified_") for n in names):
        exported -= {"unified_row", "unified_mixing"}
    missing = {e for e in exported if not any(n == e or n.startswith(e + "_") for n in names)}
    assert not missing, f"references without a gradcheck: {sorted(missing)}"
