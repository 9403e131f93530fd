"""Many probes trained in one pass: probes that share their rows are stacked side by side.

All probes of a call read the same input rows ``x`` (N, d) (the same hidden states) and have
their own labels and 0/1 row weights (a probe ignores a row by giving it weight 0). Probes whose
train and val rows are the same (in the grid: the features and semantics of one offset) form a
*group* that trains on exactly its rows, in chunks of probes side by side. Gradients of
different probes never mix (the summed loss is separable and AdamW is elementwise), so a probe
trained in a grid is the same estimator as one trained alone on its rows
(``probes.estimators``, this code with one probe).

This module is the public face; the code lives in two parts:
- ``stacked_modules``: the parameter stacks (``ProbeChunk``, ``StackedProbes``), the bfloat16
  arithmetic and the multi-head scoring (``head_scores``, ``head_nll``, ``predict_columns``);
- ``stacked_training``: ``TrainConfig``, ``fit_stacked`` (groups, chunks, AdamW epochs,
  per-probe best epoch on val), ``evaluate`` and ``Fitted``.
"""

from .stacked_modules import (
    ProbeChunk, StackedProbes, head_columns, head_nll, head_scores, predict_columns,
)
from .stacked_training import Fitted, TrainConfig, evaluate, fit_stacked

__all__ = [
    "Fitted", "ProbeChunk", "StackedProbes", "TrainConfig", "evaluate", "fit_stacked",
    "head_columns", "head_nll", "head_scores", "predict_columns",
]
