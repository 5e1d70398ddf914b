"""The Open Inference Protocol v2 codec: infer requests to the request model, results
to infer responses.

``OipCodec`` (``CODEC``) follows ``base.Codec``. This module reads the JSON header (ids,
inputs, parameters, outputs) and tensors given as JSON ``data``; tensors given as bytes
after the header, and the framing of bodies that hold them, are ``oip_binary``'s. A
header whose data lists are flat lists of numbers is read by a simdjson fast path
(``decode_header_fast``, the numbers straight into buffers, as ``/loss`` reads its
arrays); anything it cannot read exactly as the slow path (orjson) would goes to that. The
request's parameters are the options, named as the JSON API's fields; a per-column
``pos_weight`` and an ``intercept`` may come as tensors. Errors are ``RequestError``s
(400 ``{"error": "..."}`` under /v2).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from lossd.kernels import ParamGrad
from lossd.kernels.api import float32_values

from .. import fields
from ..errors import RequestError
from ..limits import BodyLimits, JsonTooDeep, check_json_depth
from ..requests import Result, build
from ..shm import Registry
from . import oip_binary
from .base import Decoded
from .json import _BOM, NONFINITE, DuplicateKey, _count_brackets, _parse, loads, nonfinite_as_text, simdjson
from .oip_binary import DATATYPES, HEADER_LENGTH, HEADER_NAME, datatype_of

FLOAT_TYPES = fields.FLOAT_TYPES


def _error(msg: str, *loc: Any) -> RequestError:
    return RequestError.at(loc, msg)


@dataclass(slots=True)
class InferRequest:
    """An infer request as sent: tensors by name (arrays), parameters, outputs asked for."""
    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    outputs: list[tuple[str, bool | None]] | None  # (name, binary_data) as asked; None: all
    binary_output: bool  # the request-level binary_data_output
    shm: Registry | None = None  # system shared memory (None: off)
    shm_outputs: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)  # Registry.check_output


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
        raise _error(f"{where} must be an object, got {type(v).__name__}")
    return v


def _known_keys(obj: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in keys]
    if unknown:
        raise _error(f"{where}: unknown field {unknown[0]!r} (expected {', '.join(keys)})")


def _param_bool(params: dict, key: str, where: str) -> bool | None:
    v = params.get(key)
    if v is None or isinstance(v, bool):
        return v
    raise _error(f"{where} parameter {key} must be true or false, got {v!r}")


def decode_request(body: bytes | memoryview, header_length: str | None, allowed: dict[str, tuple[str, ...]],
                   max_depth: int | None = None, shm: Registry | None = None) -> InferRequest:
    """Parse an infer request. ``allowed`` maps each input name to its datatypes; a JSON
    header nested deeper than ``max_depth`` is refused. Tensors in system shared memory
    are read from ``shm`` (None: the extension is off)."""
    header_raw, blob = oip_binary.split(body, header_length)
    try:
        check_json_depth(header_raw, max_depth)
    except JsonTooDeep as exc:
        raise _error(f"the request header is refused: {exc}") from None
    header = decode_header_fast(header_raw) if header_length is None else None
    if header is None:
        header = _decode_header(body, header_raw, header_length)
    if not isinstance(header, dict):
        raise _error("the request must be a JSON object")
    unknown = set(header) - {"id", "inputs", "outputs", "parameters"}
    if unknown:
        raise _error(f"unknown request field {sorted(unknown)[0]!r} (expected id, inputs, outputs, parameters)")
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _error("id must be a string")
    params = _object_or_none(header.get("parameters"), "parameters")

    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _error("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        name, arr, used = _decode_input(i, t, blob, offset, allowed, header_length is not None, shm)
        if name in inputs:
            raise _error(f"input {name!r} appears twice")
        inputs[name] = arr
        offset += used
    oip_binary.check_consumed(offset, blob)

    outputs = header.get("outputs")
    asked = None
    shm_outputs: dict[str, tuple[str, int, int, int]] = {}
    if outputs is not None:
        if not isinstance(outputs, list):
            raise _error("outputs must be a list")
        asked = []
        for j, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise _error(f"outputs[{j}] must be an object with a name")
            _known_keys(o, _OUTPUT_KEYS, f"outputs[{j}] ({o['name']!r})")
            oparams = _object_or_none(o.get("parameters"), f"outputs[{j}].parameters")
            if any(o["name"] == a for a, _ in asked):
                raise _error(f"output {o['name']!r} is asked for twice")
            asked.append((o["name"], _param_bool(oparams, "binary_data", f"output {o['name']!r}")))
            if "shared_memory_region" in oparams:
                shm_outputs[o["name"]] = _shm(shm, f"output {o['name']!r}").check_output(o["name"], oparams)
    binary_output = bool(_param_bool(params, "binary_data_output", "request"))
    return InferRequest(rid, inputs, params, asked, binary_output, shm, shm_outputs)


def _shm(shm: Registry | None, what: str) -> Registry:
    if shm is None:
        raise _error(f"{what} is in shared memory (shared_memory_region) but system shared memory is "
                     "off on this server (LOSSD_SHM)")
    return shm


def _decode_header(body: bytes | memoryview, header_raw: bytes | memoryview, header_length: str | None) -> Any:
    """The JSON header by orjson (the slow path): every data list as Python numbers."""
    try:
        return loads(header_raw)
    except DuplicateKey as exc:
        raise _error(f"the request header has a {exc}" if exc.path else
                     f"the request header has a {exc} at its top level") from None
    except ValueError as exc:
        if header_length is None and b'"binary_data_size"' in bytes(body):
            raise _error(f"the body holds binary tensors (binary_data_size) but no {HEADER_NAME} "
                         "header gives the length of its JSON header") from None
        raise _error(f"the request header is not valid JSON: {exc}") from None


# ------------------------------------------------------------------- the fast path

@dataclass(frozen=True, slots=True)
class Numbers:
    """A tensor's ``data`` as the fast path read it: the array ``np.array(data)`` makes
    of its flat list of numbers (float64; int64 for an integer datatype), before the
    datatype is applied."""
    values: np.ndarray


class _NotFast(Exception):
    """Something the fast path leaves to the slow one."""


_INT_TYPES = frozenset(k for k, v in DATATYPES.items() if v.kind in "iu")
_EXACT = 2.0 ** 53  # every integer up to this is a float64


def decode_header_fast(raw: bytes | memoryview) -> dict[str, Any] | None:
    """The JSON header as ``loads`` gives it, but with each input's ``data`` a ``Numbers``
    read by simdjson straight into a buffer (no Python floats), or None when this path
    does not apply; the slow path (``_decode_header``) then parses the body and gives
    the exact error messages.

    It applies when every input's data is a flat list of JSON numbers of a datatype it
    can read exactly: FP64; FP32 when no value exceeds 2^53 in magnitude or some value
    is a fraction (a list of integers only is cast to float32 from int64 by the slow
    path: beyond 2^53 the two roundings could differ); INT*/UINT* when every value is written as an integer
    within int64 (simdjson's int64 buffer refuses 1.5, 1.0 and 2^63, all of which the
    slow path judges). Anything else goes to the slow path: BOOL, nested or mixed
    lists, strings ("Infinity", "NaN"), booleans, a key repeated in any object,
    invalid JSON, a BOM, or a "[" the walk did not account for (one in a string).
    Bodies with binary framing always take the slow path.
    """
    if simdjson is None or raw[:3] == _BOM:  # simdjson skips a BOM, orjson refuses it
        return None
    try:
        doc = _parse(raw)
    except Exception:
        return None
    walk = _Walk()
    try:
        if not isinstance(doc, simdjson.Object):
            return None
        header = walk.header(doc)
    except Exception:  # _NotFast; a value simdjson will not convert; KeyError: a key
        return None  # holding "\u0000", which pysimdjson cannot look up
    finally:
        doc = None  # the parser's document dies with it
    if _count_brackets(raw) != walk.arrays:
        return None
    return header


class _Walk:
    """A simdjson document as plain Python values, input data as ``Numbers``; counts the
    arrays it saw."""

    __slots__ = ("arrays",)

    def __init__(self) -> None:
        self.arrays = 0

    def header(self, doc: Any) -> dict[str, Any]:
        out = {}
        for key in _keys(doc):
            v = doc[key]
            if key == "inputs" and isinstance(v, simdjson.Array):
                self.arrays += 1
                out[key] = [self.tensor(t) if isinstance(t, simdjson.Object) else self.plain(t) for t in v]
            else:
                out[key] = self.plain(v)
        return out

    def tensor(self, t: Any) -> dict[str, Any]:
        out = {}
        for key in _keys(t):
            v = t[key]
            if key == "data" and isinstance(v, simdjson.Array):
                self.arrays += 1
                out[key] = Numbers(_numbers(v, t.get("datatype")))
            else:
                out[key] = self.plain(v)
        return out

    def plain(self, node: Any) -> Any:
        if isinstance(node, simdjson.Object):
            return {k: self.plain(node[k]) for k in _keys(node)}
        if isinstance(node, simdjson.Array):
            self.arrays += 1
            return [self.plain(v) for v in node]
        return node


def _keys(obj: Any) -> list[str]:
    keys = list(obj.keys())  # every key, repeats included
    if len(keys) != len(set(keys)):
        raise _NotFast  # the slow path names the repeat
    return keys


def _numbers(arr: Any, dtname: Any) -> np.ndarray:
    """The numbers of a data list as ``np.array(data)`` would hold them for ``dtname``."""
    if not isinstance(dtname, str):
        raise _NotFast
    if dtname in FLOAT_TYPES:
        a = np.frombuffer(arr.as_buffer(of_type="d"), dtype=np.float64)
        if dtname == "FP32" and a.size and (a.max() > _EXACT or a.min() < -_EXACT) and not _has_fraction(a):
            raise _NotFast
    elif dtname in _INT_TYPES:
        a = np.frombuffer(arr.as_buffer(of_type="i"), dtype=np.int64)
    else:  # BOOL (true/false are no numbers to simdjson), or a datatype the slow path refuses
        raise _NotFast
    if a.size != len(arr):  # nested lists flatten: the slow path tells 2-D from malformed
        raise _NotFast
    return a


def _has_fraction(a: np.ndarray) -> bool:
    """Whether some value is no integer: then the list held a number written as a float,
    and the slow path's array is float64 too (it is int64 only when every one is an int)."""
    with np.errstate(invalid="ignore"):
        return bool((a != np.trunc(a)).any())


