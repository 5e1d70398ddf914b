"""Pydantic models of the Open Inference Protocol v2 bodies, for ``/openapi.json`` and
``/docs`` only: the codec (codecs/oip_json.py) reads requests by hand, binary tensors
included, and writes its own exact error messages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP32", "FP64", "BYTES"]  # BYTES: the summary output only
# OIP parameters are scalars; lists (quantiles, accepted datatypes) are comma-separated
Parameters = dict[str, str | int | float | bool]
# a request's options may also be a list (quantiles, pos_weight) or null (the default),
# as in the JSON API
RequestParameters = dict[str, str | int | float | bool | list[float] | None]


class TensorParameters(BaseModel):
    # other parameters (e.g. MLServer's content_type) are allowed and ignored
    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(None, ge=0, description="The tensor's bytes after the JSON "
                                         "header, row-major, little-endian (binary tensor data extension).")


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(None, description="true: the output as raw bytes after the JSON header.")


class RequestInput(BaseModel):
    """An input tensor: JSON ``data``, or ``parameters.binary_data_size`` bytes after the
    JSON header (binary tensor data extension)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="predictions, labels, sample_weight, pos_weight; for grad with "
                      "wrt = params: features, labels, coef, intercept, sample_weight.")
    datatype: Datatype = Field(description="FP32 or FP64; labels also INT8…INT64, UINT8…UINT64, BOOL.")
    shape: list[int] = Field(description="N or N×K (features N×D; coef D; intercept 1).")
    parameters: TensorParameters | None = None
    data: list | None = Field(None, description="Row-major values, flat or nested; ±inf as the "
                              "strings \"Infinity\"/\"-Infinity\". Absent for a binary tensor.")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="loss, losses, grad, coef_grad, intercept_grad, count, sum, mean, "
                      "std, min, max, or a pNN quantile.")
    parameters: OutputParameters | None = None


class InferenceRequest(BaseModel):
    """The JSON header of an infer request (the whole body without binary tensors)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "inputs": [{"name": "predictions", "datatype": "FP64", "shape": [3], "data": [2.0, -1.0, "-Infinity"]},
                   {"name": "labels", "datatype": "INT8", "shape": [3], "data": [1, 0, 0]}],
        "parameters": {"reduction": "none", "quantiles": "0.5,0.99"}}]})

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: RequestParameters | None = Field(None, description="The options, named as the JSON API's "
                                          "fields (input, loss, reduction, pos_weight, label_smoothing, "
                                          "eps, gamma, alpha, quantiles as \"0.5,0.99\", dtype, wrt, "
                                          "intercept, l2), and binary_data_output.")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="Outputs to return (default: all "
                                                "that the request produces).")


class ResponseOutput(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    parameters: Parameters | None = Field(None, description="binary_data_size for a binary output; "
                                          "content_type = base64 for the BYTES output summary as JSON data.")
    data: list | None = Field(None, description="Row-major values; ±inf and NaN as strings; BYTES as base64 text.")


class InferenceResponse(BaseModel):
    """The JSON header of an infer response (binary outputs follow it; its length is in
    the Inference-Header-Content-Length response header)."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype = Field(description="The datatype to send (inputs) or the usual one (outputs).")
    shape: list[int] = Field(description="-1 for a variable dimension.")
    parameters: Parameters | None = Field(None, description="datatypes: every datatype accepted "
                                          "(inputs) or returned (outputs), comma-separated.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipErrorBody(BaseModel):
    """Every OIP error: 400 for a malformed request, 404 for an unknown model or version
    (also 401, 413, 503 from the front door under /v2)."""

    error: str
