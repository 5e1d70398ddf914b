"""Every name the service's contract is made of, in one place: the array fields of each
operation with their OIP datatypes and shapes, the options with their defaults, the
outputs. The names are the kernels' keywords, the JSON fields and the OIP tensors and
parameters alike.

``schemas.py`` (pydantic, OpenAPI), the codecs, the OIP model metadata and ``compute``
read them from here; the Python client keeps a mirror of its own (it must not import
the service), and ``tests/test_fields.py`` checks that the two agree.
Plain data only: importing this costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# ------------------------------------------------------------------------ datatypes

FLOAT_TYPES = ("FP32", "FP64")
LABEL_TYPES = ("FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")
# the order datatypes are listed in OIP metadata: the one to send first
PREFERRED_TYPES = ("FP64", "FP32", "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


@dataclass(frozen=True, slots=True)
class Tensor:
    """An input array: its name, the OIP datatypes it accepts and its shape in the OIP
    model metadata (-1: any length)."""
    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...]


# ---------------------------------------------------------------------- arrays

# The arrays of each request, in the order they are decoded and checked.
PREDICTIONS_ARRAYS = ("predictions", "labels", "sample_weight")  # /loss, /grad wrt predictions
PARAMS_ARRAYS = ("features", "labels", "coef", "sample_weight")  # /grad wrt params
REQUIRED_ARRAYS = frozenset({"predictions", "labels", "features", "coef"})
# Fields of a JSON body that hold number arrays (the codec converts them, not pydantic).
ARRAY_FIELDS = frozenset(PREDICTIONS_ARRAYS + PARAMS_ARRAYS)

# OIP input tensors of each model: the arrays, plus the options that may travel as
# tensors (per-column pos_weight; intercept).
_PREDICTIONS_TENSORS = (Tensor("predictions", FLOAT_TYPES, (-1, -1)), Tensor("labels", LABEL_TYPES, (-1, -1)),
                        Tensor("sample_weight", FLOAT_TYPES, (-1,)), Tensor("pos_weight", FLOAT_TYPES, (-1,)))
OIP_INPUTS: MappingProxyType[str, tuple[Tensor, ...]] = MappingProxyType({
    "loss": _PREDICTIONS_TENSORS,
    "grad": (*_PREDICTIONS_TENSORS, Tensor("features", FLOAT_TYPES, (-1, -1)), Tensor("coef", FLOAT_TYPES, (-1,)),
             Tensor("intercept", FLOAT_TYPES, (-1,))),
})
TENSOR_OPTIONS = ("pos_weight", "intercept")  # options that may come as an OIP input tensor

# ---------------------------------------------------------------------- options

# Scalar options of /loss and /grad wrt predictions: the kernels' keywords and defaults.
PREDICTIONS_OPTIONS = MappingProxyType({
    "input": "logits", "loss": "cross_entropy", "reduction": "mean", "pos_weight": None,
    "label_smoothing": 0.0, "eps": None, "gamma": 2.0, "alpha": None, "quantiles": (),
    "dtype": "float64", "summary": False,
})
# Scalar options of /grad wrt params (``logreg_grad``'s keywords and defaults).
PARAMS_OPTIONS = MappingProxyType({"intercept": 0.0, "l2": 0.0})
WRT = ("predictions", "params")  # /grad's ``wrt``; the first is the default
OPERATIONS = ("loss", "grad")  # the JSON routes /loss, /grad and the OIP models of those names

# ---------------------------------------------------------------------- outputs

STATS = ("count", "sum", "mean", "std", "min", "max")  # then one pNN per quantile asked
_ARRAY_OUT = {"datatypes": "FP64,FP32"}  # FP32 with the option dtype = float32
_SUMMARY_OUT = {"content_type": "base64"}  # with JSON data (see OUTPUT_DATATYPES)
# OIP outputs of each model: (name, metadata shape, metadata parameters)
OIP_OUTPUTS: MappingProxyType[str, tuple[tuple[str, tuple[int, ...], dict], ...]] = MappingProxyType({
    "loss": (("loss", (1,), {}), ("losses", (-1, -1), _ARRAY_OUT), *((s, (1,), {}) for s in STATS),
             ("summary", (1,), _SUMMARY_OUT)),
    "grad": (("loss", (1,), {}), ("losses", (-1, -1), _ARRAY_OUT), ("grad", (-1, -1), _ARRAY_OUT),
             ("coef_grad", (-1,), {}), ("intercept_grad", (1,), {}), *((s, (1,), {}) for s in STATS),
             ("summary", (1,), _SUMMARY_OUT)),
})
# An output's OIP datatype when not FP64. ``summary`` (the option summary = true): one
# BYTES element, LossSummary.to_bytes(); as JSON data it is base64 text (MLServer's
# "base64" content type), as binary data or over gRPC the bytes themselves.
OUTPUT_DATATYPES = MappingProxyType({"summary": "BYTES"})
SUMMARY_CONTENT_TYPE = "base64"