def _decode_input(i: int, t: Any, blob, offset: int, allowed: dict[str, tuple[str, ...]], framed: bool,
                  shm: Registry | None = None):
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise _error(f"inputs[{i}] must be an object with a name", "inputs", i)
    name = t["name"]
    _known_keys(t, _TENSOR_KEYS, f"input {name!r}")
    dtname, shape, count, dtype = check_tensor(i, name, t.get("datatype"), t.get("shape"), allowed)
    # other parameters (MLServer's content_type, ...) are the clients' own: ignored
    tparams = _object_or_none(t.get("parameters"), f"input {name!r}: parameters")
    size = tparams.get("binary_data_size")
    if "shared_memory_region" in tparams:
        if "data" in t or size is not None:
            raise _error(f"input {name!r} has shared_memory_region and also "
                         f"{'data' if 'data' in t else 'binary_data_size'}", "inputs", i)
        arr = _shm(shm, f"input {name!r}").read(name, tparams, dtype, count, i)
        return name, oip_binary.reshape(name, arr, shape, ("inputs", i)), 0
    if size is not None:
        if "data" in t:
            raise _error(f"input {name!r} has both data and binary_data_size", "inputs", i)
        return name, oip_binary.binary_tensor(name, size, shape, dtname, blob, offset, framed, ("inputs", i)), size
    if "data" not in t:
        raise _error(f"input {name!r} has neither data nor binary_data_size", "inputs", i)
    return name, _json_tensor(name, t["data"], shape, dtname, dtype, count), 0


