"""Pure-PyTorch references: the SPEC in code. fp64-capable, readable, no tricks.

These are the ground truth every kernel is tested against. They know nothing of kernels.
"""

from .attention import heterogeneous_attention, self_attention
from .blocks import (
    mlp,
    rankmixer_block,
    token_unmixer,
    tokenmixer_large_block,
    unimixer_block,
    unimixer_stack,
    unimixing_rmsnorm_pswiglu,
    wukong_fmb,
    wukong_layer,
    wukong_lcb,
)
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
from .sinkhorn import lite_global_weights, lite_local_logits, lite_local_weights, lite_weights, sinkhorn
from .token_mixer_norm import residual_norm, token_mixer_residual_norm
from .unified import ROWS, unified_mixing, unified_row

__all__ = [
    "ROWS",
    "add_rms_norm",
    "dot_interaction",
    "fm_interaction",
    "heterogeneous_attention",
    "layer_norm",
    "lite_global_weights",
    "lite_local_logits",
    "lite_local_weights",
    "lite_weights",
    "mlp",
    "pgelu_ffn",
    "pswiglu",
    "rankmixer_block",
    "residual_norm",
    "rms_norm",
    "self_attention",
    "sinkhorn",
    "token_mixer",
    "token_mixer_residual_norm",
    "token_unmixer",
    "tokenmixer_global",
    "tokenmixer_large_block",
    "unified_mixing",
    "unified_row",
    "unimixer_block",
    "unimixer_stack",
    "unimixing",
    "unimixing_operator",
    "unimixing_rmsnorm",
    "unimixing_rmsnorm_pswiglu",
    "wukong_fmb",
    "wukong_layer",
    "wukong_lcb",
]
