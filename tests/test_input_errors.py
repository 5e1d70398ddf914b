"""InputError from loss, grad and logreg_grad: the argument, the element's index (a
tuple) and the reason, the message derived from the three, and pickling (the service's
large lane sends errors between processes)."""

from __future__ import annotations

import ast
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from lossd import kernels
from lossd.kernels import InputError

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
NAN, INF = math.nan, math.inf
Z3 = np.zeros(3)

CASES = [
    # (id, call, argument, index, reason)
    ("label 2 at a 2-D position",
     lambda: kernels.loss(np.zeros((4, 2)), np.array([[0, 1], [1, 0], [0, 0], [1, 2.0]]), loss="hinge"),
     "labels", (3, 1), "= 2 is not in {0, 1}"),
    ("soft label outside [0, 1], grad",
     lambda: kernels.grad(np.zeros((2, 2)), np.array([[0.5, 0.5], [-0.5, 1.0]])),
     "labels", (1, 0), "= -0.5 is outside [0, 1]"),
    ("margins label 0",
     lambda: kernels.loss(Z3, np.array([1.0, -1.0, 0.0]), input="margins"),
     "labels", (2,), "= 0 is not in {-1, 1}"),
    ("NaN prediction",
     lambda: kernels.grad(np.array([0.0, NAN]), np.array([0.0, 1.0])),
     "predictions", (1,), "is NaN"),
    ("probability 1.5",
     lambda: kernels.loss(np.array([[0.5, 0.2], [1.5, 0.0]]), np.zeros((2, 2)), input="probabilities"),
     "predictions", (1, 0), '= 1.5 is outside [0, 1] (input = "probabilities")'),
    ("negative sample_weight",
     lambda: kernels.loss(Z3, Z3, sample_weight=[1.0, -1.0, 1.0]),
     "sample_weight", (1,), "= -1 is not a finite weight >= 0"),
    ("pos_weight NaN in column 1",
     lambda: kernels.grad(np.zeros((2, 3)), np.zeros((2, 3)), pos_weight=[1.0, NAN, 1.0]),
     "pos_weight", (1,), "is NaN"),
    ("quantile 1.5",
     lambda: kernels.loss(Z3, Z3, quantiles=[0.5, 1.5]),
     "quantiles", (1,), "= 1.5 is outside [0, 1]"),
    ("shape mismatch",
     lambda: kernels.loss(Z3, np.zeros(4)),
     "predictions", (), "has 3 rows, labels 4"),
    ("empty",
     lambda: kernels.grad(np.zeros(0), np.zeros(0)),
     "predictions", (), "is empty (shape (0,)); N >= 1 is required"),
    ("unknown option",
     lambda: kernels.loss(Z3, Z3, reduction="max"),
     "reduction", (), "= 'max' is not one of 'mean', 'sum', 'none'"),
    ("eps too small",
     lambda: kernels.loss(Z3, Z3, input="probabilities", eps=1e-20),
     "eps", (), f"= 1e-20 is below 2^-53 = {2.0**-53!r}: 1 - eps would round to 1 and clip nothing near 1"),
    ("float32 overflow",
     lambda: kernels.loss(np.array([[1.0, 2.0], [3.0, -1e39]]), np.zeros((2, 2)), dtype="float32"),
     "predictions", (1, 1), '= -1e+39 is beyond the float32 range (dtype = "float32")'),
    ("non-finite feature",
     lambda: kernels.logreg_grad(np.array([[1.0, 2.0], [3.0, INF]]), np.array([0.0, 1.0]), np.zeros(2)),
     "features", (1, 1), "= inf is not finite"),
    ("coef inf",
     lambda: kernels.logreg_grad(np.ones((2, 3)), np.array([0.0, 1.0]), np.array([0.0, 0.0, INF])),
     "coef", (2,), "= inf is not finite"),
    ("logreg label 3",
     lambda: kernels.logreg_grad(np.ones((2, 3)), np.array([0.0, 3.0]), np.zeros(3)),
     "labels", (1,), "= 3 is not in {0, 1}"),
    ("logreg sample_weight NaN",
     lambda: kernels.logreg_grad(np.ones((2, 3)), np.array([0.0, 1.0]), np.zeros(3), sample_weight=[NAN, 1.0]),
     "sample_weight", (0,), "is NaN"),
]


@pytest.mark.parametrize("call,argument,index,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_input_error_fields_and_message(call, argument, index, reason):
    with pytest.raises(InputError) as info:
        call()
    exc = info.value
    assert isinstance(exc, ValueError)  # callers that catch ValueError keep working
    assert exc.argument == argument
    assert type(exc.index) is tuple and exc.index == index
    assert exc.reason == reason
    where = "[" + ", ".join(str(i) for i in index) + "]" if index else ""
    assert str(exc) == argument + where + " " + reason

    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is InputError
    assert (back.argument, back.index, back.reason, str(back)) == (exc.argument, exc.index, exc.reason, str(exc))


def test_message_without_argument():
    exc = InputError(None, "something is wrong")
    assert str(exc) == "something is wrong" and exc.index == ()
    assert str(pickle.loads(pickle.dumps(exc))) == "something is wrong"


def test_every_raise_in_kernels_is_an_input_or_kernel_error():
    """No bare ValueError left in the kernels: every ``raise`` builds an InputError or a
    KernelError, or re-raises one a helper built. Only _target.py (configuration of the
    CPU target from the environment, before any call) raises ValueError, and
    _summary_state.py: the LossSummary value's own API (decoding bytes and dicts, merging,
    immutability), no array argument of a kernel call; it is shipped verbatim to the client,
    which has no InputError, so it raises ValueError/TypeError."""
    allowed_calls = {"InputError", "KernelError", "_first_bad_logreg"}
    allowed_names = {"bad"}  # api._run: the InputError _first_bad returned
    found = []
    for path in sorted(KERNELS.glob("*.py")):
        if path.name in ("_target.py", "_summary_state.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc
            name = (exc.func.id if isinstance(exc, ast.Call) and isinstance(exc.func, ast.Name)
                    else exc.id if isinstance(exc, ast.Name) else ast.dump(exc))
            ok = name in allowed_calls if isinstance(exc, ast.Call) else name in allowed_names
            if not ok:
                found.append(f"{path.name}:{node.lineno} raise {name}")
    assert not found, found
