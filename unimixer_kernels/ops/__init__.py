"""Public functional ops: validation, then dispatch to reference / Triton / CUDA (one file per op)."""

# imported for what they register: the Triton backend's autocast cast, and the "cuda" backends of
# pswiglu, rms_norm / add_rms_norm and sinkhorn
from . import lowering, pswiglu_cuda, rms_norm_cuda, sinkhorn_cuda  # noqa: F401
from .interactions import dot_interaction, fm_interaction
from .pgelu_ffn import pgelu_ffn
from .pswiglu import pswiglu
from .rms_norm import add_rms_norm, rms_norm
from .sinkhorn import lite_global_weights, lite_local_weights, lite_weights, sinkhorn
from .token_mixer import residual_norm, token_mixer, token_mixer_residual_norm
from .unimixing import unimixing, unimixing_rmsnorm
from .unimixing_rmsnorm_pswiglu import unimixing_rmsnorm_pswiglu

__all__ = [
    "add_rms_norm",
    "dot_interaction",
    "fm_interaction",
    "lite_global_weights",
    "lite_local_weights",
    "lite_weights",
    "pgelu_ffn",
    "pswiglu",
    "residual_norm",
    "rms_norm",
    "sinkhorn",
    "token_mixer",
    "token_mixer_residual_norm",
    "unimixing",
    "unimixing_rmsnorm",
    "unimixing_rmsnorm_pswiglu",
]
