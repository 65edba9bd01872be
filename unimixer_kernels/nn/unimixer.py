"""The UniMixer block with SiameseNorm, and the stack (SPEC §4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from .._checks import check_positive, check_positive_ints
from ._common import check_backend, check_module_input
from .ffn import PerTokenFFN
from .unimixing import UniMixing


class UniMixerBlock(nn.Module):
    """One SiameseNorm block over two streams ``(Xbar, Ybar)``, both ``[bs, T, D]``::

        Y~ = RMSNorm(Ybar)                         uk.rms_norm, norm_y
        Z  = Xbar + Y~                             (its residual=Xbar: one pass)
        U  = RMSNorm(Z + UniMixing(Z))             uk.unimixing_rmsnorm_pswiglu: both lines,
        O  = pSwiGLU(U)                            norm_mix and the PerTokenFFN's weights
        Xbar' = RMSNorm(Xbar + O)                  uk.add_rms_norm, norm_x
        Ybar' = Ybar + O                           (add_rms_norm's sum when y is None)

    ``forward(x, y=None)`` returns ``(Xbar', Ybar')``; ``y=None`` starts both streams at ``x``.
    Keywords ``lite``, ``rank``, ``bases``, ``heads``, ``init``, ``init_scale``, ``tau``, ``iters``,
    ``symmetric`` and ``overlap`` go to :class:`UniMixing`; ``hidden`` and ``bias`` to the pSwiGLU. The block
    reads ``self.ffn``'s weights into one op with the mixing (the FFN module's own ``forward`` and
    hooks are not called). On the Triton backend that op's backward overwrites an intermediate it
    saved, so a second backward through the same graph (``retain_graph=True``) raises.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        block: int,
        *,
        hidden: int | None = None,
        bias: bool = True,
        eps: float = 1e-6,
        backend: str = "auto",
        **mixing_kwargs,
    ) -> None:
        super().__init__()
        check_positive_ints(tokens=tokens, dim=dim, block=block)
        check_positive("eps", eps)
        self.tokens, self.dim, self.eps = tokens, dim, float(eps)
        self.backend = check_backend(backend)
        self.mixing = UniMixing(tokens, dim, block, backend=backend, **mixing_kwargs)
        self.ffn = PerTokenFFN(tokens, dim, hidden, "swiglu", bias=bias, backend=backend)
        self.norm_y = nn.Parameter(torch.ones(dim))
        self.norm_mix = nn.Parameter(torch.ones(dim))
        self.norm_x = nn.Parameter(torch.ones(dim))

    def set_temperature(self, tau: float) -> None:
        self.mixing.set_temperature(tau)

    @property
    def tau(self) -> float:
        return self.mixing.tau

    def forward(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_module_input(self, x, self.tokens, self.dim, "x")
        if y is None:
            y = x
        else:
            check_module_input(self, y, self.tokens, self.dim, "y")
            if y.shape != x.shape:
                raise ValueError(f"y: expected shape {tuple(x.shape)} (the shape of x), got {tuple(y.shape)}")
        be = self.backend
        # the mixing weights first: autograd runs ready nodes latest-recorded first, so their
        # backward (Sinkhorn's N x N buffers at large N) then waits for the norm's below, whose
        # gradient buffers are freed by then. With the mixing's overlap they run on two side streams,
        # beside each other, the norm here and the norm's backward (UniMixing's class doc)
        pending = self.mixing.op_weights_async(x)
        # Xbar + RMSNorm(Ybar) in the norm's pass; with one stream in (y is x) the norm's backward
        # kernel also adds the residual's gradient into its dX
        z = ops.rms_norm(y, self.norm_y, self.eps, residual=x, backend=be)
        # W_G handed over still pending: the op waits for it after its per-block products and casts
        w_local, w_global = pending.wait(late=True)
        o = pending.read_by(ops.unimixing_rmsnorm_pswiglu, z, w_local, w_global, self.norm_mix,
                            *self.ffn.swiglu_weights(), self.eps, backend=be)
        x_next, x_plus_o = ops.add_rms_norm(o, x, self.norm_x, self.eps, backend=be)
        # one stream in (the first block): Ybar + O is the sum add_rms_norm already returned, which
        # saves a [bs, T, D] buffer and an add, and in backward folds the residual gradient into
        # the norm's backward kernel instead of a separate accumulation
        return x_next, (x_plus_o if y is x else y + o)


class UniMixer(nn.Module):
    """The SiameseNorm stack of ``num_blocks`` :class:`UniMixerBlock` s (SPEC §4).

    Both streams start at ``X``; the output is ``Xbar_M + RMSNorm(Ybar_M)`` (``final_norm``),
    ``[bs, T, D]``. Block keywords are passed to every block.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        block: int,
        num_blocks: int,
        *,
        eps: float = 1e-6,
        backend: str = "auto",
        **block_kwargs,
    ) -> None:
        super().__init__()
        check_positive_ints(num_blocks=num_blocks)
        self.tokens, self.dim, self.eps = tokens, dim, float(eps)
        self.backend = check_backend(backend)
        self.blocks = nn.ModuleList(
            UniMixerBlock(tokens, dim, block, eps=eps, backend=backend, **block_kwargs)
            for _ in range(num_blocks)
        )
        self.final_norm = nn.Parameter(torch.ones(dim))

    def set_temperature(self, tau: float) -> None:
        for blk in self.blocks:
            blk.set_temperature(tau)

    @property
    def tau(self) -> float:
        return self.blocks[0].tau

    def forward(self, x: Tensor) -> Tensor:
        check_module_input(self, x, self.tokens, self.dim)
        xbar, ybar = x, x
        for blk in self.blocks:
            xbar, ybar = blk(xbar, ybar)
        return ops.rms_norm(ybar, self.final_norm, self.eps, residual=xbar, backend=self.backend)
