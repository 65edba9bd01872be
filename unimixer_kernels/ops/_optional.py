"""Optional tensors across the custom-op boundary. A ``torch.library`` custom op returns tensors and
its schema fixes how many, so a tensor that a kernel hands over only sometimes (a saved hidden
buffer, a 16-bit weight copy, the forward's ``H``) travels as an empty placeholder instead of
``None``, and is turned back into ``None`` where the backward reads it."""

from __future__ import annotations

from torch import Tensor


def placeholder(like: Tensor) -> Tensor:
    """The empty stand-in for a tensor that is not there (``like``'s device and dtype)."""
    return like.new_empty((0,))


def as_output(t: Tensor | None, like: Tensor) -> Tensor:
    """``t``, or its placeholder where it is ``None``."""
    return placeholder(like) if t is None else t


def as_input(t: Tensor) -> Tensor | None:
    """``None`` for a placeholder, else ``t``."""
    return t if t.numel() > 0 else None
