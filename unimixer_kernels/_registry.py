"""Backend registry: which op has which backend, whether it can run here, and which one runs.

Every public op is an :class:`Op`. A backend registers an implementation with
``op.register("triton")``; the public function calls ``op.dispatch(backend, *tensors)`` to get the
callable. The choice is made in this order:

1. the ``backend=`` argument of the call, if it is not ``"auto"``;
2. the innermost :func:`use_backend` context;
3. the environment variable ``UNIMIXER_BACKEND``;
4. ``"auto"``: on CUDA tensors the op's ``cuda_auto`` list (fastest first, as measured in
   ``bench/results``), else ``"reference"``. A kernel enters an op's list only once a GPU run
   has shown it correct and faster than the best ``torch.compile`` of the reference; until then
   it runs only when asked for by name. A backend that runs only some calls (shapes, dtypes)
   registers ``auto_accepts``, a test of the call's arguments: ``"auto"`` hands it the calls it
   accepts and tries the next backend of the list (in the end the reference) with the others.

Each of the three may also be a per-op spec, ``"<backend>+<op>=<choice>+..."``: the op named runs on
its ``<choice>``, every other op on ``<backend>`` (``"auto"`` included). A choice is one backend, or a
list ``"cuda/triton"`` tried in order as ``"auto"`` tries ``cuda_auto``: each backend but the last takes
only the calls its ``auto_accepts`` passes, the last every other call. So
``"triton+sinkhorn=cuda/triton"`` runs a block on the Triton kernels but its Sinkhorn calls on the
``cuda`` kernels wherever they take the call (a spec is one string, so a module passes it to every op
it calls unchanged). A spec is explicit as a whole: its default ``"auto"`` (``"auto+sinkhorn=cuda"``)
means each op's own ``"auto"`` order, not the context's or the environment's choice.

An explicit backend that cannot run the call raises; there is no silent fallback.

Autocast. A custom op is opaque to ``torch.autocast``, so each op states its own policy, applied
by ``dispatch`` the same way for every backend (but for the arguments a backend lowers itself,
below) when autocast is on for the tensors' device:

- ``"lower"`` (the GEMM-like ops): floating-point tensor arguments are cast to the autocast dtype,
  as autocast casts ``matmul``'s (except the positions in ``autocast_keep``, e.g. a norm weight,
  and those a backend registers as ``lowers``: it takes them uncast and rounds them to the
  activations' dtype itself where its products need it, so that it can fuse the cast (or skip it
  where fp32 is exact anyway) and return their gradients in their own dtype, as the cast's
  backward would);
- ``"fp32"`` (Sinkhorn, which SPEC keeps in fp32): floating-point arguments are cast to fp32;
- ``None``: arguments pass unchanged (norms and permutations, which keep their input dtype).

The ``"lower"`` cast is ``Tensor.to`` unless the backend registers its own with
:func:`register_lowering_cast`: the Triton backend's (``ops/lowering.py``) casts all of a call's
arguments of one dtype in one launch, and widens their gradients back in one launch. The op then runs
with autocast off, so a reference backend cannot re-cast inside. Without autocast, arguments of mixed
dtypes are not cast: the kernels then compute in fp32.

Pending arguments. A caller may hand an op a tensor still being made on another CUDA stream
(``_pending.py``; the UniMixing modules' ``W_G``). A backend registered with ``reads_late`` positions
waits for those itself, just before its first kernel that reads them; for every other backend, and every
other position, ``dispatch`` runs the waits first, before any autocast cast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from . import _pending

BACKENDS = ("reference", "triton", "cuda")
AUTOCAST_POLICIES = (None, "lower", "fp32")
_ENV_VAR = "UNIMIXER_BACKEND"
_context_stack: list[str] = []


_SPEC_FORM = "'<backend>' or '<backend>+<op>=<backend>[/<backend>...]+...'"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed ``backend=`` value: the default backend and the per-op choices (module docstring)."""

    default: str
    per_op: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def choice(self, op_name: str) -> tuple[str, ...]:
        """The backends ``op_name`` runs on, in the order they are tried (``("auto",)`` for auto)."""
        return dict(self.per_op).get(op_name, (self.default,))

    @property
    def backends(self) -> tuple[str, ...]:
        """Every backend the spec names, but ``"auto"``."""
        named = (self.default, *(b for _, names in self.per_op for b in names))
        return tuple(dict.fromkeys(b for b in named if b != "auto"))


