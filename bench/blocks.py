"""Block references composed from ``unimixer_kernels.reference`` (SPEC §1, §4), for the
``reference`` and ``compiled`` providers, and the guarded builders of the ``uk.nn`` modules that the
kernel providers time.

A module that is not there, or whose constructor this file cannot fill, raises
:class:`Unavailable` with the reason; the row then says ``unavailable: <why>`` (no silent fallback
to the reference).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from unimixer_kernels import reference as R


class Unavailable(Exception):
    """A provider cannot run this case here; the message says why."""


def unimixer_mix(xbar: Tensor, ybar: Tensor, w_local: Tensor, w_global: Tensor, n1: Tensor, n2: Tensor,
                 n3: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, eps: float = 1e-6):
    """One SiameseNorm UniMixer block with given mixing weights -> ``(Xbar', Ybar')``."""
    z = xbar + R.rms_norm(ybar, n1, eps)
    u = R.unimixing_rmsnorm(z, w_local, w_global, n2, eps)
    o = R.pswiglu(u, w_gate, w_up, w_down)
    return R.rms_norm(xbar + o, n3, eps), ybar + o


def unimixer_block(x: Tensor, theta_local: Tensor, theta_global: Tensor, n1: Tensor, n2: Tensor, n3: Tensor,
                   w_gate: Tensor, w_up: Tensor, w_down: Tensor, tau: float, iters: int):
    """The full block on its first layer (both streams start at ``x``), Sinkhorn in the step."""
    w_local = R.sinkhorn(theta_local, tau, iters)
    w_global = R.sinkhorn(theta_global, tau, iters)
    return unimixer_mix(x, x, w_local, w_global, n1, n2, n3, w_gate, w_up, w_down)


def unimixer_block_lite(x: Tensor, omega: Tensor, basis: Tensor, a_g: Tensor, b_g: Tensor, n1: Tensor,
                        n2: Tensor, n3: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, tau: float,
                        iters: int):
    """The Lite block: ``W_B = SK(omega Z)``, ``W_G = SK(A_G B_G)`` in the step."""
    w_local, w_global = R.lite_weights(omega, basis, a_g, b_g, tau, iters)
    return unimixer_mix(x, x, w_local, w_global, n1, n2, n3, w_gate, w_up, w_down)


def rankmixer_block(x: Tensor, ln1_w: Tensor, ln1_b: Tensor, ln2_w: Tensor, ln2_b: Tensor, w1: Tensor,
                    b1: Tensor, w2: Tensor, b2: Tensor):
    """Post-norm RankMixer: ``S = LN(TokenMixer(X) + X)``, ``X' = LN(PFFN(S) + S)``, ``H = T``."""
    s = R.layer_norm(R.token_mixer(x, x.shape[1]) + x, ln1_w, ln1_b)
    return R.layer_norm(R.pgelu_ffn(s, w1, b1, w2, b2) + s, ln2_w, ln2_b)


# --- uk.nn modules -------------------------------------------------------------------------------

# constructor argument names this file knows how to fill, by the preset size they mean
_SYNONYMS = {
    "T": ("tokens", "num_tokens", "n_tokens", "seq_len", "T"),
    "D": ("dim", "d_model", "hidden_size", "embed_dim", "width", "D"),
    "B": ("block_size", "block", "B"),
    "r": ("rank", "lite_rank", "r"),
    "nb": ("num_bases", "bases", "n_bases", "lite_bases", "b"),
    "h": ("hidden_dim", "ffn_dim", "ffn_hidden", "swiglu_hidden", "h"),
    "tau": ("tau", "temperature"),
    "iters": ("iters", "sinkhorn_iters", "n_iters", "K"),
    "heads": ("heads", "num_heads", "n_heads", "H"),
    "ffn_mult": ("ffn_mult", "expansion", "mult", "k"),
}


def build_module(cls_name: str, preset, backend: str, device, *, lite: bool | None = None):
    """``uk.nn.<cls_name>`` sized by ``preset`` on ``device``, and a call that runs it on ``backend``.

    Returns ``(module, call)``; ``call(x)`` runs the module with the backend selected (the
    constructor's ``backend=`` if it has one, else inside ``uk.use_backend``).
    """
    import unimixer_kernels as uk

    cls = getattr(uk.nn, cls_name, None)
    if cls is None:
        raise Unavailable(f"uk.nn.{cls_name} is not there yet")
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError) as exc:
        raise Unavailable(f"cannot read the signature of uk.nn.{cls_name}: {exc}") from exc
    values = {"heads": preset["T"]} if preset.has(["T"]) else {}
    kwargs: dict = {}
    missing = []
    for name, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "backend":
            kwargs[name] = backend
            continue
        if name in ("lite", "use_lite") and lite is not None:
            kwargs[name] = lite
            continue
        if name == "variant" and lite is not None:
            kwargs[name] = "lite" if lite else "full"
            continue
        key = next((k for k, names in _SYNONYMS.items() if name in names), None)
        if key is not None and (key in values or preset.has([key])):
            kwargs[name] = values[key] if key in values else preset[key]
        elif param.default is param.empty:
            missing.append(name)
    if missing:
        raise Unavailable(f"uk.nn.{cls_name}{sig}: cannot fill {missing} from preset {preset.name}")
    if lite and not any(k in kwargs for k in ("lite", "use_lite", "variant")):
        raise Unavailable(f"uk.nn.{cls_name}{sig} has no lite/variant argument")
    try:
        module = cls(**kwargs).to(device)
    except Exception as exc:  # a constructor that rejects the preset says why
        raise Unavailable(f"uk.nn.{cls_name}(**{kwargs}) failed: {type(exc).__name__}: {exc}") from exc
    n_args = sum(1 for p in inspect.signature(module.forward).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    with_backend_kw = "backend" in kwargs

    def call(x: Tensor):
        args = (x,) * max(1, n_args)
        if with_backend_kw:
            return module(*args)
        with uk.use_backend(backend):
            return module(*args)

    return module, call


def params_of(module: torch.nn.Module) -> tuple[Tensor, ...]:
    return tuple(p for p in module.parameters() if p.requires_grad)
