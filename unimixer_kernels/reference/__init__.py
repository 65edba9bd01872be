"""Pure-PyTorch references: the SPEC in code. fp64-capable, readable, no tricks.

These are the ground truth every kernel is tested against. They know nothing of kernels.
"""

from .ffn import pgelu_ffn, pswiglu
from .interactions import dot_interaction, fm_interaction
from .mixing import (
    token_mixer,
    tokenmixer_global,
    unimixing,
    unimixing_operator,
    unimixing_rmsnorm,
)
from .norms import add_rms_norm, layer_norm, rms_norm
from .sinkhorn import lite_local_logits, lite_weights, sinkhorn
from .token_mixer_norm import token_mixer_residual_norm

__all__ = [
    "add_rms_norm",
    "dot_interaction",
    "fm_interaction",
    "layer_norm",
    "lite_local_logits",
    "lite_weights",
    "pgelu_ffn",
    "pswiglu",
    "rms_norm",
    "sinkhorn",
    "token_mixer",
    "token_mixer_residual_norm",
    "tokenmixer_global",
    "unimixing",
    "unimixing_operator",
    "unimixing_rmsnorm",
]
