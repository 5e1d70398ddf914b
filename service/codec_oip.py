"""Open Inference Protocol v2 codec, with the binary tensor data extension.

A request is a JSON header, optionally followed by raw tensor bytes: the header's length
is in ``Inference-Header-Content-Length`` and each binary input carries
``parameters.binary_data_size``; the blobs follow in input order, row-major and
little-endian. Binary inputs become read-only ``np.frombuffer`` views of the body (no
copies). Responses mirror this: outputs asked for as binary are appended after the JSON.
Errors raise ``OipError`` (status 400, ``{"error": "..."}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from lossd.kernels.api import float32_values

from .codec_json import NONFINITE, DuplicateKey, loads, nonfinite_as_text
from .limits import JsonTooDeep, check_json_depth

HEADER_LENGTH = "inference-header-content-length"
HEADER_NAME = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in DATATYPES.items()}
FLOAT_TYPES = ("FP32", "FP64")
LABEL_TYPES = ("FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")


class OipError(Exception):
    """A malformed inference request: 400 with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    outputs: list[tuple[str, bool | None]] | None  # (name, binary_data) as asked; None: all
    binary_output: bool  # the request-level binary_data_output


@dataclass(slots=True)
class InferResponse:
    model_name: str
    id: str | None
    outputs: list[tuple[str, np.ndarray]] = field(default_factory=list)


