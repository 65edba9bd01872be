"""unimixer-kernels: fast, exact kernels for UniMixer, RankMixer, Wukong and attention rankers.

Functional ops take ``backend=`` ("auto", "reference", "triton", "cuda"); see
``python -m unimixer_kernels.info`` for what runs here.
"""

# first, so that every module below sees the kernels under their installed name
from ._source_tree import map_triton_kernels

map_triton_kernels()

from . import nn, reference
from ._registry import BACKENDS, OPS, backend_status, use_backend
from ._version import __version__
from .ops import (
    add_rms_norm,
    dot_interaction,
    fm_interaction,
    lite_global_weights,
    lite_local_weights,
    lite_weights,
    pgelu_ffn,
    pswiglu,
    residual_norm,
    rms_norm,
    sinkhorn,
    token_mixer,
    token_mixer_residual_norm,
    unimixing,
    unimixing_rmsnorm,
    unimixing_rmsnorm_pswiglu,
)

__all__ = [
    "BACKENDS",
    "OPS",
    "__version__",
    "add_rms_norm",
    "backend_status",
    "dot_interaction",
    "fm_interaction",
    "lite_global_weights",
    "lite_local_weights",
    "lite_weights",
    "nn",
    "pgelu_ffn",
    "pswiglu",
    "reference",
    "residual_norm",
    "rms_norm",
    "sinkhorn",
    "token_mixer",
    "token_mixer_residual_norm",
    "unimixing",
    "unimixing_rmsnorm",
    "unimixing_rmsnorm_pswiglu",
    "use_backend",
]
