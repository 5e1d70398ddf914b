"""JSON codec: request bodies to NumPy arrays and results to bytes.

Kept apart from the compute and from routing (as MLServer keeps its codecs). Large arrays
are never walked in Python on the good path: ``orjson`` parses the body once, NumPy
converts each list in C, and ``orjson`` writes arrays straight from their buffers.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import orjson

from .errors import RequestError

try:  # simdjson parses number arrays straight into a double buffer, no Python floats
    import simdjson
except ImportError:  # pragma: no cover - a declared dependency; orjson alone still works
    simdjson = None

# JSON has no non-finite numbers. Requests may spell them as these strings (pydantic's
# ser_json_inf_nan="strings") or as the bare tokens Python's json module writes.
NONFINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "+Infinity": math.inf, "NaN": math.nan}


def loads(raw: bytes | memoryview) -> Any:
    """Parse JSON; ``ValueError`` saying why when it is not valid.

    orjson refuses the bare Infinity/-Infinity/NaN tokens that json.dumps writes; only
    bodies holding such a token pay for the stdlib parser (and a copy of a pooled buffer).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raw = bytes(raw)
        if b"Infinity" not in raw and b"NaN" not in raw:
            raise ValueError(str(exc)) from None
    try:
        return json.loads(raw, parse_float=finite_float)
    except RecursionError as exc:
        raise ValueError(str(exc)) from None


def decode_body(body: bytes | memoryview) -> dict[str, Any]:
    """Parse a request body into a dict; 422 for anything but a JSON object."""
    try:
        data = loads(body)
    except ValueError as exc:
        raise RequestError.invalid_json(str(exc)) from None
    if not isinstance(data, dict):
        raise RequestError.at((), f"the body must be a JSON object, got {type(data).__name__}",
                              kind="model_type")
    return data


# A parser's buffers grow to the largest document it has parsed and are reused after:
# a fresh parser per body allocates and page-faults megabytes each time (at 10^5
# elements, up to a third of the decode). Bodies above this size get a parser of their
# own, so that no thread keeps buffers several times the largest body allowed.
PARSER_REUSE_BYTES = 8 * 1024 * 1024
_threads = threading.local()


def _parse(body: bytes | memoryview) -> Any:
    """simdjson's document for body, from this thread's parser when the body is small."""
    if len(body) > PARSER_REUSE_BYTES:
        return simdjson.Parser().parse(body)
    parser = getattr(_threads, "parser", None)
    if parser is not None:
        try:
            return parser.parse(body)
        except RuntimeError:  # a document of that parser is still referenced: leave them be
            pass
    parser = _threads.parser = simdjson.Parser()
    return parser.parse(body)


def decode_body_fast(body: bytes | memoryview, array_fields: frozenset[str]) -> dict[str, Any] | None:
    """The body with each flat number list of ``array_fields`` already a float64 array
    (``dtype: "float32"`` narrows later, in precision.py, for every path alike), or None
    when this path does not apply: anything unusual (nested or mixed lists, non-finite
    strings, booleans, duplicate keys, invalid JSON) goes to ``decode_body``, which gives
    the exact error messages.

    For 10^5-element arrays this is ~2.5x faster than orjson + NumPy: no Python float is
    ever made.
    """
    if simdjson is None:
        return None
    try:
        doc = _parse(body)
    except Exception:
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(keys) != len(set(keys)):  # orjson keeps the last duplicate, simdjson the first
        return None
    out: dict[str, Any] = {}
    arrays = 0
    try:
        for key in keys:
            v = doc[key]
            if isinstance(v, simdjson.Array):
                arrays += 1
                if key in array_fields and len(v):
                    a = np.frombuffer(v.as_buffer(of_type="d"), dtype=np.float64)
                    if a.size != len(v):  # nested lists flatten: not a flat list
                        return None
                    out[key] = a
                else:
                    out[key] = v.as_list()
            elif isinstance(v, simdjson.Object):
                out[key] = v.as_dict()
            else:
                out[key] = v
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return None  # e.g. a string or boolean among the numbers
    finally:
        v = doc = None  # the parser's document dies with it
    # One "[" per top-level list, or some list was nested (or a string holds "["): then
    # only the slow path can tell a 2-D array from a malformed one.
    if _count_brackets(body) != arrays:
        return None
    return out


