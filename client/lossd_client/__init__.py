"""Python client of the lossd service: ``kernels``' functions over HTTP.

``Client`` (blocking) and ``AsyncClient`` (asyncio) talk the Open Inference Protocol v2
with binary tensors, and return the same result types as ``kernels``. Only httpx and
NumPy are needed: neither the service (FastAPI) nor the kernels (numba) are imported.

    >>> with Client("http://127.0.0.1:8000") as c:          # doctest: +SKIP
    ...     r = c.loss(np.array([2.0, -1.0]), np.array([1, 0]), reduction="none")

``summary=True`` adds ``result.summary``, a mergeable ``LossSummary`` (the kernels' own
state code, shipped in this package; it needs ``pip install 'lossd-client[summary]'``):
merge the summaries of requests that shard one evaluation with ``LossSummary.merge_all``.
"""

from ._client import AsyncClient, Client
from ._errors import LossdError
from ._results import GradResult, LossResult, ParamGrad
from ._version import __version__

__all__ = ["AsyncClient", "Client", "GradResult", "LossResult", "LossdError", "ParamGrad", "__version__",
           "LossSummary", "merge_groups"]


def __getattr__(name: str):
    # LossSummary needs datasketches (the optional extra lossd-client[summary]): imported
    # on first use, so that the client itself needs only httpx and NumPy
    if name in ("LossSummary", "merge_groups"):
        from . import _summary_state
        return getattr(_summary_state, name)
    raise AttributeError(f"module 'lossd_client' has no attribute {name!r}")