def check_tensor(i: int, name: str, dtname: Any, shape: Any, allowed: dict[str, tuple[str, ...]]
                 ) -> tuple[str, list[int], int, np.dtype]:
    """(datatype, shape, element count, dtype) of input ``name`` (the ``i``-th), checked
    against the model's inputs; shared by every OIP transport (JSON, binary, gRPC)."""
    if name not in allowed:
        raise _error(f"unknown input tensor {name!r}; this model takes {', '.join(allowed)}", "inputs", i)
    if not isinstance(dtname, str) or dtname not in DATATYPES:  # a list or object is unhashable
        raise _error(f"input {name!r}: unknown datatype {dtname!r}", "inputs", i)
    if dtname not in allowed[name]:
        raise _error(f"input {name!r}: datatype {dtname} is not accepted (use {', '.join(allowed[name])})", "inputs", i)
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape)):
        raise _error(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}", "inputs", i)
    return dtname, shape, math.prod(shape), DATATYPES[dtname]


def _json_tensor(name: str, data: Any, shape: list[int], dtname: str, dtype: np.dtype, count: int) -> np.ndarray:
    if isinstance(data, Numbers):  # read by the fast path: what np.array(data) makes of the list
        return _typed(name, data.values, shape, dtname, dtype, count)
    if not isinstance(data, list):  # the protocol's tensor data is an array, even of one value
        raise _error(f"input {name!r}: data must be a (flat or nested) list, got {type(data).__name__}")
    try:
        arr = np.array(data)
    except (ValueError, TypeError):
        raise _error(f"input {name!r}: data must be a flat (row-major) or nested list of numbers") from None
    if dtype.kind in "iu" and arr.dtype.kind in "fO":  # fractions, or integers beyond int64
        arr = _integers(name, data, dtname, dtype)
    if arr.dtype.kind not in "fiub":
        if dtname in FLOAT_TYPES and arr.dtype.kind in "OU":  # non-finite numbers written as strings
            flat = _flatten(data)  # from the list: NumPy turned its numbers into strings
            bad = next((j for j, v in enumerate(flat) if not (isinstance(v, (int, float)) or (isinstance(v, str) and v in NONFINITE))), None)
            if bad is not None:
                raise _error(f"input {name!r}: data[{bad}] = {flat[bad]!r} is not a number")
            try:
                arr = np.array([NONFINITE.get(v, v) if isinstance(v, str) else v for v in flat], dtype=dtype)
            except OverflowError:
                raise _error(f"input {name!r}: data holds an integer beyond the {dtname} range") from None
        else:
            raise _error(f"input {name!r}: data must hold numbers ({dtname})")
    return _typed(name, arr, shape, dtname, dtype, count)


