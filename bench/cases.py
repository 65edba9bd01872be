"""Cases: a setup factory per op and block, and the case lists (GPU, CPU, quick).

A factory ``setup(preset, device, dtype) -> Setup`` makes *fresh random inputs* on every
``make_inputs()`` call (activations in ``dtype``, parameters in fp32, differentiable tensors with
``requires_grad``) and one :class:`Impl` builder per source: ``"reference"`` (the reference
functions, eager) and one per kernel backend. Providers are derived from those in
:mod:`bench.runner`: ``compiled`` / ``compiled-cg`` compile the reference, ``<backend>-cg``
replays the backend under a CUDA graph.

Kernel backends of an op are read from ``uk.OPS[op].impls``, so a backend that registers itself
shows up here without an edit. Blocks are timed through their ``uk.nn`` module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import unimixer_kernels as uk
from unimixer_kernels import reference as R

from . import blocks
from .blocks import Unavailable
from .model import MODES
from .presets import PRESETS, Preset

FP32 = torch.float32


@dataclass
class Impl:
    """One runnable implementation of a case.

    ``fwd(*inputs)`` is the training forward; ``infer(*inputs)`` the inference forward (run under
    ``no_grad``; defaults to ``fwd``); ``params`` are differentiable leaves that are not inputs
    (block weights); ``prepare(mode)`` is called before a mode is timed (e.g. ``module.eval()``).
    """

    fwd: Callable
    params: tuple = ()
    infer: Callable | None = None
    prepare: Callable[[str], None] | None = None


@dataclass
class Setup:
    make_inputs: Callable[[], tuple]
    impls: dict[str, Callable[[], Impl]]
    kernel_backends: tuple[str, ...]
    public: Callable | None = None  # the public uk op (correctness checks)
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    needs: tuple[str, ...]
    modes: tuple[str, ...]
    factory: Callable[[Preset, torch.device, torch.dtype], Setup]
    op: str | None = None  # the uk op whose kernel backends are the providers
    module: str | None = None  # the uk.nn module the kernel providers time
    block_ops: tuple[str, ...] = ()  # the ops that module calls

    def applies_to(self, preset: Preset) -> bool:
        return preset.has(self.needs)

    def kernel_backends(self) -> tuple[str, ...]:
        return kernel_backends_of(self.op, self.block_ops)


# A block's mixed provider: ``triton`` with these ops on these per-op choices (``backend=`` specs,
# README Backends), where the op's kernels there were measured faster than its Triton kernels alone
# (NOTES: the cuda Sinkhorn at N = 1024 and 4096)
MIXED_CHOICES = {"sinkhorn": "cuda/triton", "lite_global_weights": "cuda/triton"}


def kernel_backends_of(op: str | None, block_ops: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Kernel backends of an op (registry order). A block: ``triton`` always (a missing Triton op
    then shows as an error row), any other backend that every op of the block has, and the mixed
    spec ``triton+<op>=<choice>...`` of the ``MIXED_CHOICES`` ops the block calls."""
    if op is not None:
        return tuple(b for b in uk.OPS[op].impls if b != "reference")
    known = [o for o in block_ops if o in uk.OPS]
    others = [b for b in ("cuda",) if known and all(b in uk.OPS[o].impls for o in known)]
    mixed = [f"{o}={c}" for o, c in MIXED_CHOICES.items()
             if o in known and all(b in uk.OPS[o].impls for b in c.split("/"))]
    return ("triton", *others, *(["+".join(("triton", *mixed))] if mixed else []))


def randn_cpu(shape, device, dtype, scale: float = 1.0) -> torch.Tensor:
    """Standard normal values drawn on the CPU (fp32), then moved: the CUDA generator is left
    unusable in a process where a CUDA-graph capture failed, and one provider's failed capture
    must not cost every later case its inputs."""
    return torch.randn(*shape, dtype=FP32).mul_(scale).to(device=device, dtype=dtype)


