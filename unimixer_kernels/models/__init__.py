"""Rankers assembled from unimixer_kernels.nn (SPEC §11): tokenizer, block stack, tower, metrics,
synthetic data and a training entry point (``python -m unimixer_kernels.models.train``)."""

from .data import DEFAULT_FIELDS, ClickData, Field, make_click_dataset
from .metrics import auc, log_loss, log_loss_from_logits, uauc
from .ranker import FAMILIES, HiFormerBlock, Ranker, build_stack
from .tokenizer import FeatureTokenizer

__all__ = [
    "DEFAULT_FIELDS",
    "FAMILIES",
    "ClickData",
    "FeatureTokenizer",
    "Field",
    "HiFormerBlock",
    "Ranker",
    "auc",
    "build_stack",
    "log_loss",
    "log_loss_from_logits",
    "make_click_dataset",
    "uauc",
]