def _typed(name: str, arr: np.ndarray, shape: list[int], dtname: str, dtype: np.dtype, count: int) -> np.ndarray:
    """The numbers of a tensor's data in its datatype and shape: FP32 rounded (an
    overflow named), integers checked against the datatype's range."""
    if arr.size != count:
        raise _error(f"input {name!r}: data has {arr.size} elements, shape {shape} needs {count}")
    if dtname == "FP32" and arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        narrow, j = float32_values(arr)
        if j is not None:
            raise _error(f"input {name!r}: data[{j}] = {float(arr.reshape(-1)[j])!r} is beyond the FP32 range")
        arr = narrow
    if dtname == "BOOL" and arr.dtype.kind != "b":
        raise _error(f"input {name!r}: BOOL data must be true/false")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)  # astype would wrap 300 to 44 in INT8 without a word
        if arr.min() < info.min or arr.max() > info.max:
            j = int(np.flatnonzero(((arr < info.min) | (arr > info.max)).reshape(-1))[0])
            raise _out_of_range(name, j, arr.reshape(-1)[j].item(), dtname, info)
    return oip_binary.reshape(name, arr.astype(dtype, copy=False), shape)


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
        raise _error(f"input {name!r}: {dtname} data must be integers, got data[{bad}] = {flat[bad]!r}")
    return np.array(flat, dtype=dtype)


def _out_of_range(name: str, j: int, v: int, dtname: str, info: np.iinfo) -> RequestError:
    return _error(f"input {name!r}: data[{j}] = {v} is outside the {dtname} range [{info.min}, {info.max}]")


