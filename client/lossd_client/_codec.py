"""Open Inference Protocol v2 on the wire, with the binary tensor data extension.

A binary request is a JSON header followed by each input's raw bytes (row-major,
little-endian, in input order); the header's length travels in
``Inference-Header-Content-Length`` and each input declares
``parameters.binary_data_size``. Responses mirror this when the request sets
``parameters.binary_data_output``. JSON tensors carry a flat row-major ``data`` list.
Pure functions only: no HTTP here, so the sync and async clients share all of it.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._errors import LossdError

HEADER_LENGTH = "Inference-Header-Content-Length"

# Every datatype the server accepts, keyed by the little-endian NumPy dtype.
_DATATYPES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype("<u1"): "UINT8", np.dtype("<u2"): "UINT16", np.dtype("<u4"): "UINT32", np.dtype("<u8"): "UINT64",
    np.dtype("<i1"): "INT8", np.dtype("<i2"): "INT16", np.dtype("<i4"): "INT32", np.dtype("<i8"): "INT64",
    np.dtype("<f4"): "FP32", np.dtype("<f8"): "FP64",
}
_NUMPY: dict[str, np.dtype] = {name: dtype for dtype, name in _DATATYPES.items()}
_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
_ALIGN = 8  # the widest item size: a body padded to it keeps every tensor aligned

Outputs = list[tuple[str, np.ndarray]]


# ------------------------------------------------------------------------------ arrays

def _numbers(name: str, a: Any) -> np.ndarray:
    """``a`` as an array of numbers, refused locally with the kernels' wording otherwise
    (a string array would only fail later, less clearly, in the conversion)."""
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return arr


def _little_endian(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous little-endian copy of ``arr`` in ``dtype`` (no copy if it already is)."""
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))


def float_tensor(name: str, a: Any) -> np.ndarray:
    """A float input (predictions, features, coef, weights): FP32 if it is float32, else
    FP64 (the kernels compute other dtypes in float64 too, so nothing changes)."""
    arr = _numbers(name, a)
    return _little_endian(arr, _F32 if arr.dtype == _F32 else _F64)


def label_tensor(a: Any) -> np.ndarray:
    """Labels keep their dtype when the protocol has it (BOOL, INT*, UINT*, FP32, FP64):
    the kernels pick float32 or float64 arithmetic from it. Others become FP64."""
    arr = _numbers("labels", a)
    keep = arr.dtype.kind in "biu" or arr.dtype in (_F32, _F64)
    return _little_endian(arr, arr.dtype if keep else _F64)


# ----------------------------------------------------------------------------- requests

def encode_request(inputs: Outputs, parameters: Mapping[str, Any], binary: bool) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request. ``inputs`` are (name, array) pairs as
    made by :func:`float_tensor` / :func:`label_tensor` (contiguous, little-endian).

    Binary bodies are laid out so that every tensor starts at a multiple of its item
    size: the header is padded with spaces to a multiple of 8 and the tensors go widest
    first. The server reads them in place (``np.frombuffer``), and NumPy sums misaligned
    float64 data in a different order (buffered chunks), which changes the last bit of a
    weighted mean; aligned data also keeps the kernels' vector loads fast.
    """
    if binary:
        inputs = sorted(inputs, key=lambda t: -t[1].dtype.itemsize)  # stable: ties keep their order
    tensors = []
    for name, arr in inputs:
        tensor: dict[str, Any] = {"name": name, "datatype": _DATATYPES[arr.dtype], "shape": list(arr.shape)}
        if binary:
            tensor["parameters"] = {"binary_data_size": arr.nbytes}
        else:
            # tolist() gives Python floats, whose repr round-trips exactly; ±inf/NaN go
            # out as the bare Infinity/NaN tokens, which the contract allows in requests
            # (lossd 0.1.0 refuses "Infinity" strings mixed with numbers in OIP data)
            tensor["data"] = arr.reshape(-1).tolist()
        tensors.append(tensor)
    params = dict(parameters)
    if binary:
        params["binary_data_output"] = True
    header: dict[str, Any] = {"inputs": tensors}
    if params:
        header["parameters"] = params
    # default=str: an option of a type JSON lacks goes as text, for the server to refuse
    head = json.dumps(header, separators=(",", ":"), allow_nan=True, default=str).encode()
    if not binary:
        return head, {"Content-Type": "application/json"}
    head += b" " * (-len(head) % _ALIGN)  # JSON allows trailing whitespace
    # one join: the arrays' buffers are read in place, copied once into the body
    body = b"".join([head, *(arr for _, arr in inputs if arr.size)])
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


# ---------------------------------------------------------------------------- responses

def decode_response(status: int, headers: Mapping[str, str], content: bytes) -> Outputs:
    """The (name, array) outputs of a 200 answer, in the server's order; any other
    status raises :class:`LossdError` with the server's message."""
    if status != 200:
        raise LossdError(status, error_message(content, status))
    try:
        return _outputs(headers.get(HEADER_LENGTH), content)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise LossdError(status, f"malformed inference response: {exc}") from None


