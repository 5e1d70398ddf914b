"""Per-element losses by name, in the style of optax's ``losses``: each a thin call of
``loss(..., reduction="none")`` with the matching ``input`` and ``loss``.

Each returns an array shaped like its first argument: float64, or float32 when that
argument is a float32 array (then the call is ``loss(..., dtype="float32")``: labels
and weights are taken as float32 values too). Invalid input raises ``InputError``
naming the argument as ``loss`` does (``predictions``, ``labels``, ...).
"""

from __future__ import annotations

import numpy as np

from .api import loss


def _dtype(x) -> str:
    """The result dtype ``loss`` is asked for: float32 arrays stay float32 (as optax)."""
    return "float32" if isinstance(x, np.ndarray) and x.dtype == np.float32 else "float64"


def sigmoid_binary_cross_entropy(logits, labels) -> np.ndarray:
    """Binary cross-entropy of sigmoid(logits) against labels, from the logits.

    l = y·softplus(−s) + (1 − y)·softplus(s) = (1 − y)·s − log σ(s), exact for every
    s (±inf included) and soft labels y in [0, 1].

    Args:
      logits: s, any shape of N or N×K reals.
      labels: y in [0, 1], the same shape.

    Returns:
      The per-element losses, shaped like ``logits``.

    References:
      PyTorch ``BCEWithLogitsLoss``;
      optax ``sigmoid_binary_cross_entropy``.

    Examples:
      >>> import numpy as np
      >>> from lossd.kernels import sigmoid_binary_cross_entropy
      >>> sigmoid_binary_cross_entropy(np.array([0.0, 2.0, -800.0]), np.array([1.0, 0.0, 1.0]))
      array([6.93147181e-01, 2.12692801e+00, 8.00000000e+02])
    """
    return loss(logits, labels, input="logits", loss="cross_entropy", reduction="none",
                dtype=_dtype(logits)).losses


def binary_cross_entropy(probabilities, labels, *, eps: float | None = None) -> np.ndarray:
    """Binary cross-entropy of probabilities against labels.

    l = −[y·log p + (1 − y)·log(1 − p)]. With ``eps=None`` each log is floored at −100
    (PyTorch's rule: p = 0 with y = 1 costs 100, not inf); with ``eps`` p is clipped to
    [eps, 1 − eps] first (scikit-learn's rule) and the floor is not applied.

    Args:
      probabilities: p in [0, 1], any shape of N or N×K.
      labels: y in [0, 1], the same shape.
      eps: the clip, in [2^-53, 0.5), or None.

    Returns:
      The per-element losses, shaped like ``probabilities``.

    References:
      PyTorch ``BCELoss``; scikit-learn ``log_loss``.

    Examples:
      >>> import numpy as np
      >>> from lossd.kernels import binary_cross_entropy
      >>> binary_cross_entropy(np.array([0.5, 0.0, 0.9]), np.array([1.0, 1.0, 0.0]))
      array([  0.69314718, 100.        ,   2.30258509])
      >>> binary_cross_entropy(np.array([0.0]), np.array([1.0]), eps=1e-15)
      array([34.53877639])
    """
    return loss(probabilities, labels, input="probabilities", loss="cross_entropy",
                reduction="none", eps=eps, dtype=_dtype(probabilities)).losses


def logistic_loss(margins, labels) -> np.ndarray:
    """Logistic loss of scores against labels in {−1, +1}.

    l = log(1 + e^(−y·s)) = softplus(−y·s): the same function as
    ``sigmoid_binary_cross_entropy`` with y01 = (y + 1)/2.

    Args:
      margins: s, any shape of N or N×K reals.
      labels: y in {−1, +1}, the same shape.

    Returns:
      The per-element losses, shaped like ``margins``.

    References:
      Hastie, Tibshirani & Friedman, The Elements of Statistical Learning (2009), §10.6;
      scikit-learn ``SGDClassifier(loss="log_loss")``.

    Examples:
      >>> import numpy as np
      >>> from lossd.kernels import logistic_loss
      >>> logistic_loss(np.array([0.0, 2.0, 2.0]), np.array([1.0, 1.0, -1.0]))
      array([0.69314718, 0.12692801, 2.12692801])
    """
    return loss(margins, labels, input="margins", loss="cross_entropy", reduction="none",
                dtype=_dtype(margins)).losses


def sigmoid_focal_loss(logits, labels, *, alpha: float | None = None,
                       gamma: float = 2.0) -> np.ndarray:
    """Focal loss of sigmoid(logits) against labels: cross-entropy down-weighted where
    the prediction is already good.

    l = (1 − p_t)^γ · CE(s, y), with 1 − p_t = y·σ(−s) + (1 − y)·σ(s) and CE the
    logits form above; with ``alpha`` l is multiplied by α·y + (1 − α)·(1 − y).

    Args:
      logits: s, any shape of N or N×K reals.
      labels: y in [0, 1], the same shape.
      alpha: the positive class's weight in [0, 1], or None for no weighting.
      gamma: the focusing exponent γ >= 0 (0 gives cross-entropy).

    Returns:
      The per-element losses, shaped like ``logits``.

    References:
      Lin, Goyal, Girshick, He & Dollár, Focal Loss for Dense Object Detection,
      ICCV 2017 (arXiv:1708.02002); optax ``sigmoid_focal_loss``.

    Examples:
      >>> import numpy as np
      >>> from lossd.kernels import sigmoid_focal_loss
      >>> sigmoid_focal_loss(np.array([0.0, 2.0]), np.array([1.0, 1.0]))
      array([0.1732868 , 0.00180356])
      >>> sigmoid_focal_loss(np.array([0.0]), np.array([1.0]), alpha=0.25, gamma=0.0)
      array([0.1732868])
    """
    return loss(logits, labels, input="logits", loss="focal", reduction="none",
                alpha=alpha, gamma=gamma, dtype=_dtype(logits)).losses
