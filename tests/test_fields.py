"""The contract's names and defaults (service/fields.py) agree with everything that
spells them on its own: the kernels' signatures, the pydantic models (OpenAPI), the OIP
model metadata, and the Python client's mirror (it must not import the service)."""

from __future__ import annotations

import inspect

import pytest

from lossd import kernels
from lossd.service import fields
from lossd.service.codecs import oip_binary, oip_json
from lossd.service.requests import DEFAULT_OPTIONS, Options, ParamsRequest, PredictionsRequest
from lossd.service.schemas import GradRequest, LossOptions, LossRequest, ParamsGradRequest, ParamsOptions

import lossd_client
from lossd_client import _calls as client_calls
from lossd_client import _codec as client_codec


def _defaults(fn, skip=()) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and name not in skip}


def _pydantic_defaults(model) -> dict:
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()}


@pytest.mark.parametrize("fn", [kernels.loss, kernels.grad])
def test_the_kernels_take_the_options_with_their_defaults(fn):
    got = _defaults(fn, skip={"sample_weight"})
    assert got == dict(fields.PREDICTIONS_OPTIONS)
    assert list(got) == [k for k in inspect.signature(fn).parameters if k in got]


def test_logreg_grad_takes_the_params_options():
    assert _defaults(kernels.logreg_grad, skip={"sample_weight"}) == dict(fields.PARAMS_OPTIONS)
    assert [k for k in inspect.signature(kernels.logreg_grad).parameters if k not in fields.PARAMS_OPTIONS] \
        == ["features", "labels", "coef", "sample_weight"]


def test_the_pydantic_models_have_the_same_names_and_defaults():
    loss = _pydantic_defaults(LossOptions)
    assert set(loss) == set(fields.PREDICTIONS_OPTIONS)
    assert {k: (tuple(v) if isinstance(v, list) else v) for k, v in loss.items()} == dict(fields.PREDICTIONS_OPTIONS)
    assert set(ParamsOptions.model_fields) == {"wrt", *fields.PARAMS_OPTIONS}
    params = _pydantic_defaults(ParamsOptions)
    assert {k: params[k] for k in fields.PARAMS_OPTIONS} == dict(fields.PARAMS_OPTIONS)
    assert set(LossRequest.model_fields) == set(fields.PREDICTIONS_OPTIONS) | set(fields.PREDICTIONS_ARRAYS)
    assert set(GradRequest.model_fields) == set(LossRequest.model_fields) | {"wrt"}
    assert set(ParamsGradRequest.model_fields) == {"wrt", *fields.PARAMS_OPTIONS, *fields.PARAMS_ARRAYS}
    assert fields.ARRAY_FIELDS == set(fields.PREDICTIONS_ARRAYS) | set(fields.PARAMS_ARRAYS)


def test_the_request_model_uses_the_same_names():
    assert Options.__slots__ == tuple(fields.PREDICTIONS_OPTIONS)
    assert {k: getattr(DEFAULT_OPTIONS, k) for k in fields.PREDICTIONS_OPTIONS} == dict(fields.PREDICTIONS_OPTIONS)
    assert PredictionsRequest.__slots__ == ("op", *fields.PREDICTIONS_ARRAYS, "options")
    assert ParamsRequest.__slots__ == (*fields.PARAMS_ARRAYS, *fields.PARAMS_OPTIONS)


def test_the_oip_models_take_the_fields_inputs_and_options():
    assert set(fields.OIP_INPUTS) == set(fields.OPERATIONS) == set(oip_json.ALLOWED_INPUTS)
    for model, tensors in fields.OIP_INPUTS.items():
        for t in tensors:
            assert set(t.datatypes) <= set(oip_binary.DATATYPES)
            assert set(t.datatypes) <= set(fields.PREFERRED_TYPES)
    assert oip_json.MODEL_OPTIONS["loss"] == set(fields.PREDICTIONS_OPTIONS)
    assert oip_json.MODEL_OPTIONS["grad"] == {*fields.PREDICTIONS_OPTIONS, *fields.PARAMS_OPTIONS, "wrt"}


# ------------------------------------------------------------------- the client's mirror

def test_the_clients_defaults_are_the_services():
    assert client_calls.LOSS_DEFAULTS == dict(fields.PREDICTIONS_OPTIONS)
    assert client_calls.PARAMS_DEFAULTS == dict(fields.PARAMS_OPTIONS)


def test_the_clients_input_names_are_the_services():
    assert client_calls.INPUTS == {model: tuple(t.name for t in tensors) for model, tensors in fields.OIP_INPUTS.items()}


@pytest.mark.parametrize("cls", [lossd_client.Client, lossd_client.AsyncClient])
def test_the_clients_methods_have_the_services_names_and_defaults(cls):
    for name in ("loss", "grad"):
        got = _defaults(getattr(cls, name), skip={"sample_weight"})
        assert got == dict(fields.PREDICTIONS_OPTIONS), f"{cls.__name__}.{name}"
    got = _defaults(cls.logreg_grad, skip={"sample_weight"})
    assert got == dict(fields.PARAMS_OPTIONS)
    assert [k for k in inspect.signature(cls.logreg_grad).parameters if k != "self" and k not in fields.PARAMS_OPTIONS] \
        == ["features", "labels", "coef", "sample_weight"]


def test_the_clients_datatypes_are_the_services():
    assert set(client_codec._DATATYPES.values()) == set(oip_binary.DATATYPES)
    for dtype, name in client_codec._DATATYPES.items():
        assert oip_binary.DATATYPES[name] == dtype