_TENSOR_KEYS = ("name", "datatype", "shape", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")


def _object_or_none(v: Any, where: str) -> dict:
    """An optional JSON object: absent or null is empty; anything else (a list, 0, "")
    is a 400 rather than read as empty."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise OipError(f"{where} must be an object, got {type(v).__name__}")
    return v


def _known_keys(obj: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in keys]
    if unknown:
        raise OipError(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(keys)})")


def _param_bool(params: dict, key: str, where: str) -> bool | None:
    v = params.get(key)
    if v is None or isinstance(v, bool):
        return v
    raise OipError(f"{where} parameter {key} must be true or false, got {v!r}")


def decode_request(body: bytes | memoryview, header_length: str | None, allowed: dict[str, tuple[str, ...]],
                   max_depth: int | None = None) -> InferRequest:
    """Parse an infer request. ``allowed`` maps each input name to its datatypes; a JSON
    header nested deeper than ``max_depth`` is refused."""
    if header_length is None:
        header_raw, blob = body, b""
    else:
        try:
            hlen = int(header_length)
        except ValueError:
            raise OipError(f"Inference-Header-Content-Length = {header_length!r} is not a number") from None
        if hlen > len(body):
            raise OipError(f"Inference-Header-Content-Length = {hlen} is beyond the body's {len(body)} bytes")
        if hlen <= 0:
            raise OipError(f"Inference-Header-Content-Length = {hlen} must be positive (the JSON header's length)")
        header_raw, blob = body[:hlen], memoryview(body)[hlen:]
    try:
        check_json_depth(header_raw, max_depth)
    except JsonTooDeep as exc:
        raise OipError(f"the request header is refused: {exc}") from None
    try:
        header = loads(header_raw)
    except DuplicateKey as exc:
        raise OipError(f"the request header has a {exc}" if exc.path else
                       f"the request header has a {exc} at its top level") from None
    except ValueError as exc:
        if header_length is None and b'"binary_data_size"' in bytes(body):
            raise OipError(f"the body holds binary tensors (binary_data_size) but no {HEADER_NAME} "
                           "header gives the length of its JSON header") from None
        raise OipError(f"the request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise OipError("the request must be a JSON object")
    unknown = set(header) - {"id", "inputs", "outputs", "parameters"}
    if unknown:
        raise OipError(f"unknown request field {sorted(unknown)[0]!r} (expected id, inputs, outputs, parameters)")
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OipError("id must be a string")
    params = _object_or_none(header.get("parameters"), "parameters")

    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OipError("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, arr, used = _decode_input(i, t, blob, offset, allowed, header_length is not None)
        if name in inputs:
            raise OipError(f"input {name!r} appears twice")
        inputs[name] = arr
        offset += used
    if offset != len(blob):
        raise OipError(f"{len(blob) - offset} bytes of binary data follow the last binary input "
                       f"(binary_data_size of the inputs add up to {offset}, the body has {len(blob)})")

    outputs = header.get("outputs")
    asked = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise OipError("outputs must be a list")
        asked = []
        for j, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise OipError(f"outputs[{j}] must be an object with a name")
            _known_keys(o, _OUTPUT_KEYS, f"outputs[{j}] ({o['name']!r})")
            oparams = _object_or_none(o.get("parameters"), f"outputs[{j}].parameters")
            if any(o["name"] == a for a, _ in asked):
                raise OipError(f"output {o['name']!r} is asked for twice")
            asked.append((o["name"], _param_bool(oparams, "binary_data", f"output {o['name']!r}")))
    binary_output = bool(_param_bool(params, "binary_data_output", "request"))
    return InferRequest(rid, inputs, params, asked, binary_output)


def _decode_input(i: int, t: Any, blob, offset: int, allowed: dict[str, tuple[str, ...]], framed: bool):
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise OipError(f"inputs[{i}] must be an object with a name")
    name = t["name"]
    _known_keys(t, _TENSOR_KEYS, f"input {name!r}")
    if name not in allowed:
        raise OipError(f"unknown input tensor {name!r}; this model takes {', '.join(allowed)}")
    dtname = t.get("datatype")
    if not isinstance(dtname, str) or dtname not in DATATYPES:  # a list or object is unhashable
        raise OipError(f"input {name!r}: unknown datatype {dtname!r}")
    if dtname not in allowed[name]:
        raise OipError(f"input {name!r}: datatype {dtname} is not accepted (use {', '.join(allowed[name])})")
    shape = t.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape)):
        raise OipError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    dtype = DATATYPES[dtname]
    # other parameters (MLServer's content_type, ...) are the clients' own: ignored
    tparams = _object_or_none(t.get("parameters"), f"input {name!r}: parameters")
    size = tparams.get("binary_data_size")
    if size is not None:
        if "data" in t:
            raise OipError(f"input {name!r} has both data and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OipError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
        if not framed:
            raise OipError(f"input {name!r} has binary_data_size but the request has no {HEADER_NAME} "
                           "header (the length of its JSON header)")
        expect = count * dtype.itemsize
        if size != expect:
            raise OipError(f"input {name!r}: binary_data_size = {size} does not match shape {shape} × "
                           f"{dtname} ({dtype.itemsize} bytes) = {expect}")
        if offset + size > len(blob):
            raise OipError(f"input {name!r}: binary_data_size = {size} at offset {offset} runs past the "
                           f"{len(blob)} bytes of binary data")
        arr = _reshape(name, np.frombuffer(blob, dtype=dtype, count=count, offset=offset), shape)
        return name, arr, size
    if "data" not in t:
        raise OipError(f"input {name!r} has neither data nor binary_data_size")
    return name, _json_tensor(name, t["data"], shape, dtname, dtype, count), 0


def _json_tensor(name: str, data: Any, shape: list[int], dtname: str, dtype: np.dtype, count: int) -> np.ndarray:
    if not isinstance(data, list):  # the protocol's tensor data is an array, even of one value
        raise OipError(f"input {name!r}: data must be a (flat or nested) list, got {type(data).__name__}")
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise OipError(f"input {name!r}: data must be a flat (row-major) or nested list of numbers") from None
    if dtype.kind in "iu" and arr.dtype.kind in "fO":  # fractions, or integers beyond int64
        arr = _integers(name, data, dtname, dtype)
    if arr.dtype.kind not in "fiub":
        if dtname in FLOAT_TYPES and arr.dtype.kind in "OU":  # non-finite numbers written as strings
            flat = _flatten(data)  # from the list: NumPy turned its numbers into strings
            bad = next((j for j, v in enumerate(flat) if not (isinstance(v, (int, float)) or (isinstance(v, str) and v in NONFINITE))), None)
            if bad is not None:
                raise OipError(f"input {name!r}: data[{bad}] = {flat[bad]!r} is not a number")
            try:
                arr = np.array([NONFINITE.get(v, v) if isinstance(v, str) else v for v in flat], dtype=dtype)
            except OverflowError:
                raise OipError(f"input {name!r}: data holds an integer beyond the {dtname} range") from None
        else:
            raise OipError(f"input {name!r}: data must hold numbers ({dtname})")
    if arr.size != count:
        raise OipError(f"input {name!r}: data has {arr.size} elements, shape {shape} needs {count}")
    if dtname == "FP32" and arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        narrow, j = float32_values(arr)
        if j is not None:
            raise OipError(f"input {name!r}: data[{j}] = {float(arr.reshape(-1)[j])!r} is beyond the FP32 range")
        arr = narrow
    if dtname == "BOOL" and arr.dtype.kind != "b":
        raise OipError(f"input {name!r}: BOOL data must be true/false")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)  # astype would wrap 300 to 44 in INT8 without a word
        if arr.min() < info.min or arr.max() > info.max:
            j = int(np.flatnonzero(((arr < info.min) | (arr > info.max)).reshape(-1))[0])
            raise _out_of_range(name, j, arr.reshape(-1)[j].item(), dtname, info)
    return _reshape(name, arr.astype(dtype, copy=False), shape)


def _integers(name: str, data: list, dtname: str, dtype: np.dtype) -> np.ndarray:
    """Integer data that NumPy could not hold as int64 (it made floats or objects of
    them): exact when every value fits ``dtype`` (UINT64 up to 2^64 - 1). Else 400: a
    value outside the datatype's range is named first (orjson reads an integer beyond
    64 bits as a float, so an integral float counts too), then one that is no integer."""
    flat = _flatten(data) if isinstance(data, list) else [data]
    info = np.iinfo(dtype)
    for j, v in enumerate(flat):
        if (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and not info.min <= v <= info.max):
            raise _out_of_range(name, j, v, dtname, info)
    bad = next((j for j, v in enumerate(flat) if not isinstance(v, int) or isinstance(v, bool)), None)
    if bad is not None:
        raise OipError(f"input {name!r}: {dtname} data must be integers, got data[{bad}] = {flat[bad]!r}")
    return np.array(flat, dtype=dtype)


def _out_of_range(name: str, j: int, v: int, dtname: str, info: np.iinfo) -> OipError:
    return OipError(f"input {name!r}: data[{j}] = {v} is outside the {dtname} range [{info.min}, {info.max}]")


def _reshape(name: str, arr: np.ndarray, shape: list[int]) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except ValueError as exc:  # e.g. a dimension beyond what NumPy can index
        raise OipError(f"input {name!r}: shape {shape} is not possible: {exc}") from None


def _flatten(data: list) -> list:
    out: list = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def datatype_of(arr: np.ndarray) -> str:
    return _NAMES[arr.dtype.newbyteorder("=")]


def encode_response(resp: InferResponse, binary: dict[str, bool], parameters: dict[str, Any] | None = None
                    ) -> tuple[bytes, dict[str, str]]:
    """Body and headers: JSON outputs inline; binary ones appended after the JSON header."""
    outs = []
    blobs: list[bytes] = []
    for name, arr in resp.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if binary.get(name):
            data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = _json_data(arr)
        outs.append(entry)
    head: dict[str, Any] = {"model_name": resp.model_name, "model_version": "1"}
    if resp.id is not None:
        head["id"] = resp.id
    if parameters:
        head["parameters"] = parameters
    head["outputs"] = outs
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}


def _json_data(arr: np.ndarray):
    flat = arr.reshape(-1)
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return nonfinite_as_text(flat)
    return flat  # orjson writes it from the buffer