def _rand(shape, dtype, device, grad=True, scale=1.0):
    return randn_cpu(shape, device, dtype, scale).requires_grad_(grad)


def _op_setup(op: str, reference: Callable, public: Callable, make_inputs: Callable[[], tuple],
              **kwargs) -> Setup:
    backends = kernel_backends_of(op)

    def ref_impl() -> Impl:
        def fwd(*a):
            return reference(*a, **kwargs)
        return Impl(fwd)

    def kernel_impl(backend: str) -> Callable[[], Impl]:
        def build() -> Impl:
            ok, why = uk.OPS[op].status(backend)
            if not ok:
                raise Unavailable(why)

            def fwd(*a):
                return public(*a, backend=backend, **kwargs)
            return Impl(fwd)
        return build

    impls = {"reference": ref_impl, **{b: kernel_impl(b) for b in backends}}
    return Setup(make_inputs, impls, backends, public, kwargs)


# --- ops -----------------------------------------------------------------------------------------


def setup_unimixing(p: Preset, device, dtype) -> Setup:
    bs, t, d, n, b = p["bs"], p["T"], p["D"], p["N"], p["B"]
    return _op_setup("unimixing", R.unimixing, uk.unimixing, lambda: (
        _rand((bs, t, d), dtype, device), _rand((n, b, b), FP32, device, scale=b ** -0.5),
        _rand((n, n), FP32, device, scale=n ** -0.5)))


def setup_unimixing_rmsnorm(p: Preset, device, dtype) -> Setup:
    bs, t, d, n, b = p["bs"], p["T"], p["D"], p["N"], p["B"]
    return _op_setup("unimixing_rmsnorm", R.unimixing_rmsnorm, uk.unimixing_rmsnorm, lambda: (
        _rand((bs, t, d), dtype, device), _rand((n, b, b), FP32, device, scale=b ** -0.5),
        _rand((n, n), FP32, device, scale=n ** -0.5), _rand((d,), FP32, device)))


def setup_unimixing_rmsnorm_pswiglu(p: Preset, device, dtype) -> Setup:
    bs, t, d, n, b, h = p["bs"], p["T"], p["D"], p["N"], p["B"], p["h"]
    op = "unimixing_rmsnorm_pswiglu"
    return _op_setup(op, R.unimixing_rmsnorm_pswiglu, uk.unimixing_rmsnorm_pswiglu, lambda: (
        _rand((bs, t, d), dtype, device), _rand((n, b, b), FP32, device, scale=b ** -0.5),
        _rand((n, n), FP32, device, scale=n ** -0.5), _rand((d,), FP32, device),
        _rand((t, d, h), FP32, device, scale=d ** -0.5), _rand((t, d, h), FP32, device, scale=d ** -0.5),
        _rand((t, h, d), FP32, device, scale=h ** -0.5)))


def setup_sinkhorn(p: Preset, device, dtype) -> Setup:
    n = p["N"]
    return _op_setup("sinkhorn", R.sinkhorn, uk.sinkhorn, lambda: (_rand((n, n), FP32, device),),
                     tau=p["tau"], iters=p["iters"], symmetric=True)


def setup_lite_weights(p: Preset, device, dtype) -> Setup:
    # both logits of unit variance, as unimixer_kernels.testing.lite_weights_inputs draws them:
    # omega and Z scaled by nb ** -0.25 each (unscaled, the local logits' std is sqrt(nb), and at
    # tau = 0.05 the fp32 gradients of omega then hinge on the logits' last bits, for torch as for
    # the kernel: bench/NOTES.md)
    return _op_setup("lite_weights", R.lite_weights, uk.lite_weights, lambda: (
        *_lite_local_inputs(p, device), *_lite_global_inputs(p, device)),
        tau=p["tau"], iters=p["iters"], symmetric=True)


