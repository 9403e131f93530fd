"""Scikit-learn-style probe estimators (torch underneath, CPU, deterministic for a seed).

```python
from probes import LinearProbe, MLPProbe
LinearProbe(seed=0).fit(X_train, y_train).score(X_test, y_test)
MLPProbe(hidden=(256, 1024), seed=0).fit(X, y, X_val, y_val)   # best epoch chosen on val
```

``X`` is a float array (n, d); ``y`` int labels (n,) or (n, H) for a multi-head feature (e.g.
``rel_start``'s (dy, dx)), scored jointly: a row is right only if every column is. Labels are
encoded per column from the training (and val) labels (``classes_``); a test label never
seen there counts as wrong. These are ``probes.stacked`` with a single probe, so the batched grid
(``probes.grid``) trains exactly these models, many at once (bit for bit with bf16 matmul inputs;
in float32 to the BLAS's rounding), wherever the heads are as wide: an
estimator's head has a column per class it sees, a grid probe's one per value the feature can take.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .stacked import TrainConfig, fit_stacked


def _as_x(X, name="X") -> torch.Tensor:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d (n, d) array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {X.dtype}")
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


def _as_y(y, n, name="y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name}: expected ({n},) or ({n}, H) labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.bool_):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


class _Probe(BaseEstimator):
    """Shared fit/predict/score; subclasses fix the hidden layers."""

    def _hidden(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _config(self) -> TrainConfig:
        return TrainConfig(epochs=int(self.epochs), lr=float(self.lr),
                           weight_decay=float(self.weight_decay),
                           lr_decay=float(self.lr_decay), batch_size=int(self.batch_size))

    def _encode(self, y: np.ndarray) -> torch.Tensor:
        cols = [np.searchsorted(c, y[:, k]) for k, c in enumerate(self.classes_)]
        return torch.from_numpy(np.stack(cols, 1))[None]

    def fit(self, X, y, X_val=None, y_val=None):
        x = _as_x(X)
        yy = _as_y(y, x.shape[0])
        if x.shape[0] == 0:
            raise ValueError("X: no training rows")
        self.n_features_in_ = x.shape[1]
        self.multi_output_ = np.asarray(y).ndim == 2
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val/y_val: give both or neither")
        val = None
        yv = yy[:0]
        if X_val is not None:
            xv = _as_x(X_val, "X_val")
            if xv.shape[1] != x.shape[1]:
                raise ValueError(f"X_val: {xv.shape[1]} features, X has {x.shape[1]}")
            yv = _as_y(y_val, xv.shape[0], "y_val")
            if yv.shape[1] != yy.shape[1]:
                raise ValueError(f"y_val: {yv.shape[1]} label columns, y has {yy.shape[1]}")
        # val-only classes get a (never trained) column so that val rows stay encodable
        self.classes_ = [np.unique(np.concatenate([yy[:, k], yv[:, k]]))
                         for k in range(yy.shape[1])]
        heads = [tuple(len(c) for c in self.classes_)]
        weight = torch.ones(1, x.shape[0])
        if X_val is not None:
            val = (xv, self._encode(yv), torch.ones(1, xv.shape[0]))
        fitted = fit_stacked(x, self._encode(yy), weight, heads, self._hidden(),
                             seeds=[self.seed], shuffle_seed=self.seed, config=self._config(),
                             val=val)
        self.model_ = fitted.model
        self.best_epoch_ = int(fitted.best_epoch[0])
        self.val_score_ = None if fitted.val_accuracy is None else float(fitted.val_accuracy[0])
        self.history_ = [float(a[0]) for a in fitted.history]
        self.mean_ = fitted.model.mean[0].numpy().copy()
        self.scale_ = fitted.model.scale[0].numpy().copy()
        return self

    def _check_fitted(self, X):
        if not hasattr(self, "model_"):
            raise ValueError(f"{type(self).__name__}: call fit before predict/score")
        x = _as_x(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X: {x.shape[1]} features, the probe was fit on {self.n_features_in_}")
        return x

    @torch.no_grad()
    def predict(self, X) -> np.ndarray:
        x = self._check_fitted(X)
        self.model_.eval()
        cols = torch.cat([self.model_.predict_columns(self.model_(x[s:s + 4096]))[0]
                          for s in range(0, x.shape[0], 4096)]) if len(x) else \
            torch.zeros((0, len(self.classes_)), dtype=torch.long)
        out = np.stack([c[cols[:, k].numpy()] for k, c in enumerate(self.classes_)], 1)
        return out if self.multi_output_ else out[:, 0]

    def score(self, X, y) -> float:
        """Joint accuracy: a row counts only if every label column is predicted right."""
        x = self._check_fitted(X)
        yy = _as_y(y, x.shape[0])
        if yy.shape[1] != len(self.classes_):
            raise ValueError(f"y: {yy.shape[1]} label columns, the probe has {len(self.classes_)}")
        if len(yy) == 0:
            return float("nan")
        pred = self.predict(X).reshape(len(yy), -1)
        return float((pred == yy).all(1).mean())


class LinearProbe(_Probe):
    """Multinomial logistic regression on standardised inputs (AdamW, exponential decay)."""

    def __init__(self, epochs=100, lr=0.02, weight_decay=0.2, lr_decay=0.95, batch_size=1024,
                 seed=0):
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.lr_decay, self.batch_size, self.seed = lr_decay, batch_size, seed

    def _hidden(self):
        return ()


class MLPProbe(_Probe):
    """MLP probe: (Linear -> BatchNorm -> ReLU) per entry of ``hidden``, then a linear head."""

    def __init__(self, hidden=(256,), epochs=100, lr=0.02, weight_decay=0.2, lr_decay=0.95,
                 batch_size=1024, seed=0):
        self.hidden = hidden
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.lr_decay, self.batch_size, self.seed = lr_decay, batch_size, seed

    def _hidden(self):
        hidden = tuple(int(h) for h in np.atleast_1d(self.hidden))
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden: expected positive layer widths, got {self.hidden!r}")
        return hidden
