"""lossd: batched, numerically exact binary cross-entropy and its relatives.

``from lossd import kernels`` gives the Numba kernels (no web imports);
``lossd.service.create_app`` builds the HTTP service; ``lossd.evaluate`` summarises the
losses of a dataset (``lossd.evaluation``, the ``eval`` extra). None is imported here, so
``import lossd`` stays cheap.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "evaluate":
        from lossd.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'lossd' has no attribute {name!r}")
