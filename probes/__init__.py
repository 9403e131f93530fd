"""Probes on the model's hidden states: labels, estimators, batched grids, interventions, controls.

Imports torch, numpy, pandas, scikit-learn and ``karel`` only (never the orchestration stack).
"""

from .estimators import LinearProbe, MLPProbe
from .labels import FEATURES, MAIN_FEATURES, OFFSETS, LabelSet, aligned_labels, make_labels
from .stacked import TrainConfig

__all__ = [
    "FEATURES", "MAIN_FEATURES", "OFFSETS", "LabelSet", "LinearProbe", "MLPProbe",
    "TrainConfig", "aligned_labels", "make_labels",
]
