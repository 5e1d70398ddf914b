"""Client errors and their JSON bodies.

422 bodies keep FastAPI's shape, ``{"detail": [{"type", "loc", "msg"}]}``, so clients
that already read FastAPI validation errors read ours; ``loc`` names the field and the
index (``["body", "labels", 17]``) and ``msg`` says what is wrong in one sentence.
Other statuses carry ``{"detail": "<message>"}``. Under the Open Inference Protocol (paths
under /v2) every error is ``{"error": "<message>"}`` and a content error is 400: one error
type for both, rendered by the protocol that ``protocol.protocol_of`` decides.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lossd.kernels.errors import InputError

from .protocol import Protocol, error_body


class ApiError(Exception):
    """An HTTP error with a message for the client (never a traceback), rendered in the
    shape of the request's protocol (``protocol.protocol_of``)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers

    @property
    def message(self) -> str:
        """The detail as one line (a list of errors: their messages joined by "; ")."""
        return self.detail if isinstance(self.detail, str) else "; ".join(e["msg"] for e in self.detail)

    def render(self, protocol: Protocol) -> tuple[int, dict[str, Any]]:
        """Status and body: FastAPI's ``{"detail": ...}``, or OIP's ``{"error": "..."}``."""
        return self.status, error_body(protocol, self.message if protocol == "oip" else self.detail)

    def __reduce__(self):  # picklable as itself (the large lane sends errors back)
        return (type(self), (self.status, self.detail, self.headers))


class RequestError(ApiError):
    """The request is well-formed HTTP but its content is invalid: raised by every codec
    and by ``compute``. The JSON API answers 422 with FastAPI's shape,
    ``{"detail": [{"type", "loc", "msg"}]}``; the OIP answers 400, ``{"error": msg}``."""

    OIP_STATUS = 400

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, errors)

    def render(self, protocol: Protocol) -> tuple[int, dict[str, Any]]:
        if protocol == "oip":
            return self.OIP_STATUS, error_body(protocol, self.message)
        return self.status, error_body(protocol, self.detail)

    def __reduce__(self):
        return (RequestError, (self.detail,))

    @classmethod
    def at(cls, loc: tuple, msg: str, kind: str = "value_error") -> "RequestError":
        return cls([{"type": kind, "loc": ["body", *loc], "msg": msg}])

    @classmethod
    def invalid_json(cls, why: str) -> "RequestError":
        return cls([{"type": "json_invalid", "loc": ["body"], "msg": f"the body is not valid JSON: {why}"}])

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: tuple = ()) -> "RequestError":
        """One error, as the kernels raise one: the first field's. For a union-typed
        option (``pos_weight``: a number or an array) pydantic reports every branch,
        with the branch's name in ``loc``; only the branch that the input's kind selects
        is kept, and ``loc`` is the contract's ``[field, index]``."""
        e = _union_error(exc.errors(include_url=False, include_context=False))
        loc = [*prefix, *e["loc"]]
        field = _dotted(loc) or "body"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"{field} is not a field of this request"
        elif e["type"] == "missing":
            msg = f"{field} is required"
        else:
            msg = f"{field}: {msg[0].lower()}{msg[1:]}"
            if "input" in e and not isinstance(e["input"], (dict, list)):
                got = repr(e["input"])
                msg += f" (got {got if len(got) <= 40 else got[:37] + '...'})"
        return cls([{"type": e["type"], "loc": ["body", *loc], "msg": msg}])

    @classmethod
    def from_kernel(cls, exc: InputError) -> "RequestError":
        """``loc`` is the argument and the index the kernels' error carries."""
        loc = [] if exc.argument is None else [exc.argument, *exc.index]
        return cls([{"type": "value_error", "loc": ["body", *loc], "msg": str(exc)}])


# what each error type of a union's branch asks for, to name them all in one message
_WANTS = {"float_type": "a number", "list_type": "an array", "int_type": "an integer",
          "string_type": "a string", "bool_type": "a boolean"}


def _union_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The first field's errors as one error without branch names in ``loc``.

    The option models are flat (no nested models), so after the field name a string in
    ``loc`` can only be a union branch (``'float'``, ``'list[float]'``); integers are
    indices. An error with an index came from the branch that matched the input's kind
    (an array), so it wins; when no branch matched, one message names them all."""
    field = errors[0]["loc"][:1]
    mine = [e for e in errors if e["loc"][:1] == field]
    clean = [{**e, "loc": (*field, *(p for p in e["loc"][1:] if isinstance(p, int)))} for e in mine]
    branches = {p for e in mine for p in e["loc"][1:] if isinstance(p, str)}
    if not branches:
        return clean[0]
    indexed = [e for e in clean if len(e["loc"]) > 1]
    if indexed:
        return indexed[0]
    # the branch of the non-finite spellings ("Infinity", ...) is documented, not named here
    wants = [_WANTS.get(e["type"]) for e in clean if e["type"] != "literal_error"]
    if None in wants:
        return clean[0]
    return {**clean[0], "msg": "Input should be " + " or ".join(dict.fromkeys(wants))}


def _dotted(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
