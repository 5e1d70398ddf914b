"""Result types with the same names, fields, field order and flags as ``kernels``'.

They are redefined here because importing ``kernels`` needs numba; code written against
the kernels' results (attribute access, ``dataclasses.fields``, positional construction)
works unchanged with these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Any

import numpy as np


@dataclass(slots=True)
class LossResult:
    """``loss`` is the reduced loss (None for reduction="none"), ``losses`` the
    per-element losses (weighted when sample_weight is given) for reduction="none"."""

    loss: float | None
    losses: np.ndarray | None
    stats: dict[str, float] = field(default_factory=dict)
    summary: Any = None  # a LossSummary with summary=True


@dataclass(slots=True)
class GradResult:
    """``grad`` is d(reduced loss)/d(predictions), the predictions' shape; with
    reduction="none" each element's own (weighted) derivative."""

    loss: float | None
    grad: np.ndarray
    losses: np.ndarray | None
    stats: dict[str, float] = field(default_factory=dict)
    summary: Any = None  # a LossSummary with summary=True


@dataclass(frozen=True, slots=True)
class ParamGrad:
    """Mean logistic loss of a linear model and its gradient w.r.t. coef and intercept."""

    loss: float
    coef: np.ndarray
    intercept: float
