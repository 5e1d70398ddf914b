"""lossd kernels: batched, numerically exact binary cross-entropy and its relatives.

Pure Numba/NumPy; no web imports. See the README for the loss forms and options.
"""

from . import _config  # noqa: F401  (threading layer, cache dir: before any compile)
from .errors import InputError, KernelError
from .api import (GradResult, LossResult, ParamGrad, grad, logreg_grad, loss, output_pool_stats,
                  set_output_pool, set_threads, warmup)

__all__ = ["loss", "grad", "logreg_grad", "LossResult", "GradResult", "ParamGrad", "set_threads",
           "set_output_pool", "output_pool_stats", "warmup", "InputError", "KernelError"]