def _count_brackets(body: bytes | memoryview) -> int:
    if isinstance(body, bytes):
        return body.count(b"[")
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("[")))


def finite_float(text: str) -> float:
    """A JSON number literal; like orjson, refuse one beyond float range (1e400) instead
    of reading it as infinity (only the Infinity spellings mean infinity)."""
    v = float(text)
    if math.isinf(v):
        raise ValueError(f"number {text} is beyond the float64 range")
    return v


def to_array(name: str, value: Any) -> np.ndarray:
    """A JSON list (of numbers, or of equal-length lists of numbers) as a float64 array
    (true/false are 1/0). ``dtype: "float32"`` narrows it later (precision.py).

    The fast path is one C conversion; the slow path, taken only when the list holds
    something else, maps the non-finite strings and names the first bad element.
    """
    if not isinstance(value, list):
        raise RequestError.at((name,), f"{name} must be an array of numbers, got {_kind(value)}",
                              kind="list_type")
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        arr = None  # ragged rows: found and named below
    if arr is None or arr.dtype.kind not in "fiub":
        arr = _slow_array(name, value, np.float64)
    return arr if arr.dtype == np.float64 else arr.astype(np.float64)


def _slow_array(name: str, value: list, dtype) -> np.ndarray:
    if value and isinstance(value[0], list):
        width = len(value[0])
        rows = []
        for i, row in enumerate(value):
            if not isinstance(row, list):
                raise RequestError.at((name, i), f"{name}[{i}] is {_kind(row)}; every row must be an array",
                                      kind="list_type")
            if len(row) != width:
                raise RequestError.at((name, i), f"{name}[{i}] has {len(row)} elements, "
                                      f"{name}[0] has {width}: rows must have equal length", kind="value_error")
            rows.append([_number(name, (i, j), v) for j, v in enumerate(row)])
        return np.array(rows, dtype=dtype).reshape(len(value), width)
    return np.array([_number(name, (i,), v) for i, v in enumerate(value)], dtype=dtype)


def _number(name: str, where: tuple[int, ...], v: Any) -> float:
    if isinstance(v, float):
        return v
    if isinstance(v, int):  # bool is an int: true/false are 1/0, as in NumPy
        try:
            return float(v)
        except OverflowError:
            pass  # an integer beyond float range: reported below
    if isinstance(v, str) and v in NONFINITE:
        return NONFINITE[v]
    at = "".join(f"[{i}]" for i in where)
    raise RequestError.at((name, *where), f"{name}{at} = {_short(v)} is not a number", kind="float_type")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, (dict, list)) else _kind(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- encoding

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def encode(payload: dict[str, Any]) -> bytes:
    """Serialise a response. orjson writes non-finite floats as null; the contract wants
    the strings "Infinity"/"-Infinity"/"NaN", so non-finite values are rewritten first
    (a vectorised check; only arrays that hold one are converted in Python)."""
    return orjson.dumps(_finite_safe(payload), option=_OPTS)


def _finite_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else _nonfinite_text(v)
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            return nonfinite_as_text(v)
        return v
    if isinstance(v, dict):
        return {k: _finite_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_safe(x) for x in v]
    return v


def _nonfinite_text(v: float) -> str:
    return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")


def nonfinite_as_text(a: np.ndarray) -> list:
    """``a`` as (nested) lists with ±inf and NaN spelled as the contract's strings."""
    if a.ndim > 1:
        return [nonfinite_as_text(row) for row in a]
    return [x if math.isfinite(x) else _nonfinite_text(x) for x in a.tolist()]
