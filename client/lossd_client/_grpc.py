"""The Open Inference Protocol over gRPC (KServe's ``inference.GRPCInferenceService``), the
``lossd-client[grpc]`` extra: ModelInfer requests written and responses read as bytes.

Tensors travel as ``raw_input_contents`` / ``raw_output_contents``. A request is the
serialized header (names, datatypes, shapes, parameters; protobuf) followed by each
input's bytes as field 7, appended from the array's own buffer: one copy, into the
message, as the HTTP binary body. A response's field 6 entries are found by walking its
top-level fields and read as views of the bytes grpc returned (then copied once into
writable arrays, like the kernels' results). No stubs: the method is called with bytes
in and bytes out. Status codes become :class:`LossdError` with the server's message,
under the HTTP status the server's gRPC front maps from (``STATUSES``); UNAVAILABLE is
retried like a 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from ._codec import _DATATYPES, _NUMPY, Outputs, ShmReader, _bytes_elements
from ._errors import LossdError
from ._retry import Retry
from .grpc_gen import grpc_predict_v2_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
SERVER_LIVE = SERVICE + "ServerLive"
_RAW_INPUT_TAG = bytes([7 << 3 | 2])  # ModelInferRequest.raw_input_contents, length-delimited
_RAW_OUTPUT_FIELD = 6  # ModelInferResponse.raw_output_contents
# no message size limits: the server has its own (LOSSD_MAX_BODY_BYTES, RESOURCE_EXHAUSTED)
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

# gRPC codes as the HTTP statuses the server maps to them (service/grpc_server.py's CODES,
# read backwards): the same LossdError.status on every transport
STATUSES = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
            grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNIMPLEMENTED: 501,
            grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------- requests

def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _set(p: Any, value: Any) -> None:
    """One OIP parameter (an ``InferParameter``) from a Python scalar; any other type goes
    as its text, for the server to refuse with its own message (as the JSON codec does)."""
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value if isinstance(value, str) else str(value)


def encode_request(model: str, inputs: Outputs, parameters: Mapping[str, Any],
                   shm_inputs: Mapping[str, Mapping[str, Any]] | None = None,
                   outputs: list[tuple[str, Mapping[str, Any]]] | None = None) -> bytes:
    """A serialized ModelInferRequest. ``inputs`` as made by ``_codec.float_tensor`` /
    ``label_tensor`` (contiguous, little-endian) go as raw_input_contents, unless
    ``shm_inputs`` gives every input's shared memory parameters (then no tensor bytes are
    sent). ``outputs``: the outputs to ask for, with their parameters (None: all)."""
    msg = pb.ModelInferRequest(model_name=model)
    for key, value in parameters.items():
        _set(msg.parameters[key], value)
    for name, arr in inputs:
        t = msg.inputs.add(name=name, datatype=_DATATYPES[arr.dtype], shape=arr.shape)
        for key, value in (shm_inputs or {}).get(name, {}).items():
            _set(t.parameters[key], value)
    for name, params in outputs or ():
        o = msg.outputs.add(name=name)
        for key, value in params.items():
            _set(o.parameters[key], value)
    if shm_inputs:
        return msg.SerializeToString()
    parts: list[Any] = [b""]
    for _, arr in inputs:
        view = memoryview(arr.reshape(-1)).cast("B")  # the array's own bytes: no copy yet
        parts += [_RAW_INPUT_TAG, _varint(view.nbytes), view]
    parts[0] = msg.SerializeToString()
    return b"".join(parts)


# ---------------------------------------------------------------------------- responses

def _read_varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]  # IndexError on a truncated message: caught as malformed
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def split_raw(content: bytes, field: int = _RAW_OUTPUT_FIELD) -> tuple[bytes, list[memoryview]]:
    """(the message without its ``field`` entries, each entry as a view of ``content``);
    only the top level is walked, nested messages are skipped by their length."""
    buf = memoryview(content)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = _read_varint(buf, i)
            if key >> 3 == field:
                raw.append(buf[i:i + size])
                i += size
                continue
            i += size
        else:
            raise ValueError(f"wire type {wire}")
        if i > n:
            raise ValueError("truncated message")
        rest.append(buf[start:i])
    return b"".join(rest), raw


def _param(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def decode_response(content: bytes, shm: ShmReader | None = None) -> Outputs:
    """The (name, array) outputs of a ModelInferResponse, in the server's order: from
    raw_output_contents, or read by ``shm`` when an output is in shared memory."""
    try:
        head, raw = split_raw(content)
        msg = pb.ModelInferResponse.FromString(head)
        out: Outputs = []
        for i, o in enumerate(msg.outputs):
            shape = tuple(int(d) for d in o.shape)
            count = int(np.prod(shape, dtype=np.int64))
            if o.datatype == "BYTES":  # the summary output: Triton's length-prefixed elements
                if i >= len(raw):
                    raise ValueError(f"output {o.name!r}: no raw_output_contents")
                out.append((o.name, _bytes_elements(bytes(raw[i]), count).reshape(shape)))
                continue
            dtype = _NUMPY[o.datatype]
            if shm is not None and "shared_memory_region" in o.parameters:
                params = {k: _param(v) for k, v in o.parameters.items()}
                out.append((o.name, shm(o.name, params, dtype, shape)))
                continue
            if i >= len(raw) or len(raw[i]) != count * dtype.itemsize:
                raise ValueError(f"output {o.name!r}: raw_output_contents does not hold shape {list(shape)} "
                                 f"of {o.datatype}")
            # astype copies: results are writable, native-endian arrays like the kernels'
            arr = np.frombuffer(raw[i], dtype=dtype, count=count).astype(dtype.newbyteorder("="))
            out.append((o.name, arr.reshape(shape)))
        return out
    except Exception as exc:  # ValueError, KeyError, IndexError, protobuf's DecodeError
        raise LossdError(200, f"malformed inference response: {exc}") from None


# ------------------------------------------------------------------------------- errors

def refusal(exc: grpc.RpcError) -> BaseException:
    """A failed call as the client's error (``Retry`` around it when it may be repeated)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or code.name
    error = LossdError(STATUSES.get(code, 500), details)
    return Retry(error) if code == grpc.StatusCode.UNAVAILABLE else error


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)
