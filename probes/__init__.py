"""Probes on the model's hidden states: labels, estimators, batched grids, interventions, controls.

Imports torch, numpy, pandas, scikit-learn and ``karel`` only (never the orchestration stack).
The estimators (``LinearProbe``, ``MLPProbe``) load on first use: scikit-learn takes ~2 s to
import, and the pipeline's stages and ``semprobe status`` never need it.
"""

from .labels import FEATURES, MAIN_FEATURES, OFFSETS, LabelSet, aligned_labels, make_labels
from .stacked import TrainConfig

__all__ = [
    "FEATURES", "MAIN_FEATURES", "OFFSETS", "LabelSet", "LinearProbe", "MLPProbe",
    "TrainConfig", "aligned_labels", "make_labels",
]
_LAZY = {"LinearProbe", "MLPProbe"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