def _lite_local_inputs(p: Preset, device) -> tuple[torch.Tensor, torch.Tensor]:
    n, b, nb = p["N"], p["B"], p["nb"]
    return _rand((n, nb), FP32, device, scale=nb ** -0.25), _rand((nb, b, b), FP32, device, scale=nb ** -0.25)


def _lite_global_inputs(p: Preset, device) -> tuple[torch.Tensor, torch.Tensor]:
    n, r = p["N"], p["r"]
    return _rand((n, r), FP32, device, scale=r ** -0.5), _rand((r, n), FP32, device)


def setup_lite_local_weights(p: Preset, device, dtype) -> Setup:
    """``SK(omega Z)`` alone through ``uk.lite_local_weights`` (inputs as ``lite_weights``')."""
    return _op_setup("lite_local_weights", R.lite_local_weights, uk.lite_local_weights,
                     lambda: _lite_local_inputs(p, device), tau=p["tau"], iters=p["iters"], symmetric=True)


def _fp32_logits(a_g, b_g):
    """``A_G @ B_G`` in fp32 inside the benchmark's autocast region too, as the ``lite_weights`` op
    forms them (its autocast policy is fp32): a baseline with bf16 logits would time another, far
    less accurate computation (SPEC §2.1: Sinkhorn in fp32)."""
    with torch.autocast(a_g.device.type, enabled=False):
        return a_g @ b_g


def _lite_global_setup(p: Preset, device, op: str, weight: Callable) -> Setup:
    """``SK(A_G @ B_G)`` from ``A_G [N, r]``, ``B_G [r, N]``: the reference (logits materialised
    in fp32, then the reference Sinkhorn) beside ``weight(a_g, b_g, tau, iters, backend)`` on
    ``op``'s kernel backends."""
    tau, iters = p["tau"], p["iters"]

    def reference(a_g, b_g):
        return R.sinkhorn(_fp32_logits(a_g, b_g), tau, iters)

    def public(a_g, b_g, *, backend="auto"):
        return weight(a_g, b_g, tau, iters, backend)

    return _op_setup(op, reference, public, lambda: _lite_global_inputs(p, device))


def setup_lite_global_materialised(p: Preset, device, dtype) -> Setup:
    """``SK(A_G @ B_G)`` with the logits materialised, through the Sinkhorn op's backends: the
    baseline that ``lite_weights``' matrix-free global weight is compared with."""
    return _lite_global_setup(p, device, "sinkhorn", lambda a_g, b_g, tau, iters, backend: uk.sinkhorn(
        _fp32_logits(a_g, b_g), tau, iters, backend=backend))


def setup_lite_global_weights(p: Preset, device, dtype) -> Setup:
    """``SK(A_G @ B_G)`` alone through ``uk.lite_global_weights``: Triton forms the logits tile by tile
    (matrix free), ``cuda`` materialises them and runs the ``cuda`` Sinkhorn; the baselines are
    ``lite_global_materialised``'s."""
    return _lite_global_setup(p, device, "lite_global_weights", lambda a_g, b_g, tau, iters, backend:
                              uk.lite_global_weights(a_g, b_g, tau, iters, backend=backend))


