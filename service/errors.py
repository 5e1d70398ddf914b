"""Client errors and their JSON bodies.

422 bodies keep FastAPI's shape, ``{"detail": [{"type", "loc", "msg"}]}``, so clients
that already read FastAPI validation errors read ours; ``loc`` names the field and the
index (``["body", "labels", 17]``) and ``msg`` says what is wrong in one sentence.
Other statuses carry ``{"detail": "<message>"}``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError


class ApiError(Exception):
    """An HTTP error with a message for the client (never a traceback)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers

    def body(self, oip: bool = False) -> dict[str, Any]:
        """FastAPI's ``{"detail": ...}``, or OIP's ``{"error": "..."}`` under /v2."""
        if oip:
            return {"error": self.detail if isinstance(self.detail, str) else
                    "; ".join(e["msg"] for e in self.detail)}
        return {"detail": self.detail}


class RequestError(ApiError):
    """422: the request is well-formed HTTP but its content is invalid."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, errors)

    @property
    def message(self) -> str:
        return "; ".join(e["msg"] for e in self.detail)

    @classmethod
    def at(cls, loc: tuple, msg: str, kind: str = "value_error") -> "RequestError":
        return cls([{"type": kind, "loc": ["body", *loc], "msg": msg}])

    @classmethod
    def invalid_json(cls, why: str) -> "RequestError":
        return cls([{"type": "json_invalid", "loc": ["body"], "msg": f"the body is not valid JSON: {why}"}])

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: tuple = ()) -> "RequestError":
        errors = []
        for e in exc.errors(include_url=False, include_context=False):
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
            errors.append({"type": e["type"], "loc": ["body", *loc], "msg": msg})
        return cls(errors)

    @classmethod
    def from_kernel(cls, exc: ValueError, rename: dict[str, str] | None = None) -> "RequestError":
        """The kernels' ValueError messages start with the argument and its index
        (``labels[17] = 2 is not in {0, 1}``); ``loc`` is read back from that prefix."""
        msg = str(exc)
        m = _LEADING_FIELD.match(msg)
        loc: list[Any] = []
        if m:
            name = m.group(1)
            if rename and name in rename:
                msg = rename[name] + msg[len(name):]
                name = rename[name]
            loc.append(name)
            if m.group(2):
                loc.extend(int(i) for i in m.group(2).split(","))
        return cls([{"type": "value_error", "loc": ["body", *loc], "msg": msg}])


_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*)(?:\[(\d+(?:,\s*\d+)*)\])?")


def _dotted(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