def parse_backend(spec: object, argument: str = "backend") -> BackendSpec:
    """Parse and check a ``backend=`` value; errors name ``argument`` and the expected form."""
    def fail(why: str) -> ValueError:
        return ValueError(f"{argument}: {why}. Run `python -m unimixer_kernels.info` to see what is "
                          "available here.")

    plain = _PLAIN_SPECS.get(spec) if isinstance(spec, str) else None
    if plain is not None:  # every op call parses its backend: the common case without the general parse
        return plain
    names = ("auto", *BACKENDS)
    if not isinstance(spec, str):
        raise fail(f"expected one of {names} or a per-op spec {_SPEC_FORM}, got {spec!r}")
    default, *overrides = spec.split("+")
    if default not in names:
        raise fail(f"expected one of {names}, got {spec!r}" if not overrides else
                   f"the default backend {default!r} of {spec!r} is not one of {names}")
    per_op: dict[str, tuple[str, ...]] = {}
    for item in overrides:
        op_name, eq, choice = item.partition("=")
        if not eq or not op_name or not choice:
            raise fail(f"{item!r} in {spec!r} is not '<op>=<backend>'; the form is {_SPEC_FORM}")
        if op_name not in OPS:
            raise fail(f"{spec!r} names the op {op_name!r}, which is not one of {tuple(OPS)}")
        if op_name in per_op:
            raise fail(f"{spec!r} names the op {op_name!r} twice")
        listed = tuple(choice.split("/"))
        if any(b not in names for b in listed) or ("auto" in listed and len(listed) > 1):
            raise fail(f"{op_name}={choice!r} in {spec!r}: expected 'auto' or backends of {BACKENDS} "
                       "separated by '/'")
        if len(set(listed)) != len(listed):
            raise fail(f"{op_name}={choice!r} in {spec!r} lists a backend twice")
        per_op[op_name] = listed
    return BackendSpec(default, tuple(per_op.items()))


_PLAIN_SPECS = {name: BackendSpec(name) for name in ("auto", *BACKENDS)}


def _check_backend_name(name: str, argument: str = "backend") -> str:
    parse_backend(name, argument)
    return name


def triton_interpreter_on() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_import_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "the `triton` package is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # an installed but broken triton must say why
        return False, f"`import triton` failed: {exc}"
    return True, ""


def _cuda_extension_status() -> tuple[bool, str]:
    from . import _cuda_ext

    return _cuda_ext.status()


def backend_status(name: str) -> tuple[bool, str]:
    """Whether a backend (every backend of a per-op spec) can run anything on this machine, and if
    not, why."""
    named = parse_backend(name).backends
    if "+" in name:
        for b in named:
            ok, why = backend_status(b)
            if not ok:
                return False, f"{b}: {why}"
        return True, " + ".join(backend_status(b)[1] for b in named)
    if name == "reference":
        return True, "pure PyTorch, any device"
    if name == "triton":
        ok, why = _triton_import_status()
        if not ok:
            return False, why
        if torch.cuda.is_available():
            return True, f"Triton on {torch.cuda.get_device_name()}"
        if triton_interpreter_on():
            return True, "Triton interpreter on CPU tensors (TRITON_INTERPRET=1; slow, for tests)"
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in the CPU interpreter)"
    if name == "cuda":
        ok, why = _cuda_extension_status()
        if not ok:
            return False, why
        if not torch.cuda.is_available():
            return False, "the extension is built, but there is no CUDA device"
        return True, f"compiled extension on {torch.cuda.get_device_name()}"
    raise AssertionError(name)


