"""The JSON API's codec: /loss and /grad bodies to the request model, results to bytes.

``JsonCodec`` (``CODEC``) follows ``base.Codec``; the functions below it are its parts
(the OIP codec reuses the parser and the number writing). Kept apart from the compute
and from routing (as MLServer keeps its codecs). Large arrays
are never walked in Python on the good path: ``orjson`` parses the body once, NumPy
converts each list in C, and ``orjson`` writes arrays straight from their buffers.
A key repeated in an object, at any depth, is refused on every path: simdjson lists
every key of an object (repeats included) and skips number arrays in C, so the check
costs next to nothing; the stdlib path sees repeats in its ``object_pairs_hook``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .. import fields
from ..errors import RequestError
from ..limits import BodyLimits, JsonTooDeep, check_json_depth
from ..requests import ParamsRequest, Result, build
from .base import Decoded

try:  # simdjson parses number arrays straight into a double buffer, no Python floats
    import simdjson
except ImportError:  # pragma: no cover - a declared dependency; orjson alone still works
    simdjson = None

# JSON has no non-finite numbers. Requests may spell them as these strings (pydantic's
# ser_json_inf_nan="strings") or as the bare tokens Python's json module writes.
NONFINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "+Infinity": math.inf, "NaN": math.nan}


class DuplicateKey(ValueError):
    """A key repeated in one JSON object: refused, not resolved (orjson keeps the last
    value, simdjson the first, so which one counted would depend on the path taken)."""

    def __init__(self, path: tuple, key: str) -> None:
        self.path = path
        self.key = key
        where = f" in {dotted(path)}" if path else ""
        super().__init__(f'duplicate key "{key}"{where}')


def dotted(path: tuple) -> str:
    """("inputs", 0, "parameters") -> "inputs[0].parameters"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def loads(raw: bytes | memoryview, *, duplicates_checked: bool = False) -> Any:
    """Parse JSON; ``ValueError`` saying why when it is not valid, ``DuplicateKey`` when
    an object repeats a key (at any depth).

    orjson refuses the bare Infinity/-Infinity/NaN tokens that json.dumps writes; only
    bodies holding such a token pay for the stdlib parser (and a copy of a pooled buffer).
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raw = bytes(raw)
        if b"Infinity" not in raw and b"NaN" not in raw:
            raise ValueError(str(exc)) from None
        return _loads_stdlib(raw)
    if not duplicates_checked:
        check_duplicates(raw)
    return data


def _loads_stdlib(raw: bytes) -> Any:
    repeats: list[tuple[dict, str]] = []  # holding the dicts keeps their ids unique

    def pairs(items: list[tuple[str, Any]]) -> dict:
        d = dict(items)
        if len(d) != len(items):
            repeats.append((d, _first_repeat(k for k, _ in items)))
        return d

    try:
        data = json.loads(raw, parse_float=finite_float, object_pairs_hook=pairs)
    except RecursionError as exc:
        raise ValueError(str(exc)) from None
    if repeats:
        raise DuplicateKey(*_find_repeat(data, {id(d): k for d, k in repeats}, ()))
    return data


def _first_repeat(keys) -> str:
    seen: set[str] = set()
    for k in keys:
        if k in seen:
            return k
        seen.add(k)
    raise AssertionError("no repeated key")


def _find_repeat(node: Any, repeats: dict[int, str], path: tuple) -> tuple[tuple, str] | None:
    """The path and key of the first repeat, depth first, an object's own keys before
    its children's (the order of ``_simd_repeat``)."""
    if isinstance(node, dict):
        if id(node) in repeats:
            return path, repeats[id(node)]
        children = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return None
    for k, child in children:
        if isinstance(child, (dict, list)):
            found = _find_repeat(child, repeats, (*path, k))
            if found:
                return found
    return None


