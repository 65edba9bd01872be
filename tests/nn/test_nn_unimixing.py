"""UniMixing as a module: forward/backward, initialisation, the eval cache, temperature, counts."""

import math

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels import reference
from unimixer_kernels.nn import UniMixing, num_parameters, unimixing_num_parameters

F64 = torch.float64
SHAPES = [(4, 8, 2), (3, 4, 6), (2, 6, 4)]  # (T, D, B): B | D, B straddling tokens, B > D


@pytest.mark.parametrize("lite", [False, True])
@pytest.mark.parametrize("tokens,dim,block", SHAPES)
def test_forward_backward(lite, tokens, dim, block):
    m = UniMixing(tokens, dim, block, lite=lite, init="random")
    x = torch.randn(3, tokens, dim, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("lite", [False, True])
def test_forward_matches_reference_with_module_weights(lite):
    m = UniMixing(3, 4, 2, lite=lite, init="random", tau=0.6).double()
    x = torch.randn(2, 3, 4, dtype=F64)
    if lite:
        w_local, w_global = reference.lite_weights(m.omega, m.basis, m.a_g, m.b_g, 0.6, m.iters)
    else:
        w_local = reference.sinkhorn(m.theta_local, 0.6, 20)
        w_global = reference.sinkhorn(m.theta_global, 0.6, 20)
    torch.testing.assert_close(m(x), reference.unimixing(x, w_local, w_global))


def test_default_iterations():
    assert UniMixing(2, 4, 2).iters == 20
    assert UniMixing(2, 4, 2, lite=True).iters == 1


# --- initialisation (SPEC §2.3) ----------------------------------------------------------------


@pytest.mark.parametrize("tokens,dim,block", [(4, 8, 2), (4, 16, 4), (2, 4, 1)])
def test_tokenmixer_init_starts_at_tokenmixer(tokens, dim, block):
    m = UniMixing(tokens, dim, block, tau=0.05)
    assert m.init == "tokenmixer"
    x = torch.randn(2, tokens, dim)
    expected = reference.token_mixer(x, tokens).reshape(x.shape)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_tokenmixer_init_close_at_tau_one():
    # c0 = log(N) + 3: about 95% of each row of W_G on the permutation at tau = 1
    m = UniMixing(4, 8, 2)
    _, w_global = m.weights()
    perm = reference.tokenmixer_global(4, 4, 8, 2)
    on_perm = (w_global * perm).sum(-1)
    assert on_perm.min() > 0.9


def test_tokenmixer_init_heads_not_tokens():
    with pytest.raises(ValueError, match="symmetric"):
        UniMixing(4, 8, 2, heads=2, init="tokenmixer")
    m = UniMixing(4, 8, 2, heads=2, init="tokenmixer", symmetric=False, tau=0.05)
    x = torch.randn(2, 4, 8)
    expected = reference.token_mixer(x, 2).reshape(x.shape)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_lite_tokenmixer_init_exact_when_rank_covers_n():
    m = UniMixing(4, 8, 2, lite=True, rank=16, tau=0.05, iters=20)  # N = 16
    assert m.init == "tokenmixer"
    x = torch.randn(2, 4, 8)
    expected = reference.token_mixer(x, 4).reshape(x.shape)
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-4)


def test_identity_init_and_default_when_tokenmixer_impossible():
    m = UniMixing(3, 4, 6, tau=0.05)  # B = 6 does not divide D/T: no TokenMixer start
    assert m.init == "identity"
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(m(x), x, rtol=1e-5, atol=1e-5)


def test_random_init_is_near_uniform():
    m = UniMixing(4, 8, 2, init="random")
    _, w_global = m.weights()
    n = m.num_blocks
    torch.testing.assert_close(w_global, torch.full((n, n), 1.0 / n), rtol=0, atol=0.02)
    assert m.theta_global.std() < 0.05


# --- the eval cache ------------------------------------------------------------------------------


