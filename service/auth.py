"""The bearer token check, one for every transport (the HTTP front door, gRPC metadata)."""

from __future__ import annotations

import hashlib
import hmac


def token_digest(token: bytes) -> bytes:
    # equal-length digests: compare_digest's time then depends on neither the token's
    # length nor its content
    return hashlib.sha256(token).digest()


def bearer_refusal(authorization: bytes, digest: bytes) -> str | None:
    """None when the ``Authorization`` value carries the token whose digest is ``digest``;
    else the client's message (the same words on HTTP and gRPC)."""
    scheme, _, credentials = authorization.partition(b" ")
    ok = hmac.compare_digest(token_digest(credentials.strip()), digest)
    if ok and scheme.lower() == b"bearer":
        return None
    why = "missing" if not authorization else "wrong"
    return f"bearer token {why}: send 'Authorization: Bearer <token>'"
