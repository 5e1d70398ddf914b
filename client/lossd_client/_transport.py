"""Which transport a call takes with ``transport="auto"``: a pure rule on the request's
size and what the server offers, from measurements (``bench/client_transports.py``,
figures in the README's client section).

The rule: shared memory for requests of at least ``SHM_MIN_BYTES`` of tensors when the
server offers it (a server on this host with ``LOSSD_SHM``), else gRPC when it is offered
(``lossd-client[grpc]`` installed, ``LOSSD_GRPC_PORT`` on and reachable), else HTTP with
binary tensors.
"""

from __future__ import annotations

import ipaddress
from types import ModuleType

from ._codec import Outputs

TRANSPORTS = ("auto", "http", "grpc", "shm")

# Below this many bytes of input tensors the registration-free transports win: a shm call
# still sends a JSON header and the server opens the region per tensor.
SHM_MIN_BYTES = 1 << 20


def choose(nbytes: int, available: tuple[str, ...]) -> str:
    """The transport for a request with ``nbytes`` bytes of tensors, among ``available``."""
    if "shm" in available and nbytes >= SHM_MIN_BYTES:
        return "shm"
    if "grpc" in available:
        return "grpc"
    return "http"


def request_bytes(inputs: Outputs) -> int:
    return sum(arr.nbytes for _, arr in inputs)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a URL's host) is this machine: shared memory needs the server here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def grpc_module() -> ModuleType | None:
    """``lossd_client._grpc`` when the grpc extra is installed, else None."""
    try:
        from . import _grpc
    except ImportError:
        return None
    return _grpc