def _count_sinkhorn(monkeypatch):
    # every op that normalises a weight: each call is one Sinkhorn (of one weight, or a batch of them)
    calls = {"n": 0}
    for name in ("sinkhorn", "lite_local_weights", "lite_global_weights"):
        real = getattr(uk.ops, name)

        def counted(*a, _real=real, **k):
            calls["n"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(uk.ops, name, counted)
    return calls


@pytest.mark.parametrize("lite", [False, True])
def test_sinkhorn_runs_once_per_training_forward_and_once_in_eval(lite, monkeypatch):
    calls = _count_sinkhorn(monkeypatch)
    m = UniMixing(4, 8, 2, lite=lite)
    x = torch.randn(2, 4, 8)
    per_forward = 2  # one Sinkhorn per weight, full and Lite
    m(x)
    m(x)
    assert calls["n"] == 2 * per_forward
    m.eval()
    for _ in range(3):
        m(x)
    assert calls["n"] == 3 * per_forward


@pytest.mark.parametrize("lite", [False, True])
def test_eval_output_equals_train_output(lite):
    m = UniMixing(4, 8, 2, lite=lite, init="random", tau=0.3)
    x = torch.randn(3, 4, 8)
    y_train = m(x)
    m.eval()
    y_eval = m(x)
    assert torch.equal(y_eval, y_train.detach())
    with torch.no_grad():
        assert torch.equal(m(x), y_train.detach())
    with torch.inference_mode():
        assert torch.equal(m(x), y_train.detach())


def test_eval_cache_is_reused_then_invalidated_by_train():
    m = UniMixing(4, 8, 2).eval()
    w1 = m.weights()
    assert m.weights()[0] is w1[0]
    m.train()
    assert m._cache is None
    m.eval()
    assert m.weights()[0] is not w1[0]


@pytest.mark.parametrize("lite", [False, True])
def test_eval_cache_invalidated_by_optimizer_step(lite):
    m = UniMixing(4, 8, 2, lite=lite, init="random")
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    x = torch.randn(3, 4, 8)
    m.eval()
    before = m(x)
    m.train()
    m(x).square().sum().backward()
    m.eval()  # stepping in eval mode: only the parameter versions can tell the cache is stale
    before_cached = m(x)
    assert torch.equal(before_cached, before)
    opt.step()
    after = m(x)
    assert not torch.allclose(after, before)
    fresh = uk.unimixing(x, *m.compute_weights())
    torch.testing.assert_close(after, fresh.detach())


def test_eval_cache_invalidated_by_load_state_dict_and_in_place_edit():
    m = UniMixing(4, 8, 2, init="random").eval()
    other = UniMixing(4, 8, 2, init="random")
    x = torch.randn(2, 4, 8)
    m(x)
    m.load_state_dict(other.state_dict())
    other.eval()
    torch.testing.assert_close(m(x), other(x))
    with torch.no_grad():
        m.theta_global.mul_(3.0)
    torch.testing.assert_close(m(x), uk.unimixing(x, *m.compute_weights()).detach())


@pytest.mark.parametrize("lite", [False, True])
def test_eval_cache_in_autocast_dtype(lite):
    # under autocast, eval keeps the weights in the autocast dtype (no cast per call); the output
    # equals the one from fp32 weights cast by the op; a parameter update still invalidates it
    m = UniMixing(4, 8, 2, lite=lite, init="random", tau=0.3).eval()
    x = torch.randn(3, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        w_local, w_global = m.op_weights(x)
        assert w_local.dtype == w_global.dtype == torch.bfloat16
        assert m.op_weights(x)[1] is w_global
        assert torch.equal(y, uk.unimixing(x, *m.weights()))
    w32 = m.weights()
    assert w32[1].dtype == torch.float32  # outside autocast: the fp32 weights, not recomputed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.op_weights(x)[1] is w_global  # alternating keeps both
    assert m.weights()[1] is w32[1]
    with torch.no_grad():
        for t in m.logit_parameters():
            t.mul_(3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.equal(m.op_weights(x)[1], w_global)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.op_weights(x)[1].dtype == torch.float32  # training: the op casts, with autograd


def test_eval_mode_weights_are_constants():
    m = UniMixing(4, 8, 2).eval()
    w_local, w_global = m.weights()
    assert not w_local.requires_grad and not w_global.requires_grad


# --- temperature -------------------------------------------------------------------------------


def test_set_temperature_changes_weights_and_cache():
    m = UniMixing(4, 8, 2, init="random").eval()
    x = torch.randn(2, 4, 8)
    y1 = m(x)
    m.set_temperature(0.05)
    assert m.tau == 0.05
    y2 = m(x)
    assert not torch.allclose(y1, y2)
    w = reference.sinkhorn(m.theta_global.detach(), 0.05, 20)
    torch.testing.assert_close(m.weights()[1], w)


@pytest.mark.parametrize("tau", [0, -1.0])
def test_set_temperature_rejects_non_positive(tau):
    m = UniMixing(4, 8, 2)
    with pytest.raises(ValueError, match="tau"):
        m.set_temperature(tau)


# --- parameter counts (SPEC §3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens,dim,block,rank,bases", [(4, 8, 2, 3, 4), (16, 96, 4, 48, 4), (3, 4, 6, 1, 2)]
)
def test_parameter_counts(tokens, dim, block, rank, bases):
    n = tokens * dim // block
    full = UniMixing(tokens, dim, block, init="random")
    assert num_parameters(full) == n * n + n * block**2 == unimixing_num_parameters(tokens, dim, block)
    lite = UniMixing(tokens, dim, block, lite=True, rank=rank, bases=bases, init="random")
    expected = 2 * n * rank + bases * block**2 + n * bases
    assert num_parameters(lite) == expected
    assert unimixing_num_parameters(tokens, dim, block, lite=True, rank=rank, bases=bases) == expected


def test_lite_default_rank_is_n_over_8():
    m = UniMixing(16, 96, 4, lite=True, init="random")  # SPEC lite-2.5m: N = 384, r = 48
    assert m.num_blocks == 384 and m.rank == 48
    assert math.isclose(m.a_g.std().item(), 0.02, rel_tol=0.2)


# --- a per-op backend spec (README, Backends) ----------------------------------------------------


@pytest.mark.triton
def test_a_per_op_backend_spec_reaches_the_ops_the_module_calls(device, monkeypatch):
    sinkhorn = uk.OPS["sinkhorn"]
    triton_impl, seen = sinkhorn.impls["triton"], []
    monkeypatch.setitem(sinkhorn.impls, "triton", lambda x, *rest: seen.append(tuple(x.shape)) or
                        triton_impl(x, *rest))
    ref = UniMixing(4, 12, 4, init="random", iters=3, backend="reference").to(device)
    mixed = UniMixing(4, 12, 4, init="random", iters=3, backend="reference+sinkhorn=triton").to(device)
    mixed.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 12, device=device)
    torch.testing.assert_close(mixed(x), ref(x), rtol=1e-5, atol=1e-6)
    assert seen == [(12, 4, 4), (12, 12)]  # the local and the global weight; the mixing op on the reference


@pytest.mark.triton
def test_a_per_op_spec_chooses_each_lite_weight_s_backend(device, monkeypatch):
    # the Lite weights are two ops, so a spec can move the global weight alone (as onto the cuda Sinkhorn)
    seen = []
    for name in ("lite_local_weights", "lite_global_weights"):
        op = uk.OPS[name]
        impl = op.impls["triton"]
        monkeypatch.setitem(op.impls, "triton",
                            lambda *a, _impl=impl, _name=name: seen.append(_name) or _impl(*a))
    ref = UniMixing(4, 12, 4, lite=True, init="random", iters=3, backend="reference").to(device)
    mixed = UniMixing(4, 12, 4, lite=True, init="random", iters=3,
                      backend="reference+lite_global_weights=triton").to(device)
    mixed.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 12, device=device)
    torch.testing.assert_close(mixed(x), ref(x), rtol=1e-5, atol=1e-6)
    assert seen == ["lite_global_weights"]


