"""Backend selection (SPEC §12): argument, ``use_backend`` context, ``UNIMIXER_BACKEND``, "auto".

A probe :class:`Op` (in ``OPS`` only during a test) whose implementations return their own name shows
which backend a call picks; backend availability is patched, so no GPU or Triton is needed.
"""

from __future__ import annotations

import pytest
import torch

import unimixer_kernels as uk
from unimixer_kernels import _registry
from unimixer_kernels._registry import Op

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a device object: nothing is allocated on it


@pytest.fixture
def available(monkeypatch):
    """Which backends count as usable here (all, by default); tests edit the dict."""
    state = {"reference": True, "triton": True, "cuda": True}
    monkeypatch.setattr(
        _registry, "backend_status", lambda name: (state[name], "usable" if state[name] else "patched off")
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton backend accepts CPU tensors
    monkeypatch.delenv("UNIMIXER_BACKEND", raising=False)
    return state


@pytest.fixture
def op(monkeypatch) -> Op:
    o = Op("probe", cuda_auto=("cuda", "triton"))
    for name in ("reference", "triton", "cuda"):
        o.register(name)(lambda name=name: name)
    monkeypatch.setitem(_registry.OPS, "probe", o)  # dispatch looks ops up by name; removed after
    return o


def test_argument_selects(available, op):
    for name in ("reference", "triton"):
        assert op.select(name, CPU) == name
        assert op.dispatch(name, CPU)() == name
    assert op.select("cuda", CUDA) == "cuda"


def test_context_manager_selects_and_nests(available, op):
    with uk.use_backend("triton"):
        assert op.select("auto", CPU) == "triton"
        with uk.use_backend("reference"):
            assert op.select("auto", CPU) == "reference"
        assert op.select("auto", CPU) == "triton"
    assert op.select("auto", CPU) == "reference"


def test_argument_beats_context(available, op):
    with uk.use_backend("triton"):
        assert op.select("reference", CPU) == "reference"


def test_context_auto_defers_to_the_environment(available, op, monkeypatch):
    monkeypatch.setenv("UNIMIXER_BACKEND", "triton")
    with uk.use_backend("auto"):
        assert op.select("auto", CPU) == "triton"


def test_environment_variable_selects(available, op, monkeypatch):
    monkeypatch.setenv("UNIMIXER_BACKEND", "triton")
    assert op.select("auto", CPU) == "triton"
    with uk.use_backend("reference"):  # the context beats the environment
        assert op.select("auto", CPU) == "reference"
    assert op.select("reference", CPU) == "reference"  # and so does the argument


def test_empty_environment_variable_means_auto(available, op, monkeypatch):
    monkeypatch.setenv("UNIMIXER_BACKEND", "")
    assert op.select("auto", CPU) == "reference"


@pytest.mark.parametrize("bad", ["cudnn", "Triton", "", None, 3])
def test_invalid_argument_names_the_argument(available, op, bad):
    with pytest.raises(ValueError, match=r"^backend: expected one of"):
        op.select(bad, CPU)


def test_invalid_context_name_names_the_argument(available):
    with pytest.raises(ValueError, match=r"use_backend\(name\): expected one of .* got 'fast'"):
        with uk.use_backend("fast"):
            pass


def test_invalid_environment_value_names_the_variable(available, op, monkeypatch):
    monkeypatch.setenv("UNIMIXER_BACKEND", "gpu")
    expected = r"environment variable UNIMIXER_BACKEND: expected one of .* got 'gpu'"
    with pytest.raises(ValueError, match=expected):
        op.select("auto", CPU)


def test_public_op_rejects_an_invalid_backend():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"^backend: expected one of .* got 'fastest'"):
        uk.rms_norm(x, w, backend="fastest")


def test_explicit_unavailable_backend_raises(available, op):
    available["triton"] = False
    with pytest.raises(ValueError, match=r"backend='triton' cannot run probe: patched off"):
        op.select("triton", CPU)
    with uk.use_backend("triton"), pytest.raises(ValueError, match="cannot run probe"):
        op.select("auto", CPU)


