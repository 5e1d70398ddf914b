"""lossd: batched, numerically exact binary cross-entropy and its relatives.

``from lossd import kernels`` gives the Numba kernels (no web imports);
``lossd.service.create_app`` builds the HTTP service. Neither is imported here, so
``import lossd`` stays cheap.
"""

__version__ = "0.1.0"