def _device_supported(backend: str, device: torch.device) -> tuple[bool, str]:
    if backend == "reference":
        return True, ""
    if backend == "triton":
        if device.type == "cuda":
            return True, ""
        if device.type == "cpu" and triton_interpreter_on():
            return True, ""
        return False, (
            f"the Triton backend runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); "
            f"got tensors on {device}"
        )
    if backend == "cuda":
        if device.type == "cuda":
            return True, ""
        return False, f"the CUDA backend needs CUDA tensors; got tensors on {device}"
    raise AssertionError(backend)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the block on ``name`` unless a call passes its own ``backend=``."""
    _context_stack.append(_check_backend_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context_stack.pop()


def requested_backend(backend: str = "auto") -> str:
    """The backend asked for, after the argument, the context and the environment variable."""
    _check_backend_name(backend)
    if backend != "auto":
        return backend
    if _context_stack and _context_stack[-1] != "auto":
        return _context_stack[-1]
    env = os.environ.get(_ENV_VAR, "auto").strip() or "auto"
    return _check_backend_name(env, f"environment variable {_ENV_VAR}")


@dataclass
class Op:
    """One public op and its backends.

    ``cuda_auto`` lists, fastest first, the backends ``"auto"`` tries on CUDA tensors; the
    reference is always the last resort for ``"auto"`` and never for an explicit request.
    """

    name: str
    cuda_auto: tuple[str, ...] = ()
    autocast: str | None = None
    autocast_keep: tuple[int, ...] = ()
    impls: dict[str, Callable] = field(default_factory=dict)
    lowers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reads_late: dict[str, tuple[int, ...]] = field(default_factory=dict)
    auto_accepts: dict[str, Callable[..., bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_POLICIES:
            raise ValueError(f"autocast: expected one of {AUTOCAST_POLICIES}, got {self.autocast!r}")

    def register(self, backend: str, lowers: tuple[int, ...] = (),
                 auto_accepts: Callable[..., bool] | None = None,
                 reads_late: tuple[int, ...] = ()) -> Callable[[Callable], Callable]:
        """Register ``backend``'s implementation; ``lowers``: argument positions it takes uncast
        under the ``"lower"`` autocast policy (module docstring); ``auto_accepts(*args)``: whether
        ``"auto"`` may give it a call with these arguments (an explicit request is never tested: the
        implementation raises with its reason); ``reads_late``: argument positions that may arrive
        still pending (``_pending.py``), for which the implementation itself waits just before its
        first read (every other backend of the op, and every other argument, is waited for first).
        A position it reads late may not also be cast by the autocast policy: list it in ``lowers``."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        if lowers and self.autocast != "lower":
            raise ValueError(f"lowers: only an op with the 'lower' autocast policy has arguments to lower, "
                             f"and {self.name!r} has {self.autocast!r}")
        if self.autocast is not None and not set(reads_late) <= set(lowers) | set(self.autocast_keep):
            cast = sorted(set(reads_late) - set(lowers) - set(self.autocast_keep))
            raise ValueError(f"reads_late: positions {cast} would be cast by {self.name!r}'s autocast policy "
                             f"before the implementation could wait for them; list them in lowers")

        def decorator(fn: Callable) -> Callable:
            if backend in self.impls:
                raise RuntimeError(f"op {self.name!r} already has a {backend!r} backend")
            self.impls[backend] = fn
            self.lowers[backend] = tuple(lowers)
            self.reads_late[backend] = tuple(reads_late)
            if auto_accepts is not None:
                self.auto_accepts[backend] = auto_accepts
            return fn

        return decorator

    def status(self, backend: str) -> tuple[bool, str]:
        if backend not in self.impls:
            return False, f"{self.name} has no {backend} implementation"
        return backend_status(backend)

    def select(self, backend: str, device: torch.device) -> str:
        """The backend that runs a call on ``device`` (under ``"auto"``, the first it tries: one with
        ``auto_accepts`` may pass a call on); raises if an explicit one cannot."""
        return self.candidates(backend, device)[0]

    def candidates(self, backend: str, device: torch.device) -> tuple[str, ...]:
        """The backends a call on ``device`` may run on, in the order ``dispatch`` tries them: those of
        an explicit request (raises if one cannot run), else the usable backends of ``cuda_auto`` up to
        the first without ``auto_accepts``, then the reference."""
        spec = requested_backend(backend)
        names = parse_backend(spec).choice(self.name)
        if names == ("auto",):
            return self.auto_order(device)
        for i, name in enumerate(names):
            ok, why = self.status(name)
            if ok:
                ok, why = _device_supported(name, device)
            if not ok:
                raise ValueError(
                    f"backend={name!r} cannot run {self.name}: {why}. "
                    "Use backend='auto' or 'reference', or see `python -m unimixer_kernels.info`."
                )
            if i < len(names) - 1 and name not in self.auto_accepts:
                raise ValueError(
                    f"backend={spec!r}: {name!r} takes every {self.name} call, so {names[i + 1:]} after it "
                    f"would never run; list {name!r} last, or alone"
                )
        return names

    def auto_order(self, device: torch.device) -> tuple[str, ...]:
        """What ``"auto"`` tries on ``device``, in order: the usable backends of ``cuda_auto`` (on CUDA)
        up to the first without ``auto_accepts``, else ending with the reference."""
        order: list[str] = []
        for cand in self.cuda_auto if device.type == "cuda" else ():
            if cand in self.impls and backend_status(cand)[0]:
                order.append(cand)
                if cand not in self.auto_accepts:
                    return tuple(order)
        return (*order, "reference")

    def dispatch(self, backend: str, device: torch.device) -> Callable:
        """The callable that runs a call on ``device`` with ``backend`` (its autocast policy applied)."""
        names = _select_constant(self.name, backend, device.type)
        if len(names) == 1:
            return self._implementation(names[0], device)
        return functools.partial(self._first_accepting, names, device)

    def _first_accepting(self, names: tuple[str, ...], device: torch.device, *args):
        # "auto", or a per-op list, with backends that run only some calls: the last of `names` takes
        # every call
        for name in names[:-1]:
            if self.auto_accepts[name](*args):
                return self._implementation(name, device)(*args)
        return self._implementation(names[-1], device)(*args)

    def _implementation(self, name: str, device: torch.device) -> Callable:
        fn = self.impls[name]
        if self.autocast is not None and torch.is_autocast_enabled(device.type):
            if self.autocast == "lower":
                dtype, cast = torch.get_autocast_dtype(device.type), _LOWERING_CASTS.get(name, _to_each)
            else:
                dtype, cast = torch.float32, _to_each
            keep = self.autocast_keep + self.lowers[name]
            fn = functools.partial(_with_autocast_policy, fn, device.type, dtype, keep, cast)
        if any(self.reads_late.values()):  # an op that may be handed pending tensors: waited for before
            fn = functools.partial(_waiting_first, fn, self.reads_late[name])  # any cast reads them
        return fn