# --- the weights' side stream ------------------------------------------------------------------


def test_overlap_is_a_bool_and_shows_when_off():
    with pytest.raises(TypeError, match="overlap: expected a bool"):
        UniMixing(4, 8, 2, overlap=1)
    assert "overlap" not in repr(UniMixing(4, 8, 2))
    assert "overlap=False" in repr(UniMixing(4, 8, 2, overlap=False))


@pytest.mark.parametrize("training", [True, False])
def test_op_weights_async_off_cuda_is_the_weights_made_here(training):
    # no side stream off CUDA (nor in eval, nor under torch.compile): wait() is the weights themselves,
    # the same values as op_weights, with autograd in training
    m = UniMixing(4, 8, 2, init="random").train(training)
    x = torch.randn(3, 4, 8)
    pending = m.op_weights_async(x)
    w_local, w_global = pending.wait()
    assert pending.wait()[1] is w_global  # once made, the same tensors
    assert w_global.requires_grad == training
    for a, b in zip((w_local, w_global), m.op_weights(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_late_w_global_is_settled_after_its_op_and_dropped_if_the_op_raises():
    # PendingWeights.read_by: the op handed W_G still pending must wait for it (here a recorded wait
    # stands for the side stream's event, which needs CUDA); one that returns without waiting is
    # reported, and one that raises keeps its own error, the wait run and forgotten
    from unimixer_kernels import _pending
    from unimixer_kernels.nn.unimixing import PendingWeights

    w_local, w_global = torch.ones(2, 2, 2), torch.ones(2, 2)
    waits = []

    def pending():
        pw = PendingWeights((w_local, w_global))
        _pending.read_late(w_global, lambda: waits.append(1))
        pw._late = True  # as wait(late=True) leaves it on CUDA
        return pw

    def reads(x, wl, wg):
        _pending.ready(wg)
        return x + 1

    assert pending().read_by(reads, 1.0, w_local, w_global) == 2.0
    assert waits == [1] and not _pending.waiting()

    def skips(x, wl, wg):
        return x

    with pytest.raises(RuntimeError, match="skips returned without waiting"):
        pending().read_by(skips, 1.0, w_local, w_global)
    assert waits == [1, 1] and not _pending.waiting()

    def fails(x, wl, wg):
        raise ValueError("x: bad")

    with pytest.raises(ValueError, match="x: bad"):
        pending().read_by(fails, 1.0, w_local, w_global)
    assert waits == [1, 1, 1] and not _pending.waiting()


def test_overlap_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("UNIMIXER_OVERLAP", "0")
    assert not UniMixing(4, 8, 2).overlap
    assert UniMixing(4, 8, 2, overlap=True).overlap  # an argument wins
    monkeypatch.setenv("UNIMIXER_OVERLAP", "yes")
    with pytest.raises(ValueError, match="UNIMIXER_OVERLAP: expected '0' or '1'"):
        UniMixing(4, 8, 2)
    monkeypatch.delenv("UNIMIXER_OVERLAP")
    assert UniMixing(4, 8, 2).overlap
