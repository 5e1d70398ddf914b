"""The Open Inference Protocol over gRPC: KServe's ``ModelInferRequest`` to the request
model, results to ``ModelInferResponse`` (``service/grpc_gen/``, from its
``grpc_predict_v2.proto``).

The body is the serialized request as it came off the wire (the server registers no
deserializer for ModelInfer). ``raw_input_contents`` (field 7) are found by walking the
message's top-level fields and become read-only ``np.frombuffer`` views of the body: no
copies. The other fields (names, shapes, parameters, typed ``contents``), a few hundred
bytes, are parsed by protobuf. Outputs go back as ``raw_output_contents`` (field 6),
appended to the serialized header straight from the result arrays (one copy, into the
message). Everything else is the HTTP OIP's (``oip_json``): the same input checks,
parameters as options, outputs and messages; errors are ``RequestError``/``ApiError``,
which the gRPC server maps to status codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import fields
from ..errors import ApiError, RequestError
from ..limits import BodyLimits
from ..requests import Result
from ..shm import Registry
from ..grpc_gen import grpc_predict_v2_pb2 as pb
from . import oip_binary, oip_json
from .base import Decoded
from .oip_binary import DATATYPES, datatype_of, output_array

MODELS = fields.OPERATIONS
_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # ModelInferResponse.raw_output_contents, length-delimited

# InferTensorContents' field for each datatype (as Triton reads them)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents"}
_CONTENTS_DTYPE = {"bool_contents": np.bool_, "int_contents": np.int64, "int64_contents": np.int64,
                   "uint_contents": np.uint64, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                   "fp64_contents": np.float64}


def _error(msg: str, *loc: Any) -> RequestError:
    return RequestError.at(loc, msg)


def check_model(name: str, version: str = "") -> str:
    """The model's name, or 404 with the HTTP OIP's messages (``routes_oip``)."""
    if name not in MODELS:
        raise ApiError(404, f"unknown model {name!r}; this server has {', '.join(MODELS)}")
    if version not in ("", "1"):
        raise ApiError(404, f"unknown model version {version!r}; the models have version 1")
    return name


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise _error("the request is not a valid ModelInferRequest (truncated)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise _error("the request is not a valid ModelInferRequest (bad varint)")


def split_raw(body: bytes | memoryview) -> tuple[bytes, list[memoryview]]:
    """(the message without its raw_input_contents, each raw_input_contents as a view of
    ``body``). Only the top level is walked; nested messages are skipped by length."""
    buf = memoryview(body).cast("B") if not isinstance(body, bytes) else memoryview(body)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = _varint(buf, i)
            if key >> 3 == _RAW_INPUT_FIELD:
                if i + size > n:
                    raise _error("the request is not a valid ModelInferRequest (truncated)")
                raw.append(buf[i:i + size])
                i += size
                continue
            i += size
        else:
            raise _error(f"the request is not a valid ModelInferRequest (wire type {wire})")
        if i > n:
            raise _error("the request is not a valid ModelInferRequest (truncated)")
        rest.append(buf[start:i])
    return b"".join(rest), raw


def _param(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def decode_request(body: bytes | memoryview, shm: Registry | None = None) -> tuple[str, str, oip_json.InferRequest]:
    """(model name, model version, the request as ``oip_json`` holds one); tensors in
    system shared memory are read from ``shm`` (None: off)."""
    head, raw = split_raw(body)
    try:
        msg = pb.ModelInferRequest.FromString(head)
    except Exception as exc:  # protobuf's DecodeError
        raise _error(f"the request is not a valid ModelInferRequest: {exc}") from None
    model = check_model(msg.model_name, msg.model_version)
    allowed = oip_json.ALLOWED_INPUTS[model]
    if not msg.inputs:
        raise _error("inputs must be a non-empty list of tensors")
    if raw and len(raw) != len(msg.inputs):
        raise _error(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs (one per input, "
                     "in input order, or none)")
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(msg.inputs):
        name = t.name
        dtname, shape, count, dtype = oip_json.check_tensor(i, name, t.datatype, list(t.shape), allowed)
        if "shared_memory_region" in t.parameters:
            if raw or t.HasField("contents"):
                raise _error(f"input {name!r} has shared_memory_region and also "
                             f"{'raw_input_contents' if raw else 'contents'}", "inputs", i)
            tparams = {k: _param(v) for k, v in t.parameters.items()}
            arr = oip_json._shm(shm, f"input {name!r}").read(name, tparams, dtype, count, i)
            inputs[name] = oip_binary.reshape(name, arr, shape, ("inputs", i))
            continue
        if raw:
            if t.HasField("contents"):
                raise _error(f"input {name!r} has both contents and raw_input_contents", "inputs", i)
            arr = _raw_tensor(name, raw[i], i, shape, dtname, count)
        else:
            arr = _contents_tensor(name, t, shape, dtname, dtype, count)
        if name in inputs:
            raise _error(f"input {name!r} appears twice")
        inputs[name] = arr
    params = {k: _param(v) for k, v in msg.parameters.items()}
    asked = None
    shm_outputs: dict[str, tuple[str, int, int, int]] = {}
    if msg.outputs:
        asked = []
        for o in msg.outputs:
            if any(o.name == a for a, _ in asked):
                raise _error(f"output {o.name!r} is asked for twice")
            asked.append((o.name, None))
            if "shared_memory_region" in o.parameters:
                oparams = {k: _param(v) for k, v in o.parameters.items()}
                shm_outputs[o.name] = oip_json._shm(shm, f"output {o.name!r}").check_output(o.name, oparams)
    req = oip_json.InferRequest(msg.id or None, inputs, params, asked, False, shm, shm_outputs)
    return model, msg.model_version, req


def _raw_tensor(name: str, blob: memoryview, i: int, shape: list[int], dtname: str, count: int) -> np.ndarray:
    dtype = DATATYPES[dtname]
    expect = count * dtype.itemsize
    if len(blob) != expect:
        raise _error(f"input {name!r}: raw_input_contents[{i}] holds {len(blob)} bytes; shape {shape} × "
                     f"{dtname} ({dtype.itemsize} bytes) = {expect}", "inputs", i)
    arr = np.frombuffer(blob, dtype=dtype, count=count)  # a view of the request: no copy
    return oip_binary.reshape(name, arr, shape, ("inputs", i))


def _contents_tensor(name: str, t: Any, shape: list[int], dtname: str, dtype: np.dtype, count: int) -> np.ndarray:
    field = _CONTENTS[dtname]
    values = getattr(t.contents, field)
    others = [f.name for f, _ in t.contents.ListFields() if f.name != field]
    if others:
        raise _error(f"input {name!r}: {dtname} data goes in contents.{field}, got contents.{others[0]}")
    arr = np.array(values, dtype=_CONTENTS_DTYPE[field])
    return oip_json._typed(name, arr, shape, dtname, dtype, count)


def encode_response(model: str, rid: str | None, outputs: list[tuple[str, np.ndarray]],
                    shm: Registry | None = None, shm_outputs: Mapping[str, tuple[str, int, int, int]] = {}) -> bytes:
    """A serialized ModelInferResponse whose outputs are raw_output_contents: the header
    by protobuf, each array's bytes appended as field 6 from its own buffer. An output in
    ``shm_outputs`` is written to its region instead, its raw_output_contents entry empty
    (the entries stay one per output, in order)."""
    msg = pb.ModelInferResponse(model_name=model, model_version="1", id=rid or "")
    parts: list[Any] = [b""]
    for name, arr in outputs:
        out = msg.outputs.add(name=name, datatype=datatype_of(arr), shape=list(arr.shape))
        data = output_array(arr)
        span = shm_outputs.get(name)
        if span is not None and shm is not None:
            shm.write(name, span, data)
            out.parameters["shared_memory_region"].string_param = span[0]
            out.parameters["shared_memory_byte_size"].int64_param = data.nbytes
            if span[3]:
                out.parameters["shared_memory_offset"].int64_param = span[3]
            parts += [_RAW_OUTPUT_TAG, b"\0"]
            continue
        view = memoryview(data).cast("B")
        parts += [_RAW_OUTPUT_TAG, _varint_bytes(view.nbytes), view]
    parts[0] = msg.SerializeToString()
    return b"".join(parts)


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class OipGrpcCodec:
    """``inference.GRPCInferenceService/ModelInfer``. The model comes from the message
    (``op``, when given, must match it)."""

    name = "oip-grpc"

    def decode(self, body: bytes | memoryview, op: str | None = None, headers: Mapping[str, str] | None = None,
               limits: BodyLimits = BodyLimits()) -> Decoded:
        model, _, req = decode_request(body, limits.shm)
        if op and op != model:
            raise ApiError(404, f"model {model!r} was sent to {op!r}")
        return oip_json.decoded_of(model, req)

    def encode(self, decoded: Decoded, result: Result) -> tuple[bytes, dict[str, str]]:
        ctx: oip_json.InferContext = decoded.context
        return encode_response(ctx.model, ctx.id, oip_json.selected_outputs(ctx, result), ctx.shm, ctx.shm_outputs), {}


CODEC = OipGrpcCodec()
