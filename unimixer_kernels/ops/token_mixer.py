"""``token_mixer``: validation and backends (SPEC §1)."""

from __future__ import annotations

from torch import Tensor

from .. import reference
from .._checks import check_divides, check_tensor
from .._registry import define_op

TOKEN_MIXER = define_op("token_mixer")
TOKEN_MIXER.register("reference")(reference.token_mixer)


def token_mixer(x: Tensor, heads: int, *, backend: str = "auto") -> Tensor:
    """RankMixer's rule-based mixing: ``[bs, T, D] -> [bs, H, T*D/H]`` (a permutation)."""
    check_tensor("x", x, ndim=3)
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"heads: expected an int, got {heads!r}")
    check_divides("heads", heads, x.shape[-1], "D")
    return TOKEN_MIXER.dispatch(backend, x.device)(x, heads)
