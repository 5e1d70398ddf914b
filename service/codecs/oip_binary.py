"""The Open Inference Protocol's binary tensor data extension: framing only.

A request is a JSON header, optionally followed by raw tensor bytes: the header's length
is in ``Inference-Header-Content-Length`` and each binary input carries
``parameters.binary_data_size``; the blobs follow in input order, row-major and
little-endian. Binary inputs become read-only ``np.frombuffer`` views of the body (no
copies). Responses mirror this: outputs asked for as binary are appended after the JSON
header. The JSON header itself, and tensors with JSON ``data``, are ``oip_json``'s.
Errors are ``RequestError``s (the OIP renders them 400 ``{"error": "..."}``).
"""

from __future__ import annotations

import numpy as np

from ..errors import RequestError

HEADER_LENGTH = "inference-header-content-length"
HEADER_NAME = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in DATATYPES.items()}


def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype.kind == "O":  # an array of bytes objects (the summary output)
        return "BYTES"
    name = _NAMES.get(arr.dtype)  # a native dtype equals its "=" form: no new dtype to make
    return name if name is not None else _NAMES[arr.dtype.newbyteorder("=")]


def split(body: bytes | memoryview, header_length: str | None) -> tuple[bytes | memoryview, bytes | memoryview]:
    """(the JSON header, the binary data after it) of a request body; without
    ``Inference-Header-Content-Length`` the whole body is the header."""
    if header_length is None:
        return body, b""
    try:
        hlen = int(header_length)
    except ValueError:
        raise RequestError.at((), f"{HEADER_NAME} = {header_length!r} is not a number") from None
    if hlen > len(body):
        raise RequestError.at((), f"{HEADER_NAME} = {hlen} is beyond the body's {len(body)} bytes")
    if hlen <= 0:
        raise RequestError.at((), f"{HEADER_NAME} = {hlen} must be positive (the JSON header's length)")
    return body[:hlen], memoryview(body)[hlen:]


def binary_tensor(name: str, size: object, shape: list[int], dtname: str, blob, offset: int,
                  framed: bool, where: tuple) -> np.ndarray:
    """Input ``name``'s ``size`` bytes at ``offset`` of ``blob`` as a read-only view."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError.at(where, f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if not framed:
        raise RequestError.at(where, f"input {name!r} has binary_data_size but the request has no {HEADER_NAME} "
                              "header (the length of its JSON header)")
    dtype = DATATYPES[dtname]
    count = 1
    for d in shape:
        count *= d
    expect = count * dtype.itemsize
    if size != expect:
        raise RequestError.at(where, f"input {name!r}: binary_data_size = {size} does not match shape {shape} × "
                              f"{dtname} ({dtype.itemsize} bytes) = {expect}")
    if offset + size > len(blob):
        raise RequestError.at(where, f"input {name!r}: binary_data_size = {size} at offset {offset} runs past the "
                              f"{len(blob)} bytes of binary data")
    return reshape(name, np.frombuffer(blob, dtype=dtype, count=count, offset=offset), shape, where)


def check_consumed(used: int, blob) -> None:
    if used != len(blob):
        raise RequestError.at((), f"{len(blob) - used} bytes of binary data follow the last binary input "
                              f"(binary_data_size of the inputs add up to {used}, the body has {len(blob)})")


def reshape(name: str, arr: np.ndarray, shape: list[int], where: tuple = ()) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except ValueError as exc:  # e.g. a dimension beyond what NumPy can index
        raise RequestError.at(where, f"input {name!r}: shape {shape} is not possible: {exc}") from None


def output_bytes(arr: np.ndarray) -> bytes:
    """An output's raw bytes: row-major, little-endian; BYTES elements each as a 4-byte
    little-endian length and the bytes (Triton's serialisation, which tritonclient reads)."""
    if arr.dtype.kind == "O":
        return b"".join(len(b).to_bytes(4, "little") + b for b in arr.reshape(-1).tolist())
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def output_array(arr: np.ndarray) -> np.ndarray:
    """An output as the little-endian array whose bytes go on the wire (BYTES serialised
    as ``output_bytes``, into uint8)."""
    if arr.dtype.kind == "O":
        return np.frombuffer(output_bytes(arr), dtype=np.uint8)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))  # no copy if it is


def frame(header: bytes, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A response body and its headers: the JSON header alone, or followed by the blobs."""
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
