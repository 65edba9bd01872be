"""Public functional ops: validation, then dispatch to reference / Triton / CUDA (one file per op)."""

from .interactions import dot_interaction, fm_interaction
from .pswiglu import pswiglu
from .rms_norm import add_rms_norm, rms_norm
from .sinkhorn import lite_weights, sinkhorn
from .token_mixer import token_mixer
from .unimixing import unimixing, unimixing_rmsnorm

__all__ = [
    "add_rms_norm",
    "dot_interaction",
    "fm_interaction",
    "lite_weights",
    "pswiglu",
    "rms_norm",
    "sinkhorn",
    "token_mixer",
    "unimixing",
    "unimixing_rmsnorm",
]