def test_explicit_backend_on_the_wrong_device_raises(available, op):
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run probe: .*CUDA tensors.*cpu"):
        op.select("cuda", CPU)


def test_explicit_missing_implementation_raises(available):
    o = Op("reference_only")
    o.register("reference")(lambda: "reference")
    with pytest.raises(ValueError, match="reference_only has no triton implementation"):
        o.select("triton", CPU)


def test_public_op_explicit_cuda_on_cpu_tensors_raises():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run rms_norm"):
        uk.rms_norm(x, w, backend="cuda")


def test_auto_picks_reference_on_cpu(available, op):
    assert op.select("auto", CPU) == "reference"


def test_auto_picks_reference_on_cpu_for_every_public_op(monkeypatch):
    monkeypatch.delenv("UNIMIXER_BACKEND", raising=False)
    for name, o in uk.OPS.items():
        assert o.select("auto", CPU) == "reference", name


def test_auto_on_cuda_follows_the_preference_and_skips_unusable(available, op):
    assert op.select("auto", CUDA) == "cuda"
    available["cuda"] = False
    assert op.select("auto", CUDA) == "triton"
    available["triton"] = False
    assert op.select("auto", CUDA) == "reference"


def test_auto_skips_preferences_without_an_implementation(available):
    o = Op("partial", cuda_auto=("cuda", "triton"))
    o.register("reference")(lambda: "reference")
    o.register("triton")(lambda: "triton")
    assert o.select("auto", CUDA) == "triton"


@pytest.fixture
def partial_op(monkeypatch) -> Op:
    """cuda_auto ("cuda", "triton"), where "cuda" takes only calls on tensors of fewer than 4 rows and
    "triton" only even row counts; each implementation returns its name and the input."""
    o = Op("partial_probe", cuda_auto=("cuda", "triton"))
    o.register("reference")(lambda x: ("reference", x))
    o.register("cuda", auto_accepts=lambda x: x.shape[0] < 4)(lambda x: ("cuda", x))
    o.register("triton", auto_accepts=lambda x: x.shape[0] % 2 == 0)(lambda x: ("triton", x))
    monkeypatch.setitem(_registry.OPS, o.name, o)
    return o


def test_auto_gives_each_backend_only_the_calls_it_accepts(available, partial_op):
    run = partial_op.dispatch("auto", CUDA)
    assert run(torch.zeros(3))[0] == "cuda"
    assert run(torch.zeros(6))[0] == "triton"  # cuda declines, triton takes it
    assert run(torch.zeros(5))[0] == "reference"  # both decline
    assert partial_op.candidates("auto", CUDA) == ("cuda", "triton", "reference")
    assert partial_op.select("auto", CUDA) == "cuda"  # the first it tries
    available["cuda"] = False
    assert partial_op.dispatch("auto", CUDA)(torch.zeros(3))[0] == "reference"
    assert partial_op.candidates("auto", CPU) == ("reference",)


def test_auto_stops_at_a_backend_that_takes_every_call(available, monkeypatch):
    o = Op("partial_then_all", cuda_auto=("cuda", "triton"))
    o.register("reference")(lambda x: "reference")
    o.register("cuda", auto_accepts=lambda x: False)(lambda x: "cuda")
    o.register("triton")(lambda x: "triton")
    monkeypatch.setitem(_registry.OPS, o.name, o)
    assert o.candidates("auto", CUDA) == ("cuda", "triton")
    assert o.dispatch("auto", CUDA)(torch.zeros(1)) == "triton"


def test_an_explicit_backend_ignores_auto_accepts(available, partial_op):
    # the implementation itself raises where it cannot run a call; auto_accepts only steers "auto"
    assert partial_op.dispatch("cuda", CUDA)(torch.zeros(9))[0] == "cuda"
    assert partial_op.candidates("cuda", CUDA) == ("cuda",)