def setup_rms_norm(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    return _op_setup("rms_norm", R.rms_norm, uk.rms_norm, lambda: (
        _rand((bs, t, d), dtype, device), _rand((d,), FP32, device)))


def setup_add_rms_norm(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    return _op_setup("add_rms_norm", R.add_rms_norm, uk.add_rms_norm, lambda: (
        _rand((bs, t, d), dtype, device), _rand((bs, t, d), dtype, device), _rand((d,), FP32, device)))


def setup_pswiglu(p: Preset, device, dtype) -> Setup:
    bs, t, d, h = p["bs"], p["T"], p["D"], p["h"]
    return _op_setup("pswiglu", R.pswiglu, uk.pswiglu, lambda: (
        _rand((bs, t, d), dtype, device), _rand((t, d, h), FP32, device, scale=d ** -0.5),
        _rand((t, d, h), FP32, device, scale=d ** -0.5), _rand((t, h, d), FP32, device, scale=h ** -0.5)))


def setup_fm_interaction(p: Preset, device, dtype) -> Setup:
    bs, n, d, k = p["bs"], p["n"], p["d"], p["fm_k"]
    return _op_setup("fm_interaction", R.fm_interaction, uk.fm_interaction, lambda: (
        _rand((bs, n, d), dtype, device), _rand((n, k), FP32, device, scale=n ** -0.5)))


def setup_dot_interaction(p: Preset, device, dtype) -> Setup:
    bs, n, d = p["bs"], p["n"], p["d"]
    return _op_setup("dot_interaction", R.dot_interaction, uk.dot_interaction,
                     lambda: (_rand((bs, n, d), dtype, device),), order="triu")


def setup_token_mixer(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    return _op_setup("token_mixer", R.token_mixer, uk.token_mixer,
                     lambda: (_rand((bs, t, d), dtype, device),), heads=t)


def _public(name: str) -> Callable:
    """The public op ``name``: ``uk.<name>``, else the function of that name in its ops module."""
    import inspect
    import sys

    fn = getattr(uk, name, None)
    if inspect.isfunction(fn):
        return fn
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("unimixer_kernels.ops.") and inspect.isfunction(getattr(mod, name, None)):
            return getattr(mod, name)
    raise Unavailable(f"no public function {name} in unimixer_kernels.ops")


def _reference(name: str, module: str | None = None) -> Callable:
    import importlib

    fn = getattr(R, name, None)
    if fn is None and module is not None:
        fn = getattr(importlib.import_module(f"unimixer_kernels.reference.{module}"), name, None)
    if fn is None:
        raise Unavailable(f"no reference function {name}")
    return fn


def setup_pgelu_ffn(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    kd = p["ffn_mult"] * d
    return _op_setup("pgelu_ffn", _reference("pgelu_ffn"), _public("pgelu_ffn"), lambda: (
        _rand((bs, t, d), dtype, device), _rand((t, d, kd), FP32, device, scale=d ** -0.5),
        _rand((t, kd), FP32, device), _rand((t, kd, d), FP32, device, scale=kd ** -0.5),
        _rand((t, d), FP32, device)))


def setup_token_mixer_residual_norm(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    ref = _reference("token_mixer_residual_norm", "token_mixer_norm")
    pub = _public("token_mixer_residual_norm")

    def reference(x, weight, bias):  # heads = T sits between x and the weights in the signature
        return ref(x, t, weight, bias)

    def public(x, weight, bias, *, backend="auto"):
        return pub(x, t, weight, bias, backend=backend)

    return _op_setup("token_mixer_residual_norm", reference, public, lambda: (
        _rand((bs, t, d), dtype, device), _rand((d,), FP32, device), _rand((d,), FP32, device)))


def setup_residual_norm(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    return _op_setup("residual_norm", _reference("residual_norm"), _public("residual_norm"), lambda: (
        _rand((bs, t, d), dtype, device), _rand((bs, t, d), dtype, device), _rand((d,), FP32, device),
        _rand((d,), FP32, device)))


# --- blocks --------------------------------------------------------------------------------------


def _module_impls(make_module: Callable, backends) -> dict:
    """One builder per kernel backend: ``make_module(backend)`` -> the ``uk.nn`` module timed."""
    def build(backend: str) -> Callable[[], Impl]:
        def make() -> Impl:
            ok, why = uk.backend_status(backend)
            if not ok:
                raise Unavailable(why)
            module = make_module(backend)

            def call(x):
                return module(x)
            return Impl(call, blocks.params_of(module), call, lambda mode: module.train(mode != "infer"))
        return make
    return {b: build(b) for b in backends}


def _unimixer_params(p: Preset, device, lite: bool) -> tuple:
    t, d, n, b, h = p["T"], p["D"], p["N"], p["B"], p["h"]
    if lite:
        r, nb = p["r"], p["nb"]
        mixing = (_rand((n, nb), FP32, device), _rand((nb, b, b), FP32, device),
                  _rand((n, r), FP32, device, scale=r ** -0.5), _rand((r, n), FP32, device))
    else:
        mixing = (_rand((n, b, b), FP32, device), _rand((n, n), FP32, device))
    norms = tuple(_rand((d,), FP32, device) for _ in range(3))
    ffn = (_rand((t, d, h), FP32, device, scale=d ** -0.5), _rand((t, d, h), FP32, device, scale=d ** -0.5),
           _rand((t, h, d), FP32, device, scale=h ** -0.5))
    return mixing, norms + ffn


def _setup_unimixer(p: Preset, device, dtype, lite: bool) -> Setup:
    bs, t, d, tau, iters = p["bs"], p["T"], p["D"], p["tau"], p["iters"]
    backends = CASES["unimixer-block-lite" if lite else "unimixer-block"].kernel_backends()

    def ref_impl() -> Impl:
        mixing, rest = _unimixer_params(p, device, lite)
        block = blocks.unimixer_block_lite if lite else blocks.unimixer_block
        with torch.no_grad():  # inference: SK weights computed once and cached (eval mode)
            if lite:
                cached = R.lite_weights(*mixing, tau, iters)
            else:
                cached = (R.sinkhorn(mixing[0], tau, iters), R.sinkhorn(mixing[1], tau, iters))

        def fwd(x):
            return block(x, *mixing, *rest, tau=tau, iters=iters)

        def infer(x):
            return blocks.unimixer_mix(x, *cached, *rest)
        return Impl(fwd, mixing + rest, infer)

    impls = {"reference": ref_impl,
             **_module_impls(lambda be: blocks.unimixer_module(p, be, device, lite), backends)}
    return Setup(lambda: (_rand((bs, t, d), dtype, device),), impls, backends)


def setup_unimixer_block(p: Preset, device, dtype) -> Setup:
    return _setup_unimixer(p, device, dtype, lite=False)


def setup_unimixer_block_lite(p: Preset, device, dtype) -> Setup:
    return _setup_unimixer(p, device, dtype, lite=True)


def setup_rankmixer_block(p: Preset, device, dtype) -> Setup:
    bs, t, d = p["bs"], p["T"], p["D"]
    kd = p["ffn_mult"] * d
    backends = CASES["rankmixer-block"].kernel_backends()

    def ref_impl() -> Impl:
        params = (_rand((d,), FP32, device), _rand((d,), FP32, device),
                  _rand((t, d, kd), FP32, device, scale=d ** -0.5), _rand((t, kd), FP32, device),
                  _rand((t, kd, d), FP32, device, scale=kd ** -0.5), _rand((t, d), FP32, device),
                  _rand((d,), FP32, device), _rand((d,), FP32, device))

        def fwd(x):
            return blocks.rankmixer_block(x, *params)
        return Impl(fwd, params)

    modules = _module_impls(lambda be: blocks.rankmixer_module(p, be, device), backends)
    impls = {"reference": ref_impl, **modules}
    return Setup(lambda: (_rand((bs, t, d), dtype, device),), impls, backends)


TRAIN = ("fwd", "bwd", "fwd+bwd")
ALL = TRAIN + ("infer",)
MIX = ("bs", "T", "D", "B")
UNIMIXER_OPS = ("rms_norm", "unimixing_rmsnorm_pswiglu", "add_rms_norm")
CASES: dict[str, Case] = {c.name: c for c in [
    Case("unimixing", "UniMixing op", MIX, ALL, setup_unimixing, op="unimixing"),
    Case("unimixing_rmsnorm", "RMSNorm(z + UniMixing(z))", MIX, ALL, setup_unimixing_rmsnorm,
         op="unimixing_rmsnorm"),
    Case("unimixing_rmsnorm_pswiglu", "pSwiGLU(RMSNorm(z + UniMixing(z)))", MIX + ("h",), ALL,
         setup_unimixing_rmsnorm_pswiglu, op="unimixing_rmsnorm_pswiglu"),
    Case("sinkhorn", "Sinkhorn N x N", ("T", "D", "B"), TRAIN, setup_sinkhorn, op="sinkhorn"),
    Case("lite_weights", "Lite weights SK(omega Z), SK(A_G B_G)", ("T", "D", "B", "r", "nb"), TRAIN,
         setup_lite_weights, op="lite_weights"),
    Case("lite_global_materialised", "Lite global SK(A_G @ B_G), logits materialised", ("T", "D", "B", "r"),
         TRAIN, setup_lite_global_materialised, op="sinkhorn"),
    Case("lite_local_weights", "Lite local SK(omega Z)", ("T", "D", "B", "nb"), TRAIN,
         setup_lite_local_weights, op="lite_local_weights"),
    Case("lite_global_weights", "Lite global SK(A_G @ B_G) (Triton matrix free, cuda materialised)",
         ("T", "D", "B", "r"), TRAIN, setup_lite_global_weights, op="lite_global_weights"),
    Case("rms_norm", "RMSNorm", ("bs", "T", "D"), ALL, setup_rms_norm, op="rms_norm"),
    Case("add_rms_norm", "add + RMSNorm", ("bs", "T", "D"), ALL, setup_add_rms_norm, op="add_rms_norm"),
    Case("pswiglu", "per-token SwiGLU", ("bs", "T", "D", "h"), ALL, setup_pswiglu, op="pswiglu"),
    Case("fm_interaction", "Wukong FM X(X^T Y)", ("bs", "n", "d", "fm_k"), ALL, setup_fm_interaction,
         op="fm_interaction"),
    Case("dot_interaction", "DLRM dot interaction", ("bs", "n", "d"), ALL, setup_dot_interaction,
         op="dot_interaction"),
    Case("token_mixer", "TokenMixer", ("bs", "T", "D"), ALL, setup_token_mixer, op="token_mixer"),
    Case("token_mixer_residual_norm", "LN(TokenMixer(x) + x)", ("bs", "T", "D"), ALL,
         setup_token_mixer_residual_norm, op="token_mixer_residual_norm"),
    Case("residual_norm", "LN(x + r)", ("bs", "T", "D"), ALL, setup_residual_norm, op="residual_norm"),
    Case("pgelu_ffn", "RankMixer per-token GELU FFN", ("bs", "T", "D", "ffn_mult"), ALL, setup_pgelu_ffn,
         op="pgelu_ffn"),
    Case("unimixer-block", "UniMixer block (full, SiameseNorm)", MIX + ("h",), ALL, setup_unimixer_block,
         module="UniMixerBlock", block_ops=UNIMIXER_OPS + ("sinkhorn",)),
    Case("unimixer-block-lite", "UniMixer block (Lite)", MIX + ("h", "r", "nb"), ALL,
         setup_unimixer_block_lite, module="UniMixerBlock",
         block_ops=UNIMIXER_OPS + ("lite_local_weights", "lite_global_weights")),
    Case("rankmixer-block", "RankMixer block", ("bs", "T", "D", "ffn_mult"), ALL, setup_rankmixer_block,
         module="RankMixerBlock", block_ops=("token_mixer_residual_norm", "pgelu_ffn", "residual_norm")),
]}
assert all(set(c.modes) <= set(MODES) for c in CASES.values())

# (case, preset, modes), most important first: a run that hits its time budget keeps these.
GPU_PLAN: list[tuple[str, str, tuple[str, ...]]] = [
    ("unimixer-block", "paper-small", ("fwd+bwd", "infer")),
    ("unimixer-block-lite", "paper-small", ("fwd+bwd", "infer")),
    ("unimixing", "paper-small", ("fwd", "bwd", "fwd+bwd")),
    ("sinkhorn", "paper-small", ("fwd", "fwd+bwd")),
    ("lite_weights", "paper-small", ("fwd", "fwd+bwd")),
    ("lite_global_materialised", "paper-small", ("fwd", "fwd+bwd")),
    ("lite_global_weights", "paper-small", ("fwd", "fwd+bwd")),
    ("unimixer-block-lite", "paper-100m", ("fwd+bwd", "infer")),
    ("sinkhorn", "paper-100m", ("fwd", "fwd+bwd")),
    ("lite_weights", "paper-100m", ("fwd", "fwd+bwd")),
    ("lite_global_materialised", "paper-100m", ("fwd", "fwd+bwd")),
    ("lite_global_weights", "paper-100m", ("fwd", "fwd+bwd")),
    ("unimixing", "paper-100m", ("fwd", "fwd+bwd")),
    ("unimixing", "rankmixer-100m", ("fwd", "fwd+bwd")),
    ("rankmixer-block", "rankmixer-100m", ("fwd+bwd", "infer")),
    ("fm_interaction", "wukong", ("fwd", "fwd+bwd")),
    ("pgelu_ffn", "rankmixer-100m", ("fwd+bwd",)),
    ("token_mixer_residual_norm", "rankmixer-100m", ("fwd+bwd",)),
    ("residual_norm", "rankmixer-100m", ("fwd+bwd",)),
    ("pswiglu", "paper-small", ("fwd", "fwd+bwd")),
    ("rms_norm", "paper-small", ("fwd", "fwd+bwd")),
    ("unimixing_rmsnorm", "paper-small", ("fwd", "fwd+bwd")),
    ("unimixing_rmsnorm_pswiglu", "paper-small", ("fwd", "fwd+bwd")),
    ("add_rms_norm", "paper-small", ("fwd", "fwd+bwd")),
    ("pswiglu", "paper-100m", ("fwd+bwd",)),
    ("rms_norm", "paper-100m", ("fwd+bwd",)),
    ("unimixer-block", "lite-2.5m", ("fwd+bwd", "infer")),
    ("dot_interaction", "dlrm-criteo", ("fwd+bwd",)),
    ("token_mixer", "rankmixer-100m", ("fwd+bwd",)),
    ("rankmixer-block", "rankmixer-1b", ("fwd+bwd", "infer")),
    # the remaining SPEC §10 presets of the headline cases, last: they complete the baseline
    # table (every preset for the UniMixing op, Sinkhorn and the blocks) rather than a target
    ("unimixing", "lite-2.5m", ("fwd", "fwd+bwd")),
    ("unimixing", "rankmixer-1b", ("fwd", "fwd+bwd")),
    ("sinkhorn", "lite-2.5m", ("fwd", "fwd+bwd")),
    ("sinkhorn", "rankmixer-100m", ("fwd", "fwd+bwd")),
    ("sinkhorn", "rankmixer-1b", ("fwd", "fwd+bwd")),
    ("unimixer-block", "paper-100m", ("fwd+bwd", "infer")),
    ("unimixer-block-lite", "lite-2.5m", ("fwd+bwd", "infer")),
]
GPU_QUICK: list[tuple[str, str, tuple[str, ...]]] = [
    ("unimixer-block", "paper-small", ("fwd+bwd",)),
    ("unimixing", "paper-small", ("fwd+bwd",)),
    ("sinkhorn", "paper-small", ("fwd+bwd",)),
    ("rms_norm", "paper-small", ("fwd+bwd",)),
]
CPU_PLAN: list[tuple[str, str, tuple[str, ...]]] = [
    ("unimixer-block-lite", "cpu-tiny", ("fwd+bwd", "infer")),
    ("unimixer-block", "cpu-tiny", ("fwd+bwd",)),
    ("unimixing", "cpu-tiny", ("fwd", "bwd", "fwd+bwd")),
    ("sinkhorn", "cpu-tiny", ("fwd", "fwd+bwd")),
    ("lite_weights", "cpu-tiny", ("fwd+bwd",)),
    ("rms_norm", "cpu-tiny", ("fwd", "fwd+bwd")),
    ("pswiglu", "cpu-tiny", ("fwd+bwd",)),
    ("rankmixer-block", "cpu-tiny-rankmixer", ("fwd+bwd",)),
    ("fm_interaction", "cpu-tiny-wukong", ("fwd+bwd",)),
    ("dot_interaction", "cpu-tiny-dlrm", ("fwd+bwd",)),
]
CPU_QUICK: list[tuple[str, str, tuple[str, ...]]] = [
    ("unimixer-block-lite", "cpu-tiny", ("fwd+bwd", "infer")),
    ("unimixing", "cpu-tiny", ("fwd+bwd",)),
    ("sinkhorn", "cpu-tiny", ("fwd+bwd",)),
    ("rms_norm", "cpu-tiny", ("fwd+bwd",)),
    ("pswiglu", "cpu-tiny", ("fwd+bwd",)),
    ("fm_interaction", "cpu-tiny-wukong", ("fwd+bwd",)),
]


def case_of_op(op: str) -> Case | None:
    """The case that exercises public op ``op`` on its own (its check and sanitizer inputs)."""
    if op in CASES and CASES[op].op == op:
        return CASES[op]
    return next((c for c in CASES.values() if c.op == op), None)


def plan_for(device_type: str, quick: bool, cases: list[str] | None = None, presets: list[str] | None = None,
             modes: list[str] | None = None) -> list[tuple[Case, Preset, tuple[str, ...]]]:
    """The (case, preset, modes) to run. ``cases`` entries are case names or ``case@preset`` pairs. A
    pair runs exactly that pair; with plain names or ``presets`` given: every applicable pair of them
    (a case's default modes from the device plan, else all its modes); else the device's plan."""
    gpu = device_type == "cuda"
    base = (GPU_QUICK if quick else GPU_PLAN) if gpu else (CPU_QUICK if quick else CPU_PLAN)
    pairs = [tuple(n.split("@", 1)) for n in cases or () if "@" in n]
    names = [n for n in cases or () if "@" not in n]
    for name in names + [c for c, _ in pairs]:
        if name not in CASES:
            raise SystemExit(f"--case: expected one of {sorted(CASES)} (or case@preset), got {name!r}")
    for name in (presets or []) + [p for _, p in pairs]:
        if name not in PRESETS:
            raise SystemExit(f"--preset: expected one of {sorted(PRESETS)}, got {name!r}")
    defaults = {(c, p): m for c, p, m in GPU_PLAN + CPU_PLAN}
    out = []
    for cname, pname in pairs:
        case, preset = CASES[cname], PRESETS[pname]
        if not case.applies_to(preset):
            raise SystemExit(f"--case: {cname} does not apply to preset {pname} (it needs {case.needs})")
        out.append((case, preset, defaults.get((cname, pname), ("fwd", "fwd+bwd"))))
    if names or (presets and not pairs):
        from .presets import CPU_PRESETS, GPU_PRESETS
        preset_names = presets or (GPU_PRESETS if gpu else CPU_PRESETS)
        for cname in names or CASES:
            for pname in preset_names:
                case, preset = CASES[cname], PRESETS[pname]
                if case.applies_to(preset):
                    out.append((case, preset, defaults.get((cname, pname), ("fwd", "fwd+bwd"))))
    elif not pairs:
        out = [(CASES[c], PRESETS[p], m) for c, p, m in base]
    if modes:
        out = [(c, p, tuple(x for x in modes if x in c.modes)) for c, p, m in out]
        out = [e for e in out if e[2]]
    return out