def _outputs(header_length: str | None, content: bytes) -> Outputs:
    if header_length is None:
        head, blob = content, memoryview(b"")
    else:
        n = int(header_length)
        if not 0 < n <= len(content):
            raise ValueError(f"{HEADER_LENGTH} = {n} is beyond the body's {len(content)} bytes")
        head, blob = content[:n], memoryview(content)[n:]
    out: Outputs = []
    offset = 0
    for o in json.loads(head)["outputs"]:
        shape = tuple(int(d) for d in o["shape"])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if o["datatype"] == "BYTES":  # the summary output
            if size is None:
                arr = _bytes_json(o)
            else:
                if offset + size > len(blob):
                    raise ValueError(f"output {o['name']!r}: binary_data_size = {size} is beyond the body")
                arr = _bytes_elements(bytes(blob[offset:offset + size]), math.prod(shape))
                offset += size
            out.append((o["name"], arr.reshape(shape)))
            continue
        dtype = _NUMPY[o["datatype"]]
        if size is None:
            arr = _json_tensor(o["data"], dtype).reshape(shape)
        else:
            if size != math.prod(shape) * dtype.itemsize or offset + size > len(blob):
                raise ValueError(f"output {o['name']!r}: binary_data_size = {size} does not fit "
                                 f"shape {list(shape)} or the {len(blob) - offset} bytes left")
            # astype copies: results are writable, native-endian arrays like the kernels'
            raw = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
            arr = raw.astype(dtype.newbyteorder("=")).reshape(shape)
            offset += size
        out.append((o["name"], arr))
    return out


def _bytes_elements(raw: bytes, count: int) -> np.ndarray:
    """Triton's BYTES serialisation (each element a 4-byte little-endian length, then
    the bytes) as an object array of ``count`` bytes objects."""
    out = np.empty(count, dtype=object)
    i = 0
    for j in range(count):
        if i + 4 > len(raw):
            raise ValueError("BYTES output truncated")
        n = int.from_bytes(raw[i:i + 4], "little")
        if i + 4 + n > len(raw):
            raise ValueError("BYTES output truncated")
        out[j] = raw[i + 4:i + 4 + n]
        i += 4 + n
    if i != len(raw):
        raise ValueError(f"BYTES output has {len(raw) - i} bytes beyond its {count} elements")
    return out


def _bytes_json(o: dict) -> np.ndarray:
    """A BYTES output as JSON data: base64 text (content_type "base64", MLServer's)."""
    if (o.get("parameters") or {}).get("content_type") != "base64":
        raise ValueError(f"output {o['name']!r}: BYTES data without content_type base64")
    items = o["data"] if isinstance(o["data"], list) else [o["data"]]
    out = np.empty(len(items), dtype=object)
    for j, text in enumerate(items):
        out[j] = base64.b64decode(text, validate=True)
    return out


def _json_tensor(data: Any, dtype: np.dtype) -> np.ndarray:
    """A flat (or nested) JSON data list; NumPy reads the "Infinity"/"-Infinity"/"NaN"
    strings that JSON answers use for non-finite floats."""
    return np.array(data if isinstance(data, list) else [data], dtype=dtype.newbyteorder("="))


def error_message(content: bytes, status: int) -> str:
    """The server's text: OIP's ``{"error": ...}``, FastAPI's ``{"detail": ...}`` (a
    string or a list of ``{"msg": ...}``), else the raw body or the status."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        msg = body.get("error", body.get("detail"))
        if isinstance(msg, str):
            return msg
        if isinstance(msg, list):
            return "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in msg)
    text = content.decode("utf-8", "replace").strip()
    return text or f"HTTP {status}"