def check_duplicates(raw: bytes | memoryview) -> None:
    """``DuplicateKey`` if an object of the (valid) JSON ``raw`` repeats a key."""
    doc = None
    if simdjson is not None:
        try:
            doc = _parse(raw)
        except Exception:  # e.g. an integer beyond 64 bits, which orjson reads as a float
            doc = None
    if doc is not None:
        try:
            found = _simd_repeat(doc, ())
        except KeyError:  # pysimdjson looks a key up as a C string: one holding "\u0000" is
            found = False  # never found (a 500 before); the stdlib parser checks it instead
        finally:
            doc = None  # the parser's document dies with it
        if found is not False:
            if found:
                raise DuplicateKey(*found)
            return
    _loads_stdlib(bytes(raw))


def _simd_repeat(node: Any, path: tuple, numbers_checked: bool = False) -> tuple[tuple, str] | None:
    """Walk a simdjson document for a repeated key. Its objects list every key, repeats
    included; arrays of numbers only (the bulk of a request) are skipped in C."""
    if isinstance(node, simdjson.Object):
        keys = list(node.keys())
        if len(keys) != len(set(keys)):
            return path, _first_repeat(keys)
        children = ((k, node[k]) for k in keys)
    elif isinstance(node, simdjson.Array):
        if (not numbers_checked and _as_float64(node) is not None) or b"{" not in node.mini:
            return None
        children = enumerate(node)
    else:
        return None
    for k, child in children:
        if isinstance(child, (simdjson.Object, simdjson.Array)):
            found = _simd_repeat(child, (*path, k))
            if found:
                return found
    return None


def _refuse_repeat(node: Any, path: tuple, numbers_checked: bool = False) -> None:
    found = _simd_repeat(node, path, numbers_checked)
    if found:
        raise duplicate_error(DuplicateKey(*found))