def _flatten(data: list) -> list:
    out: list = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def encode_response(resp: InferResponse, binary: dict[str, bool], parameters: dict[str, Any] | None = None,
                    shm: Registry | None = None, shm_outputs: Mapping[str, tuple[str, int, int, int]] = {}
                    ) -> tuple[bytes, dict[str, str]]:
    """Body and headers: JSON outputs inline; binary ones appended after the JSON header
    (``oip_binary``); those in ``shm_outputs`` written to their shared memory region."""
    outs = []
    blobs: list[bytes] = []
    for name, arr in resp.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        span = shm_outputs.get(name)
        if span is not None and shm is not None:
            data = oip_binary.output_array(arr)
            shm.write(name, span, data)
            entry["parameters"] = {"shared_memory_region": span[0], "shared_memory_byte_size": data.nbytes,
                                   **({"shared_memory_offset": span[3]} if span[3] else {})}
        elif binary.get(name):
            data = oip_binary.output_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        elif arr.dtype.kind == "O":  # BYTES as JSON: base64 text
            entry["parameters"] = {"content_type": fields.SUMMARY_CONTENT_TYPE}
            entry["data"] = [base64.b64encode(b).decode("ascii") for b in arr.reshape(-1).tolist()]
        else:
            entry["data"] = _json_data(arr)
        outs.append(entry)
    head: dict[str, Any] = {"model_name": resp.model_name, "model_version": "1"}
    if resp.id is not None:
        head["id"] = resp.id
    if parameters:
        head["parameters"] = parameters
    head["outputs"] = outs
    return oip_binary.frame(orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY), blobs)


def _json_data(arr: np.ndarray):
    flat = arr.reshape(-1)
    if flat.dtype.kind == "f":
        # one value (loss, the statistics): a Python check costs less than a ufunc's
        finite = math.isfinite(flat[0]) if flat.size == 1 else np.isfinite(flat).all()
        if not finite:
            return nonfinite_as_text(flat)
    return flat  # orjson writes it from the buffer


# ------------------------------------------------------------------------------ codec

# Parameters of the protocol itself (and of tritonclient) that are not loss options.
PROTOCOL_PARAMS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start",
                             "sequence_end", "headers"})
# Every option each model takes as a request parameter.
MODEL_OPTIONS = {
    "loss": frozenset(fields.PREDICTIONS_OPTIONS),
    "grad": frozenset({*fields.PREDICTIONS_OPTIONS, "wrt", *fields.PARAMS_OPTIONS}),
}
ALLOWED_INPUTS = {model: {t.name: t.datatypes for t in tensors} for model, tensors in fields.OIP_INPUTS.items()}
OUTPUT_NAMES = {model: tuple(name for name, _, _ in outs) for model, outs in fields.OIP_OUTPUTS.items()}


@dataclass(frozen=True, slots=True)
class InferContext:
    """What the answer needs besides the result: the model, the request id, the outputs
    asked for and which of them go as binary."""
    model: str
    id: str | None
    outputs: tuple[tuple[str, bool | None], ...] | None
    binary_output: bool
    shm: Registry | None = None
    shm_outputs: Mapping[str, tuple[str, int, int, int]] = field(default_factory=dict)


class OipCodec:
    """``POST /v2/models/{loss,grad}/infer``: JSON tensors, binary tensors
    (``oip_binary``), or both in one body."""

    name = "oip"

    def decode(self, body: bytes | memoryview, op: str, headers: Mapping[str, str] | None = None,
               limits: BodyLimits = BodyLimits()) -> Decoded:
        header_length = None if headers is None else headers.get(HEADER_LENGTH)
        return decoded_of(op, decode_request(body, header_length, ALLOWED_INPUTS[op], limits.max_json_depth,
                                             limits.shm))

    def encode(self, decoded: Decoded, result: Result) -> tuple[bytes, dict[str, str]]:
        ctx: InferContext = decoded.context
        outputs = selected_outputs(ctx, result)
        asked = ctx.outputs or [(name, None) for name, _ in outputs]
        binary = {name: (ctx.binary_output if flag is None else flag) for name, flag in asked}
        return encode_response(InferResponse(ctx.model, ctx.id, outputs), binary, None, ctx.shm, ctx.shm_outputs)


