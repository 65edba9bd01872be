"""Tensors still being made on another CUDA stream, waited for where an op first reads them.

:class:`.nn.unimixing.UniMixing` computes its training weights on side streams. A caller that waits
for ``W_G`` before calling the mixing op also holds back the op's work that does not read ``W_G``
(the per-block products, the lowering casts), though on the spec's ``cuda`` Sinkhorn the forward
needs ``W_G`` about 48 us after the block's first norm ends (bench/NOTES.md). So the caller may hand
``W_G`` over still pending: :func:`read_late` records the wait it owes, and

- a backend registered with ``reads_late`` (``_registry.py``) calls :func:`ready` just before its
  first kernel that reads the tensor;
- any other backend of that op has every pending argument waited for before it runs (the registry
  calls :func:`ready_all`), so no backend reads a tensor its stream has not waited for;
- the caller then calls :func:`settled`, which raises if the op never waited: that is a bug in a
  ``reads_late`` backend, reported instead of a read that races the side stream (or :func:`ready`
  where the op raised, so that its own error is the one reported).

A pending tensor is known by its device and data pointer, so the custom ops' own views of it (the
same storage) find it. Nothing here depends on CUDA: the wait is any callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# (device, data pointer) -> the wait still owed before the tensor is read
_PENDING: dict[tuple[str, int], Callable[[], None]] = {}


def _key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.data_ptr()


def read_late(tensor: torch.Tensor, wait: Callable[[], None]) -> torch.Tensor:
    """Record that ``wait()`` must run before ``tensor`` is read; returns ``tensor``."""
    key = _key(tensor)
    if key in _PENDING:
        raise RuntimeError("read_late: this tensor already has a pending wait; settle it first")
    _PENDING[key] = wait
    return tensor


def waiting() -> bool:
    """Whether any tensor owes a wait."""
    return bool(_PENDING)


def ready(tensor: torch.Tensor) -> None:
    """Run the wait ``tensor`` owes, if any (once); a no-op for any other tensor."""
    if _PENDING:
        wait = _PENDING.pop(_key(tensor), None)
        if wait is not None:
            wait()


def ready_all(args: Iterable[object]) -> None:
    """:func:`ready` for every tensor among ``args``."""
    if _PENDING:
        for a in args:
            if isinstance(a, torch.Tensor):
                ready(a)


def settled(tensor: torch.Tensor, reader: str) -> None:
    """Raise if ``tensor`` still owes its wait after ``reader`` (the op handed it) returned; the
    wait runs first, so that the stream stays correct for whatever follows."""
    if _PENDING and _key(tensor) in _PENDING:
        ready(tensor)
        raise RuntimeError(f"{reader} returned without waiting for a tensor it was handed still pending "
                           f"(_pending.read_late): its reads may have raced the stream that makes it. "
                           f"This is a bug in the backend's reads_late registration")