@pytest.mark.parametrize("backend", ["auto", "reference+partial_probe=cuda/triton"])
def test_auto_accepts_compiles_without_graph_breaks(available, partial_op, backend):
    # under "auto" and a per-op list alike: 3 rows on cuda, 6 and 5 rows on another backend
    def f(x):
        name, y = partial_op.dispatch(backend, CUDA)(x)  # a device object only: the tensors stay on the CPU
        return y * (2.0 if name == "cuda" else 3.0)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for rows, factor in ((3, 2.0), (6, 3.0), (5, 3.0)):
        x = torch.ones(rows)
        torch.testing.assert_close(compiled(x), x * factor)


# --- per-op specs ----------------------------------------------------------------------------


@pytest.fixture
def other_op(monkeypatch) -> Op:
    o = Op("other_probe", cuda_auto=("triton",))
    for name in ("reference", "triton", "cuda"):
        o.register(name)(lambda name=name: name)
    monkeypatch.setitem(_registry.OPS, o.name, o)
    return o


def test_a_per_op_spec_selects_per_op(available, op, other_op):
    spec = "reference+probe=triton"
    assert op.select(spec, CPU) == "triton" and op.dispatch(spec, CPU)() == "triton"
    assert other_op.select(spec, CPU) == "reference"
    assert op.select("triton+other_probe=reference", CPU) == "triton"
    assert other_op.select("auto+probe=reference", CUDA) == "triton"  # the default "auto" per op
    assert op.select("reference+probe=auto", CUDA) == "cuda"


def test_a_per_op_spec_works_in_the_context_and_the_environment(available, op, other_op, monkeypatch):
    with uk.use_backend("triton+probe=reference"):
        assert (op.select("auto", CPU), other_op.select("auto", CPU)) == ("reference", "triton")
        assert op.select("triton", CPU) == "triton"  # the argument still beats the context
        # a spec is explicit as a whole: its default "auto" is each op's own auto, not the context's
        assert op.select("auto+other_probe=triton", CPU) == "reference"
    monkeypatch.setenv("UNIMIXER_BACKEND", "reference+other_probe=triton")
    assert (op.select("auto", CPU), other_op.select("auto", CPU)) == ("reference", "triton")


def test_a_per_op_list_gives_each_backend_the_calls_it_accepts(available, partial_op):
    run = partial_op.dispatch("reference+partial_probe=cuda/triton", CUDA)
    assert run(torch.zeros(3))[0] == "cuda"
    assert run(torch.zeros(6))[0] == "triton"
    assert run(torch.zeros(5))[0] == "triton"  # the last of the list takes every call the others decline
    assert partial_op.candidates("reference+partial_probe=cuda/triton", CUDA) == ("cuda", "triton")
    assert partial_op.dispatch("triton+partial_probe=cuda/reference", CUDA)(torch.zeros(7))[0] == "reference"


def test_a_per_op_list_names_a_backend_that_cannot_run(available, partial_op):
    available["cuda"] = False  # an explicit request: no quiet skip to the next of the list
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run partial_probe: patched off"):
        partial_op.dispatch("reference+partial_probe=cuda/triton", CUDA)
    available["cuda"] = True
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run partial_probe: .*CUDA tensors"):
        partial_op.dispatch("reference+partial_probe=cuda/triton", CPU)


def test_a_per_op_list_refuses_a_backend_that_would_shadow_the_rest(available, op):
    with pytest.raises(ValueError, match=r"'triton' takes every probe call, so \('cuda',\) after it would "
                                         r"never run; list 'triton' last"):
        op.select("reference+probe=triton/cuda", CUDA)


@pytest.mark.parametrize("spec,why", [
    ("fast+probe=triton", r"the default backend 'fast' of 'fast\+probe=triton' is not one of"),
    ("reference+probe", r"'probe' in 'reference\+probe' is not '<op>=<backend>'"),
    ("reference+=triton", r"'=triton' in .* is not '<op>=<backend>'"),
    ("reference+probe=", r"'probe=' in .* is not '<op>=<backend>'"),
    ("reference+nosuchop=triton", r"names the op 'nosuchop', which is not one of \(.*'probe'"),
    ("reference+probe=triton+probe=cuda", r"names the op 'probe' twice"),
    ("reference+probe=cudnn", r"probe='cudnn' in .*: expected 'auto' or backends of"),
    ("reference+probe=auto/triton", r"probe='auto/triton' in .*: expected 'auto' or backends of"),
    ("reference+probe=triton/triton", r"lists a backend twice"),
])
def test_a_bad_per_op_spec_names_the_argument_and_the_problem(available, op, spec, why):
    with pytest.raises(ValueError, match=r"^backend: (.* )?" + why):
        op.select(spec, CPU)
    with pytest.raises(ValueError, match=r"^use_backend\(name\): (.* )?" + why):
        with uk.use_backend(spec):
            pass


