"""Which protocol a request speaks, decided in one place.

Paths under ``/v2`` are the Open Inference Protocol's (errors ``{"error": "..."}``,
a content error is 400); every other path is the JSON API's (FastAPI's
``{"detail": ...}``, a content error is 422). The app's exception handlers, the front
door (``middleware.py``) and the HTTP protocol's refusals (``http_limits.py``) all ask
``protocol_of``. No imports beyond the standard library: ``http_limits`` loads before
the kernels may be.
"""

from __future__ import annotations

from typing import Any, Literal

Protocol = Literal["json", "oip"]
OIP_PREFIX = "/v2"
_OIP_PREFIX_BYTES = OIP_PREFIX.encode()


def protocol_of(path: str | bytes) -> Protocol:
    """"oip" for a path under /v2 (str, or the raw bytes of a request target), else "json"."""
    prefix = _OIP_PREFIX_BYTES if isinstance(path, bytes) else OIP_PREFIX
    return "oip" if path.startswith(prefix) else "json"  # type: ignore[arg-type]


def error_body(protocol: Protocol, message: Any) -> dict[str, Any]:
    """An error message in the protocol's shape: ``{"error": ...}`` (OIP) or
    ``{"detail": ...}`` (JSON API)."""
    return {"error": message} if protocol == "oip" else {"detail": message}
