"""A request's one path, whatever its transport:

    body -> codec.decode -> request model -> compute -> kernels -> result -> codec.encode -> body

The routes and the gRPC server (``grpc_server.py``) run these functions on a request's
body (inline, in the kernel threads or in the large lane: they are module-level and take
plain data, so they pickle). No HTTP here.
"""

from __future__ import annotations

from collections.abc import Mapping

from .codecs import json as json_codec
from .codecs import oip_grpc, oip_json
from .codecs.base import Codec
from .codecs.oip_binary import HEADER_LENGTH
from .compute import compute
from .limits import BodyLimits


def run(codec: Codec, body: bytes | memoryview, op: str, headers: Mapping[str, str] | None,
        limits: BodyLimits) -> tuple[bytes, dict[str, str], int]:
    """(response body, response headers, elements computed) of ``body`` for ``op``."""
    decoded = codec.decode(body, op, headers, limits)
    result = compute(decoded.request, limits.max_elements)
    content, out_headers = codec.encode(decoded, result)
    return content, out_headers, decoded.request.elements


def run_json(body: bytes | memoryview, op: str, limits: BodyLimits) -> tuple[bytes, dict[str, str], int]:
    """POST /loss, POST /grad."""
    return run(json_codec.CODEC, body, op, None, limits)


def run_oip(body: bytes | memoryview, op: str, header_length: str | None,
            limits: BodyLimits) -> tuple[bytes, dict[str, str], int]:
    """POST /v2/models/{op}/infer; ``header_length``: Inference-Header-Content-Length."""
    headers = None if header_length is None else {HEADER_LENGTH: header_length}
    return run(oip_json.CODEC, body, op, headers, limits)


def run_grpc(body: bytes | memoryview, limits: BodyLimits) -> tuple[bytes, dict[str, str], int]:
    """inference.GRPCInferenceService/ModelInfer: a serialized ModelInferRequest (its model
    named inside) to a serialized ModelInferResponse."""
    return run(oip_grpc.CODEC, body, "", None, limits)
