"""The tolerance contract of SPEC §8, as reusable test utilities.

For an op ``f`` with a kernel backend and the reference:

* ``ref``: the reference in fp64 on the same (upcast) inputs, on the same device;
* ``pt``: the reference maths in the test dtype, with PyTorch, on the same device;
* pass when ``max|kernel - ref| <= 2 * max|pt - ref| + tiny`` for outputs and ``5x`` for
  gradients; in fp32 also ``rtol = 1e-4`` against ``ref`` (``atol`` = 1e-4 of the largest value,
  at least ``tiny``); never a NaN.

:func:`check_against_reference` runs both forward and backward through one public op with two
``backend=`` values and applies the rule to every output and every gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

OUTPUT_FACTOR = 2.0
GRAD_FACTOR = 5.0


def _tiny(ref: Tensor, dtype: torch.dtype) -> float:
    """One rounding of the largest output to ``dtype``: on a handful of elements the torch
    baseline can round luckily, and the rule must not fail an equally exact kernel for it."""
    scale = max(ref.abs().max().item() if ref.numel() else 0.0, 1.0)
    return max(1e-6, 0.5 * torch.finfo(dtype).eps) * scale


def assert_close_to_reference(
    out: Tensor,
    ref: Tensor,
    pt: Tensor,
    *,
    factor: float = OUTPUT_FACTOR,
    name: str = "output",
    test_dtype: torch.dtype | None = None,
) -> None:
    """``max|out - ref| <= factor * max|pt - ref| + tiny``; ``ref`` is fp64, ``pt`` in the test dtype.

    ``test_dtype`` (default ``out.dtype``) is the dtype of the activations: the extra fp32
    ``rtol=1e-4`` check applies only when the whole computation is fp32.
    """
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if out.numel() == 0:
        return
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).sum().item()
        raise AssertionError(f"{name}: {bad} non-finite elements (unwritten or overflowed)")
    ref = ref.double().cpu()
    err = (out.double().cpu() - ref).abs().max().item()
    base = (pt.double().cpu() - ref).abs().max().item()
    bound = factor * base + _tiny(ref, out.dtype)
    if err > bound:
        raise AssertionError(
            f"{name}: max|kernel - fp64 ref| = {err:.3e} > {factor} * max|torch-{out.dtype} - fp64 ref| "
            f"({base:.3e}) + tiny = {bound:.3e}"
        )
    if (test_dtype or out.dtype) == torch.float32:
        # atol: 1e-4 of the largest value, and never below ``tiny``: a gradient that is exactly zero
        # in fp64 (a 1x1 Sinkhorn block) comes out as fp32 rounding noise, which no rtol can bound
        atol = max(1e-4 * ref.abs().max().item(), _tiny(ref, out.dtype))
        torch.testing.assert_close(
            out.double().cpu(), ref, rtol=1e-4, atol=atol,
            msg=lambda m: f"{name} (fp32 rtol=1e-4): {m}\n{_rtol_worst(out, ref, pt, atol)}",
        )


def _rtol_worst(out: Tensor, ref: Tensor, pt: Tensor, atol: float) -> str:
    """Where ``out`` misses the fp32 ``rtol`` check by most: the element, its three values, and how
    torch-fp32 fares against the same check there and over the whole tensor (a check that torch's own
    result misses is out of fp32's reach for that input, not a kernel's fault)."""
    out, pt = out.double().cpu(), pt.double().cpu()
    allowed = atol + 1e-4 * ref.abs()
    excess = (out - ref).abs() - allowed
    i = int(excess.argmax())
    idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), ref.shape)) if ref.dim() else ()
    flat = [t.reshape(-1)[i].item() for t in (out, ref, pt, allowed)]
    pt_worst = ((pt - ref).abs() / allowed).max().item()
    return (f"worst element {idx}: kernel {flat[0]:.9e}, fp64 {flat[1]:.9e}, torch-fp32 {flat[2]:.9e}; "
            f"allowed {flat[3]:.3e}, kernel's error {abs(flat[0] - flat[1]):.3e}, torch-fp32's "
            f"{abs(flat[2] - flat[1]):.3e}; torch-fp32's largest error over the tensor is "
            f"{pt_worst:.2f}x what the check allows")


@contextlib.contextmanager
def _full_precision_gemms():
    """cuBLAS without TF32 and without 16-bit split-K reductions (restored on exit)."""
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_fp16_reduced_precision_reduction,
             m.allow_bf16_reduced_precision_reduction, torch.backends.cudnn.allow_tf32)
    m.allow_tf32 = m.allow_fp16_reduced_precision_reduction = False
    m.allow_bf16_reduced_precision_reduction = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        (m.allow_tf32, m.allow_fp16_reduced_precision_reduction,
         m.allow_bf16_reduced_precision_reduction, torch.backends.cudnn.allow_tf32) = saved


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _upcast(t, dtype=torch.float64):
    if isinstance(t, Tensor) and t.is_floating_point():
        return t.detach().to(dtype).requires_grad_(t.requires_grad)
    return t


def check_against_reference(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: Sequence[object],
    *,
    backend: str,
    grads: bool = True,
    kwargs: dict | None = None,
    reference_backend: str = "reference",
) -> None:
    """Run ``fn(*inputs, backend=...)`` on ``backend`` and check it by the SPEC §8 rule.

    Floating inputs with ``requires_grad`` get gradients checked against the fp64 reference with
    one fresh random ``grad_output`` per output. The reference runs on the inputs' device, in fp64
    and in the inputs' own dtypes (``pt``): the kernel is held to what PyTorch achieves on the same
    hardware. ``pt`` runs with every reduced-precision shortcut of the GEMM libraries off (TF32,
    16-bit split-K reductions), so that it accumulates in fp32 as SPEC §8 asks of the kernels.
    """
    kwargs = dict(kwargs or {})
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def run(args, be):
        outs = _as_tuple(fn(*args, backend=be, **kwargs))
        return outs

    out = run(inputs, backend)
    ref_inputs = [_upcast(t) for t in inputs]
    pt_inputs = [t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t
                 for t in inputs]
    with _full_precision_gemms():
        ref = run(ref_inputs, reference_backend)
        pt = run(pt_inputs, reference_backend)
    test_dtype = next(t.dtype for t in inputs if isinstance(t, Tensor) and t.is_floating_point())
    for k, (o, r, p) in enumerate(zip(out, ref, pt)):
        try:
            assert_close_to_reference(o, r, p, name=f"output {k}", test_dtype=test_dtype)
        except AssertionError as exc:
            moved = _one_ulp_error(lambda args: run(args, reference_backend), inputs, diff, None, k, r, p)
            raise AssertionError(f"{exc}\n{moved}") from None
    if not grads or not diff:
        return
    gouts = [torch.randn(o.shape, dtype=o.dtype, device=o.device) for o in out]
    g_out = torch.autograd.grad(out, [inputs[i] for i in diff], gouts, allow_unused=True)
    with _full_precision_gemms():
        g_ref = torch.autograd.grad(ref, [ref_inputs[i] for i in diff],
                                    [g.detach().double() for g in gouts], allow_unused=True)
        g_pt = torch.autograd.grad(pt, [pt_inputs[i] for i in diff],
                                   [g.detach().to(p.dtype) for g, p in zip(gouts, pt)], allow_unused=True)
    for k, (i, a, r, p) in enumerate(zip(diff, g_out, g_ref, g_pt)):
        if r is None:
            continue
        if a is None:
            raise AssertionError(f"grad of input {i}: the kernel returned none, the reference did")
        try:
            assert_close_to_reference(
                a, r, p, factor=GRAD_FACTOR, name=f"grad of input {i}", test_dtype=test_dtype
            )
        except AssertionError as exc:
            moved = _one_ulp_error(lambda args: run(args, reference_backend), inputs, diff, gouts, k, r, p)
            raise AssertionError(f"{exc}\n{moved}") from None


def _one_ulp_error(run, inputs, diff, gouts, k: int, ref: Tensor, pt: Tensor) -> str:
    """How far torch in the test dtype moves when every floating input moves by one ulp (an equally
    valid rounding of the same numbers): its error in gradient ``k`` (output ``k`` when ``gouts`` is
    ``None``) against the fp64 ``ref`` of the unmoved inputs, over its own unmoved error ``pt``. Where
    that ratio is itself above the rule's factor, the rule asks for more than the test dtype can give at
    these inputs (bench/NOTES.md, "The GPU test rule"): the failure message says so, and the verdict
    stands."""
    moved = [t.detach().nextafter(torch.full_like(t, float("inf"))).requires_grad_(t.requires_grad)
             if isinstance(t, Tensor) and t.is_floating_point() else t for t in inputs]
    factor = OUTPUT_FACTOR if gouts is None else GRAD_FACTOR
    with _full_precision_gemms():
        outs = run(moved)
        if gouts is None:
            g = outs[k].detach()
        else:
            g = torch.autograd.grad(outs, [moved[j] for j in diff], [go.detach().to(o.dtype) for go, o in
                                                                      zip(gouts, outs)], allow_unused=True)[k]
    if g is None:
        return "torch on the inputs moved by one ulp: no gradient"
    ref = ref.double().cpu()
    own = (pt.double().cpu() - ref).abs().max().item()
    err = (g.double().cpu() - ref).abs().max().item()
    ratio = err / own if own > 0 else float("inf")
    dtype = str(pt.dtype).replace("torch.", "")
    return (f"torch-{dtype} on every floating input moved by one ulp: {err:.3e}, {ratio:.2f}x its own "
            f"error (above {factor} means the rule is beyond {dtype}'s reach at these inputs)")


def held_bytes(fn: Callable[[], Tensor]) -> int:
    """CUDA memory that ``fn()`` leaves allocated besides its output's own storage, the output alive:
    what autograd keeps for the backward."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before - out.untyped_storage().nbytes()