def decoded_of(op: str, req: InferRequest) -> Decoded:
    """An infer request of model ``op`` as the request model: parameters are options,
    ``pos_weight`` and ``intercept`` may come as tensors (every OIP transport)."""
    data = _options(op, req.parameters)
    inputs = req.inputs
    if "pos_weight" in inputs:  # per-column weights travel as a tensor: taken as it is
        if "pos_weight" in data:
            raise _error("pos_weight is given both as a parameter and as an input tensor", "parameters",
                         "pos_weight")
        pw = inputs.pop("pos_weight")
        data["pos_weight"] = pw.reshape(-1) if pw.ndim else float(pw)
    if "intercept" in inputs:
        if "intercept" in data:
            raise _error("intercept is given both as a parameter and as an input tensor", "parameters",
                         "intercept")
        data["intercept"] = _tensor_scalar("intercept", inputs.pop("intercept"))
    data.update(inputs)
    request = build(op, data, _as_is)
    ctx = InferContext(op, req.id, None if req.outputs is None else tuple(req.outputs), req.binary_output,
                       req.shm, req.shm_outputs)
    return Decoded(request, ctx)


def selected_outputs(ctx: InferContext, result: Result) -> list[tuple[str, np.ndarray]]:
    """The outputs of ``result`` the request asked for (all when it named none)."""
    outputs = outputs_of(result)
    if ctx.outputs is not None:
        outputs = _select(ctx.model, outputs, [name for name, _ in ctx.outputs])
    return outputs


def _as_is(name: str, value: np.ndarray) -> np.ndarray:
    return value  # decoded in the tensor's own datatype: the kernels take it as it is


def _options(model: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Request parameters → the contract's options (same names as the JSON fields)."""
    out: dict[str, Any] = {}
    known = MODEL_OPTIONS[model]
    for key, value in parameters.items():
        if key in PROTOCOL_PARAMS:
            continue
        if key not in known:
            raise _error(f"unknown parameter {key!r} for model {model!r}", "parameters", key)
        if key == "quantiles" and isinstance(value, str):  # parameters are scalars in OIP
            try:
                value = [float(q) for q in value.split(",") if q.strip()]
            except ValueError:
                raise _error(f"parameter quantiles = {value!r} is not a comma-separated list of numbers",
                             "parameters", key) from None
        out[key] = value
    return out


def _tensor_scalar(name: str, arr: np.ndarray) -> float:
    if arr.size != 1:
        raise _error(f"input {name!r} must hold one value, got shape {list(arr.shape)}", name)
    return float(arr.reshape(-1)[0])


def outputs_of(result: Result) -> list[tuple[str, np.ndarray]]:
    """A kernel result as OIP outputs: loss, losses, grad (or coef_grad and
    intercept_grad), then the statistics in the kernels' order."""
    if isinstance(result, ParamGrad):
        return [("loss", np.array([result.loss], dtype=np.float64)),
                ("coef_grad", np.asarray(result.coef, dtype=np.float64)),
                ("intercept_grad", np.array([result.intercept], dtype=np.float64))]
    out: list[tuple[str, np.ndarray]] = []
    if result.loss is not None:
        out.append(("loss", np.array([result.loss], dtype=np.float64)))
    if result.losses is not None:
        out.append(("losses", result.losses))
    g = getattr(result, "grad", None)
    if g is not None:
        out.append(("grad", g))
    for key, value in (result.stats or {}).items():
        out.append((key, np.array([value], dtype=np.float64)))
    if result.summary is not None:
        blob = np.empty(1, dtype=object)
        blob[0] = result.summary.to_bytes()
        out.append(("summary", blob))
    return out


def _select(model: str, outputs: list[tuple[str, np.ndarray]], names: list[str]):
    have = dict(outputs)
    known = OUTPUT_NAMES[model]
    picked = []
    for name in names:
        if name in have:
            picked.append((name, have[name]))
        elif name in known or (name.startswith("p") and name[1:].replace(".", "", 1).isdigit()):
            raise _error(f"output {name!r} is not produced by this request "
                         f"(it produces {', '.join(have)})", "outputs")
        else:
            raise _error(f"unknown output {name!r}; model {model!r} has {', '.join(known)} "
                         "and pNN quantiles", "outputs")
    return picked


CODEC = OipCodec()
