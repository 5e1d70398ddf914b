"""lossd HTTP service: FastAPI app over ``lossd.kernels``."""

from lossd import __version__  # noqa: E402

from .app import create_app  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = ["create_app", "Settings", "__version__"]