def random_input(shape, dtype: torch.dtype, device: str | torch.device = "cpu", *,
                 requires_grad: bool = False, noncontiguous: bool = False, scale: float = 1.0) -> Tensor:
    """Fresh normal data; ``noncontiguous`` returns a strided view of a larger buffer (same values layout)."""
    if noncontiguous:
        big = torch.randn(*shape[:-1], 2 * shape[-1] + 1, device=device, dtype=torch.float32) * scale
        t = big.to(dtype)[..., 1 : 2 * shape[-1] + 1 : 2]
    else:
        t = (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)
    return t.requires_grad_(requires_grad)


def dominated_logits(shape, device: str | torch.device = "cpu") -> Tensor:
    """Sinkhorn logits whose rows and columns differ by whole offsets (at tau = 0.05, S0's rows and
    columns lie hundreds apart): the first iteration's reductions need their maximum, the later ones
    start from a normalised iterate, whatever the logits were. Fixed seed (its own generator: the global
    one is left alone); fp32, requires grad."""
    g = torch.Generator().manual_seed(7)
    n = shape[-1]
    x = (torch.randn(shape, generator=g) + 4 * torch.randn(*shape[:-1], 1, generator=g)
         + 4 * torch.randn(*shape[:-2], 1, n, generator=g))
    return x.to(device).requires_grad_(True)


def lite_weights_inputs(n: int, nb: int, bsz: int, r: int, dtype: torch.dtype,
                        device: str | torch.device = "cpu", *, noncontiguous: bool = False) -> list[Tensor]:
    """``(omega [n, nb], Z [nb, bsz, bsz], A_G [n, r], B_G [r, n])`` for ``lite_weights``, fresh
    normal values scaled so that both logits have unit variance (as trained weights have, roughly).

    Much larger logits at tau = 0.05 make the output hinge on the last bit of each fp32 logit:
    the kernel and the fp32 reference then round the rank-r sums differently, and the SPEC §8
    ratio compares two equally valid roundings."""

    def mk(shape, scale):
        return random_input(shape, dtype, device, requires_grad=True, noncontiguous=noncontiguous,
                            scale=scale)

    return [mk((n, nb), nb**-0.25), mk((nb, bsz, bsz), nb**-0.25), mk((n, r), r**-0.25), mk((r, n), r**-0.25)]
