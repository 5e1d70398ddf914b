"""The protocol every codec follows (as MLServer's ``mlserver/codecs/base.py``).

A codec turns a request body (bytes and the few headers its framing needs) into the
request model (``requests.PredictionsRequest`` / ``ParamsRequest``) and the kernels'
result for that request back into a body and its headers. It knows its wire format and
nothing else: no FastAPI, no routes, no kernel calls. Every error it finds is a
``RequestError`` (``errors.py``), which the app renders in the shape of the protocol the
request came by. Codecs are stateless module-level objects (they pickle, and
the large lane runs them in another process).

    decoded = codec.decode(body, op, headers, limits)        # body -> request model
    result = compute(decoded.request, limits.max_elements)    # request -> kernels -> result
    content, headers = codec.encode(decoded, result)         # result -> body
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..limits import BodyLimits
from ..requests import Request, Result


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded body: the request model, and what the codec needs to answer it that is
    not part of the request (OIP: the request id, the outputs asked for, binary or not)."""
    request: Request
    context: Any = None


@runtime_checkable
class Codec(Protocol):
    name: str

    def decode(self, body: bytes | memoryview, op: str, headers: Mapping[str, str],
               limits: BodyLimits) -> Decoded:
        """The request of operation ``op`` ("loss" or "grad") that ``body`` holds."""
        ...

    def encode(self, decoded: Decoded, result: Result) -> tuple[bytes, dict[str, str]]:
        """The response body for ``result`` and its headers (content-type, framing)."""
        ...
