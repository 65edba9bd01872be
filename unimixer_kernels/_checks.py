"""Input validation shared by every public op and module (SPEC §9).

Each check raises before anything is launched, with a message that names the argument, what was
expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_tensor(
    name: str,
    t: object,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
) -> torch.Tensor:
    """A floating tensor of a supported dtype and, if given, of rank ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {tuple(dtypes)}, got {t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a {want}-d tensor, got shape {tuple(t.shape)}")
    return t


def check_optional_tensor(name: str, t: object, ndim: int | None = None) -> torch.Tensor | None:
    return None if t is None else check_tensor(name, t, ndim)


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], what: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        why = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{why}, got {tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for k, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"{k}: expected a tensor on {first} (the device of {first_name}), got one on {dev}; "
                "move all inputs to one device"
            )
    return first


def check_positive(name: str, value: object, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name}: expected a positive {'int' if integer else 'number'}, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name}: expected a value > 0, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r}")


def check_divides(name: str, divisor: int, total: int, total_name: str) -> None:
    if divisor <= 0 or total % divisor != 0:
        raise ValueError(
            f"{name}: expected a divisor of {total_name}={total}, got {divisor} "
            f"({total_name} % {name} = {total % divisor if divisor > 0 else 'undefined'})"
        )


def check_sinkhorn_args(tau: object, iters: object) -> None:
    check_positive("tau", tau)
    check_positive("iters", iters, integer=True)


# --- helpers for modules and models (appended) -----------------------------------------------------


def check_tokens(name: str, x: object, tokens: int, dim: int) -> torch.Tensor:
    """A floating ``[bs, T, D]`` tensor with the ``T`` and ``D`` a module was built for."""
    check_tensor(name, x, ndim=3)
    if x.shape[1] != tokens or x.shape[2] != dim:
        raise ValueError(
            f"{name}: expected shape (bs, T={tokens}, D={dim}), got {tuple(x.shape)}"
        )
    return x


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_on_device_of(name: str, x: torch.Tensor, reference: torch.Tensor | None, owner: str) -> None:
    """``x`` is on the device of ``reference`` (a parameter of ``owner``)."""
    if reference is not None and x.device != reference.device:
        raise ValueError(
            f"{name}: expected a tensor on {reference.device} (the device of the {owner} parameters), "
            f"got one on {x.device}; move the input or the module"
        )


def check_positive_ints(**values: object) -> None:
    for name, value in values.items():
        check_positive(name, value, integer=True)
