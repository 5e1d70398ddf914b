"""The one exception type the client raises for a refused request."""

from __future__ import annotations


class LossdError(ValueError):
    """The server refused a request: ``status`` is the HTTP status, ``message`` the
    server's text (for invalid values, the kernels' own ValueError message).

    A ValueError subclass, so code written for ``kernels`` (which raises ValueError)
    handles remote errors unchanged; ``str(err)`` is the message alone.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"LossdError({self.status!r}, {self.message!r})"

    def __reduce__(self):
        # Exception pickling replays ``args`` (the message alone); keep the status too
        return (type(self), (self.status, self.message))
