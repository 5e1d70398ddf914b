"""lossd kernels: batched, numerically exact binary cross-entropy and its relatives.

Pure Numba/NumPy; no web imports. See the README for the loss forms and options.
"""

from . import _config  # noqa: F401  (threading layer, cache dir: before any compile)
from .errors import InputError, KernelError
from .results import GradResult, LossResult, ParamGrad
from .runtime import output_pool_stats, set_output_pool, set_threads
from ._compile import warmup
from .api import grad, loss
from .logreg import logreg_grad
from .summary import LossSummary, merge_groups, summarize
from .losses import binary_cross_entropy, logistic_loss, sigmoid_binary_cross_entropy, sigmoid_focal_loss

__all__ = ["loss", "grad", "logreg_grad", "LossResult", "GradResult", "ParamGrad", "set_threads",
           "set_output_pool", "output_pool_stats", "warmup", "InputError", "KernelError",
           "sigmoid_binary_cross_entropy", "binary_cross_entropy", "logistic_loss", "sigmoid_focal_loss",
           "LossSummary", "summarize", "merge_groups"]