def _waiting_first(fn: Callable, late: tuple[int, ...], *args):
    """``fn(*args)`` after the waits its pending arguments owe, but for the positions ``late`` it
    waits for itself (``_pending.py``)."""
    if _pending.waiting():
        _pending.ready_all([a for i, a in enumerate(args) if i not in late])
    return fn(*args)


def _to_each(xs: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    return [x.to(dtype) for x in xs]


# a cast of a call's arguments of one dtype, all at once: cast(xs, dtype) -> [x.to(dtype) for x in xs]
LoweringCast = Callable[[list[torch.Tensor], torch.dtype], list[torch.Tensor]]
# backend -> the cast its "lower" autocast policy applies (module docstring); Tensor.to if absent
_LOWERING_CASTS: dict[str, LoweringCast] = {}


def register_lowering_cast(backend: str, cast: LoweringCast) -> None:
    """Make ``cast(xs, dtype)`` the ``"lower"`` policy's cast for ``backend``'s implementations. It is
    called with a call's arguments to cast that share one dtype other than ``dtype`` (one call per
    such dtype) and must return what ``[x.to(dtype) for x in xs]`` returns, with gradients that
    autograd can take."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend in _LOWERING_CASTS:
        raise RuntimeError(f"backend {backend!r} already has a lowering cast")
    _LOWERING_CASTS[backend] = cast


def _with_autocast_policy(fn: Callable, device_type: str, dtype: torch.dtype, keep: tuple[int, ...],
                          cast: LoweringCast, *args):
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != dtype and i not in keep:
            by_dtype.setdefault(a.dtype, []).append(i)
    if by_dtype:
        args = list(args)
        for positions in by_dtype.values():
            for i, a in zip(positions, cast([args[i] for i in positions], dtype)):
                args[i] = a
    with torch.autocast(device_type, enabled=False):
        return fn(*args)


def assume_constant(fn: Callable) -> Callable:
    # torch.compile evaluates the decision once at trace time and bakes in the answer, so the
    # status checks (imports, device queries, environment) never enter the graph.
    marker = getattr(getattr(torch, "_dynamo", None), "assume_constant_result", None)
    return marker(fn) if marker is not None else fn


@assume_constant
def _select_constant(op_name: str, backend: str, device_type: str) -> tuple[str, ...]:
    return OPS[op_name].candidates(backend, torch.device(device_type))


OPS: dict[str, Op] = {}


def define_op(name: str, cuda_auto: tuple[str, ...] = (), autocast: str | None = None,
              autocast_keep: tuple[int, ...] = ()) -> Op:
    """Create and record an op; ``info`` and the benchmarks read the records. ``autocast`` and
    ``autocast_keep``: the op's autocast policy (module docstring)."""
    if name in OPS:
        raise RuntimeError(f"op {name!r} is defined twice")
    OPS[name] = Op(name, cuda_auto, autocast, autocast_keep)
    return OPS[name]
