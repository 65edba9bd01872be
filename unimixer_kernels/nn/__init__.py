"""Drop-in nn.Modules built on the public ops (SPEC §12).

Each module takes ``backend=`` ("auto" by default), passed to every op it calls, and checks its
input (SPEC §9) before running anything.
"""

from ._common import num_parameters
from .attention import HeterogeneousAttention
from .ffn import PerTokenFFN, swiglu_hidden
from .schedules import LinearAnnealing, TwoStageWarmup, set_temperature
from .token_mixer import RankMixerBlock, TokenMixer, TokenMixerLargeBlock
from .unified import UnifiedMixing
from .unimixer import UniMixer, UniMixerBlock
from .unimixing import UniMixing, unimixing_num_parameters
from .wukong import WukongLayer

__all__ = [
    "HeterogeneousAttention",
    "LinearAnnealing",
    "PerTokenFFN",
    "RankMixerBlock",
    "TokenMixer",
    "TokenMixerLargeBlock",
    "TwoStageWarmup",
    "UniMixer",
    "UniMixerBlock",
    "UniMixing",
    "UnifiedMixing",
    "WukongLayer",
    "num_parameters",
    "set_temperature",
    "swiglu_hidden",
    "unimixing_num_parameters",
]
