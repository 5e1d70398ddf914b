"""Pydantic models of the JSON API.

The option models validate every scalar option of a request (types, bounds, unknown
fields). The array fields are listed in the request models for ``/openapi.json`` and
``/docs`` but are converted by the codec, never by pydantic: a 10^5-element list through
pydantic costs more than the whole compute.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from .fields import PARAMS_OPTIONS, PREDICTIONS_OPTIONS, WRT

_D = PREDICTIONS_OPTIONS  # names and defaults: fields.py

Input = Literal["logits", "probabilities", "margins"]
LossName = Literal["cross_entropy", "focal", "hinge", "squared_hinge", "modified_huber",
                   "exponential", "zero_one", "squared_error"]
Reduction = Literal["mean", "sum", "none"]


def _bounded(**bounds: float) -> object:
    """A number whose range the schema documents but the kernels check, so that a value
    out of range gets the kernels' message (``alpha = 1.5 is outside [0, 1]``) on every
    transport and in the Python API alike."""
    return Annotated[float, WithJsonSchema({"type": "number", **bounds})]


Unit = _bounded(minimum=0.0, maximum=1.0)
# JSON has no infinities: requests and responses spell them as strings
Number = float | Literal["Infinity", "-Infinity"]
Vector = list[Number]
Matrix = list[list[Number]]
FiniteVector = list[float]
FiniteMatrix = list[list[float]]

_STRICT = ConfigDict(extra="forbid", strict=True)
# pos_weight may spell non-finite values as the arrays do; the kernels then refuse them
# with their own message (``pos_weight[1] is NaN``)
_NonFinite = Literal["Infinity", "-Infinity", "+Infinity", "NaN"]
_NONFINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "+Infinity": math.inf, "NaN": math.nan}


class LossOptions(BaseModel):
    """Scalar options of /loss and of /grad with ``wrt: predictions``."""

    model_config = _STRICT

    input: Input = Field(_D["input"], description="What `predictions` hold: logits s, probabilities "
                         "p = σ(s) in [0, 1], or margins s with labels in {-1, +1}.")
    loss: LossName = Field(_D["loss"], description="Loss of the margin m = y'·s (y' = 2y - 1 "
                           "for {0, 1} labels). Only cross_entropy, focal and squared_error accept "
                           "probabilities.")
    reduction: Reduction = Field(_D["reduction"], description="mean = Σ w·l / Σ w over all N·K elements; "
                                 "sum = Σ w·l; none = the per-element (weighted) losses.")
    pos_weight: float | _NonFinite | list[float | _NonFinite] | None = Field(
        _D["pos_weight"], description="Weight of the positive term (PyTorch semantics): a scalar, or one per "
        "column for N×K input. cross_entropy only.", examples=[2.0])
    label_smoothing: _bounded(minimum=0.0, exclusiveMaximum=1.0) = Field(_D["label_smoothing"], description="y ← y(1 - ls) + ls/2 "
                                   "(Keras). {0, 1}-label forms only.")
    eps: _bounded(exclusiveMinimum=0.0, exclusiveMaximum=0.5) | None = Field(_D["eps"], description="probabilities only. null: each "
                              "log term is floored at -100 (PyTorch); a number: p is clipped to "
                              "[eps, 1 - eps] (scikit-learn).")
    gamma: _bounded(minimum=0.0) = Field(_D["gamma"], description="Focusing parameter of the focal loss.")
    alpha: _bounded(minimum=0.0, maximum=1.0) | None = Field(_D["alpha"], description="Class balance of the focal "
                                "loss: α for positives, 1 - α for negatives.")
    quantiles: list[Unit] = Field(default_factory=lambda: list(_D["quantiles"]), max_length=1000, description="Quantiles "
                                  "of the per-element losses to add to `stats` as p50-style keys.",
                                  examples=[[0.5, 0.99]])
    dtype: Literal["float64", "float32"] = Field(
        _D["dtype"], description="float32: predictions, labels and sample_weight are float32 values "
        "(each number rounded to the nearest float32; a finite one beyond the float32 range is a 422 "
        "naming field and index) and losses/grad are returned as float32. The kernels compute in "
        "float64 either way; every path and transport gives the same bits.")
    summary: bool = Field(_D["summary"], description="true: the response adds `summary`, the mergeable state "
                          "of the per-element losses (count, double-double Σl, Σw·l and Σw, M2, min, max, "
                          "number of infinite losses, a KLL quantile sketch): merge the states of requests "
                          "that shard one evaluation (lossd_client.LossSummary). Over OIP a BYTES output "
                          "`summary` (LossSummary.to_bytes). No group-by over the service.")


    @field_validator("pos_weight")
    @classmethod
    def _pos_weight_numbers(cls, v):
        if isinstance(v, str):
            return _NONFINITE[v]
        if isinstance(v, list):
            return [_NONFINITE[x] if isinstance(x, str) else x for x in v]
        return v

class LossRequest(LossOptions):
    """Body of POST /loss."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"predictions": [2.0, -1.0, 37.0, "-Infinity"], "labels": [1, 0, 1, 0]},
        {"predictions": [[0.9, 0.2], [0.1, 0.7]], "labels": [[1, 0], [0, 1]],
         "input": "probabilities", "reduction": "none"},
    ]})

    predictions: Vector | Matrix = Field(..., description="N or N×K numbers; ±inf as "
                                         "\"Infinity\"/\"-Infinity\" (or the bare tokens).")
    labels: Vector | Matrix = Field(..., description="Same shape as predictions: {0, 1} (soft "
                                    "labels in [0, 1] for cross_entropy/focal/squared_error), "
                                    "{-1, +1} for margins.")
    sample_weight: FiniteVector | None = Field(None, description="One non-negative weight per row.")