def test_backend_status_of_a_per_op_spec(op):
    assert _registry.parse_backend("triton+probe=cuda/reference").backends == ("triton", "cuda", "reference")
    assert uk.backend_status("reference+sinkhorn=reference")[0]
    ok, why = uk.backend_status("reference+sinkhorn=cuda")
    assert ok == uk.backend_status("cuda")[0] and (ok or why.startswith("cuda: "))


def test_public_op_takes_a_per_op_spec():
    x, w = torch.randn(2, 8), torch.randn(8)
    torch.testing.assert_close(uk.rms_norm(x, w, backend="reference+sinkhorn=cuda"),
                               uk.rms_norm(x, w, backend="reference"), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run rms_norm"):
        uk.rms_norm(x, w, backend="reference+rms_norm=cuda")


def test_registering_a_backend_twice_raises(op):
    with pytest.raises(RuntimeError, match="already has a 'triton' backend"):
        op.register("triton")(lambda: None)


def test_registering_an_unknown_backend_raises(op):
    with pytest.raises(ValueError, match="backend: expected one of"):
        op.register("cublas")


def test_backend_status_of_an_unknown_name_raises():
    with pytest.raises(ValueError, match="backend: expected one of"):
        uk.backend_status("cutlass")


def test_reference_is_always_available():
    assert uk.backend_status("reference")[0]


def test_unavailable_backends_say_why():
    for name in uk.BACKENDS:
        ok, why = uk.backend_status(name)
        assert isinstance(why, str) and (ok or why), name


# --- autocast policies -------------------------------------------------------------------------


def _dtypes_seen(policy, keep=()):
    o = Op("probe_autocast", autocast=policy, autocast_keep=keep)
    o.register("reference")(lambda *args: ([a.dtype for a in args], torch.is_autocast_enabled("cpu")))
    return o


@pytest.mark.parametrize("policy, expected", [
    ("lower", [torch.bfloat16, torch.bfloat16, torch.float32, torch.int64]),
    ("fp32", [torch.float32, torch.float32, torch.float32, torch.int64]),
    (None, [torch.bfloat16, torch.float32, torch.float32, torch.int64]),
])
def test_autocast_policy_casts_floating_arguments(available, monkeypatch, policy, expected):
    o = _dtypes_seen(policy, keep=(2,))
    monkeypatch.setitem(_registry.OPS, o.name, o)
    args = (torch.ones(2, dtype=torch.bfloat16), torch.ones(2), torch.ones(2),
            torch.ones(2, dtype=torch.int64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes, inside = o.dispatch("reference", CPU)(*args)
    assert dtypes == expected
    assert inside == (policy is None)  # a policy runs the op with autocast off
    # without autocast nothing is cast
    dtypes, _ = o.dispatch("reference", CPU)(*args)
    assert dtypes == [a.dtype for a in args]


def _lowering_probe(monkeypatch, lowers: tuple[int, ...]) -> Op:
    """A "lower"-policy op keeping argument 2, whose reference and Triton backends (the latter
    lowering ``lowers`` itself) return the dtypes they receive; dispatch picks the backend named."""
    o = Op("probe_lowering", autocast="lower", autocast_keep=(2,))
    seen = lambda *args: [a.dtype for a in args]  # noqa: E731
    o.register("reference")(seen)
    o.register("triton", lowers=lowers)(seen)
    monkeypatch.setitem(_registry.OPS, o.name, o)
    monkeypatch.setattr(_registry, "_select_constant", lambda op, backend, device: (backend,))
    return o


def test_autocast_lowers_is_per_backend(available, monkeypatch):
    # a backend that lowers an argument itself receives it uncast; another backend of the same op
    # still receives it cast
    o = _lowering_probe(monkeypatch, lowers=(1,))
    args = (torch.ones(2), torch.ones(2), torch.ones(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert o.dispatch("triton", CPU)(*args) == [torch.bfloat16, torch.float32, torch.float32]
        assert o.dispatch("reference", CPU)(*args) == [torch.bfloat16, torch.bfloat16, torch.float32]


def test_lowering_cast_is_per_backend(available, monkeypatch):
    # a backend's registered cast replaces Tensor.to for the arguments the "lower" policy casts (not
    # those already in the autocast dtype, kept or lowered by the backend), one call per source dtype
    # with all of that dtype's arguments; other backends keep .to
    o = _lowering_probe(monkeypatch, lowers=(3,))
    cast = []

    def recorded(xs, dtype):
        cast.append([x.shape[0] for x in xs])
        return [x.to(dtype) for x in xs]

    monkeypatch.setattr(_registry, "_LOWERING_CASTS", {"triton": recorded})
    args = (torch.ones(1), torch.ones(2, dtype=torch.bfloat16), torch.ones(3), torch.ones(4), torch.ones(5),
            torch.ones(6, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, fp32 = torch.bfloat16, torch.float32
        assert o.dispatch("triton", CPU)(*args) == [bf16, bf16, fp32, fp32, bf16, bf16]
        assert cast == [[1, 5], [6]]
        assert o.dispatch("reference", CPU)(*args) == [bf16, bf16, fp32, bf16, bf16, bf16]
    assert cast == [[1, 5], [6]]


def test_the_triton_backend_registers_its_lowering_cast():
    from unimixer_kernels.ops.lowering import lower_cast

    assert _registry._LOWERING_CASTS == {"triton": lower_cast}


def test_register_lowering_cast_names_the_problem(monkeypatch):
    monkeypatch.setattr(_registry, "_LOWERING_CASTS", {})
    with pytest.raises(ValueError, match="backend: expected one of"):
        _registry.register_lowering_cast("tpu", lambda x, dtype: x)
    _registry.register_lowering_cast("cuda", lambda x, dtype: x)
    with pytest.raises(RuntimeError, match="already has a lowering cast"):
        _registry.register_lowering_cast("cuda", lambda x, dtype: x)


def test_lowers_needs_the_lower_policy():
    with pytest.raises(ValueError, match="lowers: only an op with the 'lower' autocast policy"):
        Op("bad_lowers", autocast="fp32").register("triton", lowers=(1,))


# --- arguments still pending on another stream (_pending.py) -----------------------------------------


def _late_probe(monkeypatch, log: list) -> Op:
    """A "lower"-policy op whose Triton backend reads argument 1 late (and lowers it itself); both
    backends log their call. Dispatch picks the backend named."""
    o = Op("probe_late", autocast="lower")
    o.register("reference")(lambda *args: log.append(("reference", [a.dtype for a in args])))
    o.register("triton", lowers=(1,), reads_late=(1,))(
        lambda *args: log.append(("triton", [a.dtype for a in args])))
    monkeypatch.setitem(_registry.OPS, o.name, o)
    monkeypatch.setattr(_registry, "_select_constant", lambda op, backend, device: (backend,))
    return o


def test_pending_arguments_are_waited_for_before_other_backends_and_their_casts(available, monkeypatch):
    from unimixer_kernels import _pending

    log = []
    o = _late_probe(monkeypatch, log)
    cast = _registry._to_each
    monkeypatch.setattr(_registry, "_to_each", lambda xs, dtype: (log.append("cast"), cast(xs, dtype))[1])
    x, w, early = torch.ones(2), torch.ones(3), torch.ones(4)
    # the backend that reads argument 1 late runs first and waits for it itself (here it does not:
    # ready() would); every other pending argument is waited for before it runs
    _pending.read_late(w, lambda: log.append("wait w"))
    _pending.read_late(early, lambda: log.append("wait early"))
    o.dispatch("triton", CPU)(x, w, early)
    assert log == ["wait early", ("triton", [torch.float32] * 3)]
    _pending.ready(w)
    assert log[-1] == "wait w" and not _pending._PENDING
    # a backend that does not read late has every pending argument waited for, before autocast's casts
    log.clear()
    _pending.read_late(w, lambda: log.append("wait w"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o.dispatch("reference", CPU)(x, w, early)
    assert log == ["wait w", "cast", ("reference", [torch.bfloat16] * 3)]
    assert not _pending._PENDING


def test_reads_late_positions_cannot_be_cast_first():
    with pytest.raises(ValueError, match="reads_late: positions \\[2\\] would be cast"):
        Op("bad_late", autocast="lower").register("triton", lowers=(1,), reads_late=(1, 2))
    Op("no_policy").register("triton", reads_late=(0,))  # nothing is cast: any position


def test_pending_waits_run_once_and_a_reader_that_never_waited_is_reported():
    from unimixer_kernels import _pending

    calls = []
    t = torch.ones(3)
    _pending.read_late(t, lambda: calls.append(1))
    with pytest.raises(RuntimeError, match="already has a pending wait"):
        _pending.read_late(t[:2], lambda: None)  # a view of the same storage is the same tensor here
    _pending.ready(torch.ones(3))  # another tensor: nothing
    assert calls == []
    _pending.ready(t[1:])  # another data pointer: nothing
    _pending.ready(t.view(3))
    _pending.ready(t)
    assert calls == [1]
    _pending.settled(t, "probe")  # waited: nothing to report
    _pending.read_late(t, lambda: calls.append(2))
    with pytest.raises(RuntimeError, match="probe returned without waiting"):
        _pending.settled(t, "probe")
    assert calls == [1, 2] and not _pending._PENDING  # the wait still ran, first


def test_unknown_autocast_policy_raises():
    with pytest.raises(ValueError, match="autocast"):
        Op("bad", autocast="bf16")


@pytest.mark.parametrize("name, policy", [
    ("unimixing", "lower"), ("unimixing_rmsnorm", "lower"), ("pswiglu", "lower"), ("pgelu_ffn", "lower"),
    ("fm_interaction", "lower"), ("dot_interaction", "lower"), ("sinkhorn", "fp32"), ("lite_weights", "fp32"),
    ("rms_norm", None), ("add_rms_norm", None), ("token_mixer", None), ("token_mixer_residual_norm", None),
    ("residual_norm", None),
])
def test_every_public_op_states_its_autocast_policy(name, policy):
    assert uk.OPS[name].autocast == policy


def test_autocast_gemm_op_matches_explicit_casts_and_keeps_fp32_weight_grads():
    from unimixer_kernels.testing import random_input

    u = random_input((3, 4, 8), torch.float32, "cpu", requires_grad=True)
    shapes = ((4, 8, 6), (4, 8, 6), (4, 6, 8))
    ws = [random_input(s, torch.float32, "cpu", requires_grad=True) for s in shapes]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = uk.pswiglu(u, *ws, backend="reference")
    expected = uk.pswiglu(u.bfloat16(), *(w.bfloat16() for w in ws), backend="reference")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert u.grad.dtype == torch.float32 and all(w.grad.dtype == torch.float32 for w in ws)


def test_autocast_sinkhorn_stays_fp32():
    from unimixer_kernels.testing import random_input

    x = random_input((6, 6), torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = uk.sinkhorn(x.bfloat16(), 0.5, 5, backend="reference")
    assert p.dtype == torch.float32
    expected = uk.sinkhorn(x.bfloat16().float(), 0.5, 5, backend="reference")
    torch.testing.assert_close(p, expected, rtol=0, atol=0)


def test_autocast_policy_compiles_without_graph_breaks():
    from unimixer_kernels.testing import random_input

    x = random_input((2, 4, 8), torch.float32, "cpu")
    wl = random_input((8, 4, 4), torch.float32, "cpu")
    wg = random_input((8, 8), torch.float32, "cpu")

    def f(x, wl, wg):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return uk.unimixing(x, wl, wg, backend="reference")

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="eager")(x, wl, wg)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, f(x, wl, wg))