def _as_float64(arr: Any) -> np.ndarray | None:
    """The numbers of a simdjson array (nested lists flatten), or None when it holds
    anything else."""
    try:
        return np.frombuffer(arr.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None


def decode_body(body: bytes | memoryview, *, duplicates_checked: bool = False) -> dict[str, Any]:
    """Parse a request body into a dict; 422 for anything but a JSON object, and for a
    repeated key (``loc``: its path and the key)."""
    try:
        data = loads(body, duplicates_checked=duplicates_checked)
    except DuplicateKey as exc:
        raise duplicate_error(exc) from None
    except ValueError as exc:
        raise RequestError.invalid_json(str(exc)) from None
    if not isinstance(data, dict):
        raise RequestError.at((), f"the body must be a JSON object, got {type(data).__name__}",
                              kind="model_type")
    return data


def duplicate_error(exc: DuplicateKey) -> RequestError:
    return RequestError.at((*exc.path, exc.key), str(exc), kind="duplicate_key")


def decode(body: bytes | memoryview, array_fields: frozenset[str]) -> dict[str, Any]:
    """A request body as a dict: by the fast path when it applies, else by orjson."""
    data, checked = _decode_fast(body, array_fields)
    return data if data is not None else decode_body(body, duplicates_checked=checked)


# A parser's buffers grow to the largest document it has parsed and are reused after:
# a fresh parser per body allocates and page-faults megabytes each time (at 10^5
# elements, up to a third of the decode). Bodies above this size get a parser of their
# own, so that no thread keeps buffers several times the largest body allowed.
PARSER_REUSE_BYTES = 8 * 1024 * 1024
_threads = threading.local()
_BOM = b"\xef\xbb\xbf"


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
    """The body with each flat number list of ``array_fields`` already a float64 array,
    or None when this path does not apply: anything unusual (nested or mixed lists,
    non-finite strings, booleans, invalid JSON) goes to ``decode_body``, which gives the
    exact error messages. A repeated key, at any depth, is a 422 here already.

    For 10^5-element arrays this is ~2.5x faster than orjson + NumPy: no Python float is
    ever made.
    """
    return _decode_fast(body, array_fields)[0]


def _decode_fast(body: bytes | memoryview, array_fields: frozenset[str]) -> tuple[dict[str, Any] | None, bool]:
    """(the body as by ``decode_body_fast``, whether every key of it was checked for
    repeats: then the slow path need not parse it a second time for that)."""
    if simdjson is None or body[:3] == _BOM:  # simdjson skips a BOM, orjson refuses it
        return None, False
    try:
        doc = _parse(body)
    except Exception:
        return None, False
    out: dict[str, Any] = {}
    arrays = 0
    fast = True
    try:
        if not isinstance(doc, simdjson.Object):
            return None, False
        keys = list(doc.keys())
        if len(keys) != len(set(keys)):
            raise duplicate_error(DuplicateKey((), _first_repeat(keys)))
        for key in keys:
            v = doc[key]
            if isinstance(v, simdjson.Array):
                arrays += 1
                if key in array_fields and len(v):
                    a = _as_float64(v)
                    if a is None:  # e.g. a string or boolean among the numbers
                        fast = False
                        _refuse_repeat(v, (key,), numbers_checked=True)
                    elif a.size != len(v):  # nested lists flatten: not a flat list
                        fast = False
                    elif fast:
                        out[key] = a
                    continue
                _refuse_repeat(v, (key,))
                if fast:
                    out[key] = v.as_list()
            elif isinstance(v, simdjson.Object):
                _refuse_repeat(v, (key,))
                if fast:
                    out[key] = v.as_dict()
            elif fast:
                out[key] = v
    except (TypeError, ValueError, RuntimeError, OverflowError, KeyError):
        # KeyError: a key holding "\u0000", which pysimdjson cannot look up
        return None, False  # not expected of a parsed document; the slow path decides
    finally:
        v = doc = None  # the parser's document dies with it
    # One "[" per top-level list, or some list was nested (or a string holds "["): then
    # only the slow path can tell a 2-D array from a malformed one.
    if not fast or _count_brackets(body) != arrays:
        return None, True
    return out, True


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
    (true/false are 1/0). ``dtype: "float32"`` narrows it later (in the kernels).

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


# ------------------------------------------------------------------------------ codec

class JsonCodec:
    """``POST /loss`` and ``POST /grad``: a JSON object with the arrays and options as
    fields; the answer a JSON object (non-finite numbers as strings)."""

    name = "json"

    def decode(self, body: bytes | memoryview, op: str, headers: Mapping[str, str] | None = None,
               limits: BodyLimits = BodyLimits()) -> Decoded:
        try:
            check_json_depth(body, limits.max_json_depth)
        except JsonTooDeep as exc:
            raise RequestError.at((), str(exc), kind="json_too_deep") from None
        return Decoded(build(op, decode(body, fields.ARRAY_FIELDS), _json_array))

    def encode(self, decoded: Decoded, result: Result) -> tuple[bytes, dict[str, str]]:
        return encode(payload(decoded, result)), _JSON_HEADERS


_JSON_HEADERS = {"content-type": "application/json"}


def _json_array(name: str, value: Any) -> np.ndarray:
    # the fast path's arrays arrive converted already
    return value if isinstance(value, np.ndarray) else to_array(name, value)


def payload(decoded: Decoded, result: Result) -> dict[str, Any]:
    """The response object for ``result``: the fields of ``LossResponse``,
    ``GradResponse`` or ``ParamsGradResponse``."""
    request = decoded.request
    if isinstance(request, ParamsRequest):
        return {"loss": result.loss, "grad": {"coef": result.coef, "intercept": result.intercept}}
    o = request.options
    header = {"input": o.input, "loss_type": o.loss, "reduction": o.reduction}
    if request.op == "loss":
        out = {"loss": result.loss, "losses": result.losses, "stats": result.stats, **header}
    else:
        out = {"loss": result.loss, "grad": result.grad, "losses": result.losses, "stats": result.stats, **header}
    if result.summary is not None:  # only when asked (summary = true)
        out["summary"] = result.summary.to_dict()
    return out


CODEC = JsonCodec()
