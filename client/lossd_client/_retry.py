"""When to try a request again, and how long to wait first (pure functions)."""

from __future__ import annotations

import email.utils
import math
import time

import httpx

# Longest wait between two attempts; a Retry-After up to this long is honoured as given.
MAX_BACKOFF = 10.0

# Failures where the request can be sent again: the connection could not be made or
# broke (a keep-alive connection the server closed, a restart). Inference is a pure
# function of the request, so repeating it is safe. Read/write timeouts are not retried:
# the server is slow, not gone, and repeating would multiply the wait.
RETRYABLE_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout)


class Retry(Exception):
    """An attempt that failed in a way worth repeating (a 503, gRPC's UNAVAILABLE, a broken
    connection): every transport raises it, and the client's one retry loop raises
    ``error`` once the retries are spent."""

    def __init__(self, error: BaseException, retry_after: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def next_delay(attempt: int, retries: int, backoff: float, retry_after: str | None = None) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (0-based) before the next one, or
    None once ``retries`` retries are spent. Exponential: backoff·2^attempt, capped at
    MAX_BACKOFF; the server's Retry-After wins when it is within the cap."""
    if attempt >= retries:
        return None
    asked = retry_after_seconds(retry_after)
    if asked is not None and asked <= MAX_BACKOFF:
        return asked
    return min(MAX_BACKOFF, backoff * 2.0 ** attempt)
