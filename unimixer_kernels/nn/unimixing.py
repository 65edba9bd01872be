"""UniMixing and UniMixing-Lite as a module (SPEC §2, §3): Sinkhorn-constrained token mixing."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from .. import _pending, ops, reference
from .._checks import check_choice, check_divides, check_positive, check_positive_ints, check_sinkhorn_args
from ._common import check_backend, check_module_input, overlap_default

INITS = ("tokenmixer", "identity", "random")
RANDOM_STD = 0.02


def unimixing_num_parameters(
    tokens: int, dim: int, block: int, *, lite: bool = False, rank: int | None = None, bases: int = 4
) -> int:
    """SPEC's count per mixing layer: ``N^2 + N*B^2`` (full) or ``2*N*r + b*B^2 + N*b`` (Lite)."""
    n = tokens * dim // block
    if not lite:
        return n * n + n * block * block
    r = default_rank(n) if rank is None else rank
    return 2 * n * r + bases * block * block + n * bases


def default_rank(num_blocks: int) -> int:
    """Lite's default ``r = N / 8`` **(choice)**: the SPEC §10 presets all have ``r = N/8``."""
    return max(1, num_blocks // 8)


def tokenmixer_compatible(tokens: int, dim: int, block: int, heads: int) -> bool:
    """Whether ``W_G`` can be TokenMixer's permutation: ``H | D`` and ``B | D/H``."""
    return dim % heads == 0 and (dim // heads) % block == 0


def _low_rank_factors(target: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``A [N, r]``, ``B [r, N]`` with ``A @ B`` the best rank-``r`` approximation of ``target``
    (exact when ``r >= N``); a randomized SVD keeps it ``O(N^2 r)`` for large ``N``."""
    n = target.shape[0]
    if rank >= n:
        a = torch.zeros(n, rank)
        a[:, :n] = target
        b = torch.zeros(rank, n)
        b[:n] = torch.eye(n)
        return a, b
    if n <= 512:
        u, s, vh = torch.linalg.svd(target)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        u, s, v = torch.svd_lowrank(target, q=rank, niter=4)
        vh = v.T
    root = s.sqrt()
    return u * root, root[:, None] * vh


class UniMixing(nn.Module):
    """Parameterized token mixing ``[bs, T, D] -> [bs, T, D]`` (SPEC §2, §3).

    The token-major flatten (``t*D + d``) is cut into ``N = T*D/B`` blocks ``x_n``;
    ``y_m = sum_n W_G[m, n] (x_n @ W_B[n])``, computed by ``uk.unimixing``.

    Weights, both Sinkhorn-normalised (``uk.sinkhorn``; Lite: ``uk.lite_local_weights`` and
    ``uk.lite_global_weights``, the two halves of ``uk.lite_weights``):

    - full (``lite=False``): ``W_B = SK(theta_local [N, B, B])``, ``W_G = SK(theta_global [N, N])``,
      ``N^2 + N*B^2`` parameters, ``iters`` defaults to 20;
    - Lite (``lite=True``): ``W_B[n] = SK(sum_l omega[n, l] Z[l])``, ``W_G = SK(A_G @ B_G)`` with
      ``omega [N, b]``, ``basis Z [b, B, B]``, ``a_g [N, r]``, ``b_g [r, N]``;
      ``2*N*r + b*B^2 + N*b`` parameters, ``iters`` defaults to 1, ``rank`` to ``N/8``.

    Initialisation (SPEC §2.3, **choice**), ``c0 = init_scale`` (default ``log(N) + 3`` for the
    global logits and ``log(B) + 3`` for the local ones, so that one Sinkhorn pass at ``tau = 1``
    puts about 95% of each row on the target entry):

    - ``"tokenmixer"`` (default when ``B`` divides ``D/H``): global logits ``c0 (P - 1/N)`` with
      ``P`` TokenMixer's permutation for ``heads`` (default ``T``); local logits ``c0 I``. A
      non-symmetric permutation (``heads != T``) needs ``symmetric=False``.
    - ``"identity"`` (default otherwise): global logits ``c0 (I - 1/N)``, local ``c0 I``.
    - ``"random"``: every logit parameter normal with std 0.02.

    Lite stores the rank-``r`` truncated SVD of the target global logits as ``A_G``, ``B_G``
    (exact only for ``r >= N``), and the target local logits as ``Z[0]`` with ``omega[:, 0] = 1``;
    the other bases and mixing coefficients start normal with std 0.02.

    Temperature: ``tau`` at construction, ``set_temperature(tau)`` later (or a scheduler from
    :mod:`unimixer_kernels.nn.schedules`).

    Sinkhorn runs once per forward in training mode. In eval mode the normalised weights are
    computed once, without autograd, and cached: they are constants there, so no gradient
    reaches the logits in eval mode. The cache is dropped by ``train()``/``eval()`` and whenever
    the temperature, a logit parameter's storage (``data_ptr``), its version counter (in-place
    updates, as optimizers and ``load_state_dict`` make), device or dtype changes. Eval output
    equals train output at the same temperature. Under ``torch.compile`` the cache is bypassed
    (its key cannot be traced): the compiled eval graph recomputes the weights once per call.
    Under autocast, eval mode also caches the weights in the autocast dtype, the copy the mixing
    op would otherwise cast them to on every call (:meth:`weights` with ``dtype``).

    ``overlap`` (default: the ``UNIMIXER_OVERLAP`` environment variable's ``'1'`` or ``'0'``, itself
    ``'1'`` where it is not set): in training on a CUDA device (outside ``torch.compile``), ``W_G`` and
    ``W_B`` are computed on two side streams (two per device, :func:`weights_streams`, at a higher
    priority than the default streams'), each of which first waits for the caller's stream; the caller's
    stream waits for them only where the mixing op reads them (:meth:`op_weights_async`): for ``W_B``
    before the op, for ``W_G`` inside it, after its per-block products (:class:`PendingWeights`). The weights
    depend only on the logits, so their Sinkhorns run beside each other and beside the activations'
    kernels in the forward, and, since autograd runs a backward on its forward's stream, beside the rest
    of the backward once ``dW_G`` and ``dW_B`` are there. The results are the same bits either way; the
    side streams' allocations come from the caching allocator's pools for those streams. Inside a CUDA
    graph capture the side streams join the capture (they wait on the capturing stream first, and
    autograd's backward joins them back). Kernels whose programs wait for the other programs of their
    launch (the resident Triton Sinkhorn, the ``cuda`` paired kernels) are cooperative launches, whose
    programs the GPU makes co-resident whatever else runs, and the ``cuda`` clusters are scheduled
    whole: they finish beside the other streams' kernels. No kernel waits for another stream, only a
    stream does, between kernels.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        block: int,
        *,
        lite: bool = False,
        rank: int | None = None,
        bases: int = 4,
        heads: int | None = None,
        init: str | None = None,
        init_scale: float | None = None,
        tau: float = 1.0,
        iters: int | None = None,
        symmetric: bool = True,
        backend: str = "auto",
        overlap: bool | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim, block=block)
        if overlap is None:
            overlap = overlap_default()
        elif not isinstance(overlap, bool):
            raise TypeError(f"overlap: expected a bool or None (the UNIMIXER_OVERLAP default), "
                            f"got {type(overlap).__name__}")
        length = tokens * dim
        check_divides("block", block, length, "L = T*D")
        n = length // block
        heads = tokens if heads is None else heads
        check_positive("heads", heads, integer=True)
        iters = (1 if lite else 20) if iters is None else iters
        check_sinkhorn_args(tau, iters)
        if init is None:
            init = "tokenmixer" if tokenmixer_compatible(tokens, dim, block, heads) else "identity"
        check_choice("init", init, INITS)
        if init == "tokenmixer":
            check_divides("heads", heads, dim, "D")
            check_divides("block", block, dim // heads, "c = D/H")
            if heads != tokens and symmetric:
                raise ValueError(
                    f"init: 'tokenmixer' with heads={heads} != tokens={tokens} is a non-symmetric "
                    "permutation, which symmetric Sinkhorn cannot produce; pass symmetric=False"
                )
        if init_scale is not None:
            check_positive("init_scale", init_scale)
        self.tokens, self.dim, self.block, self.num_blocks, self.heads = tokens, dim, block, n, heads
        self.lite, self.init, self.iters, self.symmetric = bool(lite), init, int(iters), bool(symmetric)
        self.tau = float(tau)
        self.backend = check_backend(backend)
        self.overlap = overlap
        # eval cache: (key, the weights, their casts by dtype)
        self._cache: tuple[tuple, tuple[Tensor, Tensor], dict] | None = None

        c_global = math.log(n) + 3.0 if init_scale is None else float(init_scale)
        c_local = math.log(block) + 3.0 if init_scale is None else float(init_scale)
        if init == "random":
            target_global = target_local = None
        else:
            if init == "tokenmixer":
                perm = reference.tokenmixer_global(tokens, heads, dim, block)
            else:
                perm = torch.eye(n)
            target_global = c_global * (perm - 1.0 / n)
            target_local = c_local * torch.eye(block)

        if not lite:
            self.rank, self.bases = None, None
            if target_global is None:
                self.theta_local = nn.Parameter(torch.randn(n, block, block) * RANDOM_STD)
                self.theta_global = nn.Parameter(torch.randn(n, n) * RANDOM_STD)
            else:
                self.theta_local = nn.Parameter(target_local.expand(n, block, block).clone())
                self.theta_global = nn.Parameter(target_global)
        else:
            rank = default_rank(n) if rank is None else rank
            check_positive_ints(rank=rank, bases=bases)
            self.rank, self.bases = rank, bases
            omega = torch.randn(n, bases) * RANDOM_STD
            basis = torch.randn(bases, block, block) * RANDOM_STD
            if target_global is None:
                a_g, b_g = torch.randn(n, rank) * RANDOM_STD, torch.randn(rank, n) * RANDOM_STD
            else:
                a_g, b_g = _low_rank_factors(target_global, rank)
                omega[:, 0] = 1.0
                basis[0] = target_local
            self.omega, self.basis = nn.Parameter(omega), nn.Parameter(basis)
            self.a_g, self.b_g = nn.Parameter(a_g.contiguous()), nn.Parameter(b_g.contiguous())

    # --- temperature and weights ----------------------------------------------------------------

    def set_temperature(self, tau: float) -> None:
        """Set the Sinkhorn temperature (``tau > 0``); the eval cache follows it."""
        check_positive("tau", tau)
        self.tau = float(tau)

    def logit_parameters(self) -> tuple[Tensor, ...]:
        if self.lite:
            return (self.omega, self.basis, self.a_g, self.b_g)
        return (self.theta_local, self.theta_global)

    def compute_weights(self) -> tuple[Tensor, Tensor]:
        """``(W_B [N, B, B], W_G [N, N])`` from the logits, with autograd, no cache."""
        return self.local_weights(), self.global_weights()

    def local_weights(self) -> Tensor:
        """``W_B [N, B, B]`` from its logits, with autograd, no cache (Lite: ``uk.lite_local_weights``,
        a per-op spec choosing its backend)."""
        if self.lite:
            return ops.lite_local_weights(self.omega, self.basis, self.tau, self.iters, self.symmetric,
                                          backend=self.backend)
        return ops.sinkhorn(self.theta_local, self.tau, self.iters, self.symmetric, backend=self.backend)

    def global_weights(self) -> Tensor:
        """``W_G [N, N]`` from its logits, with autograd, no cache (Lite: ``uk.lite_global_weights``)."""
        if self.lite:
            return ops.lite_global_weights(self.a_g, self.b_g, self.tau, self.iters, self.symmetric,
                                           backend=self.backend)
        return ops.sinkhorn(self.theta_global, self.tau, self.iters, self.symmetric, backend=self.backend)

    def _cache_key(self) -> tuple:
        params = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.logit_parameters())
        return (self.tau, self.iters, self.symmetric, self.backend, torch.is_inference_mode_enabled(), params)

    def weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The normalised weights: recomputed in training, cached in eval mode (see the class doc).
        With ``dtype`` (the autocast dtype of the op that reads them), eval mode returns, and
        caches, them cast to that dtype; training mode and ``torch.compile`` ignore it (the op
        casts)."""
        if self.training:
            self._cache = None
            return self.compute_weights()
        if torch.compiler.is_compiling():
            # the cache key (version counters, inference mode) cannot be traced: inside a
            # compiled graph the eval weights are recomputed, still once per call
            with torch.no_grad():
                return self.compute_weights()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.compute_weights(), {})
        _, weights, casts = self._cache
        if dtype is None or dtype == weights[1].dtype:
            return weights
        if dtype not in casts:  # one cast per dtype, kept beside the weights it came from
            casts[dtype] = tuple(t.to(dtype) for t in weights)
        return casts[dtype]

    def op_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`weights` for a mixing op on ``x``: in the autocast dtype where autocast is on."""
        on = torch.is_autocast_enabled(x.device.type)
        return self.weights(torch.get_autocast_dtype(x.device.type) if on else None)

    def op_weights_async(self, x: Tensor) -> PendingWeights:
        """:meth:`op_weights`, started on the side streams where ``overlap`` applies (training, CUDA,
        not compiling; see the class doc), else computed here; ``.wait()`` gives them, ordered before
        what the caller's stream runs next."""
        if not (self.overlap and self.training and x.is_cuda and not torch.compiler.is_compiling()):
            return PendingWeights(self.op_weights(x))
        self._cache = None  # as weights() in training
        caller = torch.cuda.current_stream(x.device)
        made = []
        # W_G first: the longer of the two, so it starts first
        for make, stream in zip((self.global_weights, self.local_weights), weights_streams(x.device)):
            stream.wait_stream(caller)  # the logits as the caller's stream left them (an optimizer step)
            with torch.cuda.stream(stream):
                weight = make()
                done = torch.cuda.Event()
                done.record(stream)
            weight.record_stream(caller)  # made on a side stream, read on the caller's: not reused before
            made.append((weight, done))
        (w_global, global_done), (w_local, local_done) = made
        return PendingWeights((w_local, w_global), (global_done, local_done))

    def train(self, mode: bool = True) -> UniMixing:
        self._cache = None
        return super().train(mode)

    # --- forward -------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        pending = self.op_weights_async(x)
        w_local, w_global = pending.wait(late=True)
        return pending.read_by(ops.unimixing, x, w_local, w_global, backend=self.backend)

    def extra_repr(self) -> str:
        lite = f", lite=True, rank={self.rank}, bases={self.bases}" if self.lite else ""
        return (
            f"tokens={self.tokens}, dim={self.dim}, block={self.block}, N={self.num_blocks}{lite}, "
            f"init={self.init!r}, tau={self.tau}, iters={self.iters}, symmetric={self.symmetric}"
            + ("" if self.overlap else ", overlap=False")
        )


_WEIGHTS_STREAMS: dict[int, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}


# above the default streams' priority (0): the caller's stream waits for the weights, so the GPU schedules
# their kernels' pending programs first (bench/results/2026-12-02-h200-run225)
WEIGHTS_PRIORITY = -1


def weights_streams(device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """The two side streams on which :class:`UniMixing` computes its training weights on ``device``,
    ``W_G`` on the first and ``W_B`` on the second (made on first use, shared by every module), at
    ``WEIGHTS_PRIORITY``, a higher priority than the default streams'."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _WEIGHTS_STREAMS:
        _WEIGHTS_STREAMS[index] = tuple(torch.cuda.Stream(index, priority=WEIGHTS_PRIORITY)
                                        for _ in range(2))
    return _WEIGHTS_STREAMS[index]


class PendingWeights:
    """The ``(W_B, W_G)`` of :meth:`UniMixing.op_weights_async`: ``wait()`` returns them after making
    the current stream wait for the side streams' work on them (once; none when made synchronously).

    ``wait(late=True)`` waits for ``W_B`` only and hands ``W_G`` over still pending (``_pending.py``):
    the mixing op that reads it waits for it just before its first kernel that does, so its
    per-block products and casts run while ``W_G``'s Sinkhorn does. The caller passes ``W_G`` to
    exactly one mixing op (through the ops' registry, whose other backends wait first) by
    :meth:`read_by`, which settles the wait after it."""

    __slots__ = ("_weights", "_done", "_late")

    def __init__(self, weights: tuple[Tensor, Tensor], done: tuple[torch.cuda.Event, ...] = ()) -> None:
        self._weights, self._done, self._late = weights, done, False

    def wait(self, late: bool = False) -> tuple[Tensor, Tensor]:
        if self._done:
            w_global = self._weights[1]
            current = torch.cuda.current_stream(w_global.device)
            global_done, *others = self._done
            for event in others:
                current.wait_event(event)
            if late:
                _pending.read_late(w_global, functools.partial(current.wait_event, global_done))
                self._late = True
            else:
                current.wait_event(global_done)
            self._done = ()
        return self._weights

    def _settle(self, reader: str | None) -> None:
        """After the op ``reader`` that took ``W_G`` from ``wait(late=True)``: raises if it never
        waited for it (a backend's ``reads_late`` bug; ``_pending.settled``). ``None``: the op raised;
        the wait runs and nothing is reported, so that its error is the one the caller sees."""
        if self._late:
            self._late = False
            if reader is None:
                _pending.ready(self._weights[1])
            else:
                _pending.settled(self._weights[1], reader)

    def read_by(self, op, *args, **kwargs) -> Tensor:
        """``op(*args, **kwargs)``, the op given ``W_G`` from ``wait(late=True)``; then raises if the op
        returned without waiting for ``W_G`` (a backend's ``reads_late`` bug: its reads may have raced
        the side stream). If the op raises, its error propagates and ``W_G``'s wait is dropped."""
        try:
            out = op(*args, **kwargs)
        except BaseException:
            self._settle(None)
            raise
        self._settle(getattr(op, "__name__", "the mixing op"))
        return out
