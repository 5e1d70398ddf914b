"""lossd HTTP service: FastAPI app over ``lossd.kernels``.

``create_app`` is imported on first use: ``lossd serve`` (``cli``) then checks its settings,
the CPU target among them, before ``lossd.kernels`` sets Numba up for that target.
"""

from lossd import __version__  # noqa: E402

from .settings import Settings  # noqa: E402

__all__ = ["create_app", "Settings", "__version__"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