class GradOptions(LossOptions):
    wrt: Literal["predictions"] = Field(WRT[0], description="Gradient w.r.t. the predictions.")


class GradRequest(LossRequest):
    """Body of POST /grad for d(loss)/d(predictions)."""

    wrt: Literal["predictions"] = Field(WRT[0], description="Gradient w.r.t. the predictions.")


class ParamsOptions(BaseModel):
    """Scalar options of /grad with ``wrt: params`` (a logistic model)."""

    model_config = _STRICT

    wrt: Literal["params"]
    intercept: float = Field(PARAMS_OPTIONS["intercept"], description="Bias b of z = X·coef + b.")
    l2: _bounded(minimum=0.0) = Field(PARAMS_OPTIONS["l2"], description="Adds (l2/2)·‖coef‖² to the loss and l2·coef to "
                      "its gradient; the intercept is not penalised.")


class ParamsGradRequest(ParamsOptions):
    """Body of POST /grad for the gradient of the mean logistic loss w.r.t. coef and intercept."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"wrt": "params", "features": [[0.5, 1.0], [-1.5, 2.0], [0.0, -1.0]],
         "labels": [1, 0, 1], "coef": [0.1, -0.2], "intercept": 0.0}]})

    features: FiniteMatrix = Field(..., description="N×D feature matrix X.")
    labels: FiniteVector = Field(..., description="N labels in {0, 1}.")
    coef: FiniteVector = Field(..., description="D weights w.")
    sample_weight: FiniteVector | None = Field(None, description="One non-negative weight per row "
                                         "(the mean becomes Σw-weighted).")


# ----------------------------------------------------------------------------- responses

Float = float | Literal["Infinity", "-Infinity", "NaN"]


class Stats(BaseModel):
    """Statistics of the per-element losses as computed, before sample weights."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "description": "count, sum, mean, std (population), min, max of the per-element "
                       "losses, plus one `pNN` key per requested quantile."})

    count: int
    sum: Float
    mean: Float
    std: Float
    min: Float
    max: Float


class SummaryState(BaseModel):
    """LossSummary.to_dict(): exact floats (±inf as strings), sums as double-doubles."""

    version: int
    count: int
    inf_count: int
    sum: list[Number] = Field(description="Σ l as [hi, lo], hi + lo within 1 ulp of the exact sum.")
    weighted_sum: list[Number] = Field(description="Σ w·l as [hi, lo].")
    weight_sum: list[Number] = Field(description="Σ w as [hi, lo] (a row's weight once per column).")
    m2: Number = Field(description="Σ (l - mean)², merged by Chan's formula.")
    min: Number
    max: Number
    sketch: str = Field(description="base64 of the Apache DataSketches KLL sketch (k = 200).")


class LossResponse(BaseModel):
    loss: Float | None = Field(description="The reduced loss; null for reduction none.")
    losses: Vector | Matrix | None = Field(description="Per-element losses for reduction none.")
    stats: Stats
    input: Input
    loss_type: LossName
    reduction: Reduction
    summary: SummaryState | None = Field(None, description="Only with summary = true.")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "loss": 0.3133, "losses": None, "stats": {"count": 4, "sum": 1.25, "mean": 0.31,
                                                  "std": 0.2, "min": 0.01, "max": 0.7},
        "input": "logits", "loss_type": "cross_entropy", "reduction": "mean"}]})


class GradResponse(LossResponse):
    grad: Vector | Matrix = Field(description="d(reduced loss)/d(predictions), the predictions' shape.")


class ParamsGrad(BaseModel):
    # an l2·coef beyond the float range is ±inf: written as the strings, like every result
    coef: Vector = Field(description="d(loss)/d(coef); \"Infinity\"/\"-Infinity\" beyond the float range.")
    intercept: float = Field(description="d(loss)/d(intercept), in [-1, 1].")


class ParamsGradResponse(BaseModel):
    loss: Number = Field(description="Mean logistic loss (+ the l2 term; \"Infinity\" when that is "
                         "beyond the float range).")
    grad: ParamsGrad


class ErrorItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]


class ErrorBody(BaseModel):
    detail: str
