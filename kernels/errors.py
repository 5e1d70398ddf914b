"""The kernels' errors: structured, so that callers never parse a message."""

from __future__ import annotations


def index_text(index: tuple[int, ...]) -> str:
    """An element's position as every lossd message writes it: ``[3, 1]``."""
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


class InputError(ValueError):
    """Invalid input to a public kernel function.

    ``argument`` names it as the Python keyword, the JSON field and the OIP parameter
    do (None when no one argument is at fault), ``index`` is the position of the bad
    element in that argument (empty for the argument as a whole) and ``reason`` says
    what is wrong. The message is derived from the three:
    ``InputError("labels", "= 2 is not in {0, 1}", (3, 1))`` reads
    ``labels[3, 1] = 2 is not in {0, 1}``.
    """

    def __init__(self, argument: str | None, reason: str, index: tuple[int, ...] = ()) -> None:
        self.argument = argument
        self.index = tuple(int(i) for i in index)
        self.reason = reason
        head = (argument or "") + index_text(self.index)
        super().__init__(f"{head} {reason}" if head else reason)

    def __reduce__(self):  # picklable (the service's large lane sends errors between processes)
        return (InputError, (self.argument, self.reason, self.index))


class KernelError(ArithmeticError):
    """A kernel produced NaN from valid input: a bug, never reported as a result."""
