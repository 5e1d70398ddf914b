"""Which transport a call takes with ``transport="auto"``: a pure rule on the size of the
request's tensors and what the server offers, from measurements
(``bench/client_transports.py``; figures in the README's client section).

The rule: shared memory from ``SHM_MIN_BYTES`` of input tensors when the server offers it
(a server on this host with ``LOSSD_SHM``); else gRPC below ``GRPC_MAX_BYTES`` when it is
offered (``lossd-client[grpc]`` installed, ``LOSSD_GRPC_PORT`` on and reachable); else
HTTP with binary tensors. Measured through the client, median ms of ``loss``
reduction="mean" / ``grad`` reduction="none" with FP64 predictions and labels (2 quiet
cores, server ``--workers 1 --threads 2``; ``python bench/client_transports.py``):

    n       http          grpc          shm
    10      1.36 / 1.36   1.02 / 1.09   1.97 / 2.76
    1e3     1.42 / 1.87   1.14 / 1.65   2.86 / 2.44
    1e5     4.16 / 8.93   3.21 / 5.16   2.75 / 3.64
    1e6     18.2 / 70.9   22.1 / 49.6   6.96 / 10.0
    1e7     844 / 1580    593 / 896     32.4 / 69.8

gRPC's per-call cost is the smallest up to about a megabyte; beyond a few megabytes its
copies (the message into and out of grpc's buffers) cost as much as HTTP's or more, and
shared memory, where only a header travels, wins from about 10^5 elements.
"""

from __future__ import annotations

import ipaddress
from types import ModuleType

from ._codec import Outputs

TRANSPORTS = ("auto", "http", "grpc", "shm")

# From this many bytes of input tensors shared memory wins (below, its JSON header and the
# server opening the region per tensor cost more than sending the bytes).
SHM_MIN_BYTES = 1 << 20
# Below this many bytes gRPC wins over HTTP; above, HTTP's binary body costs less.
GRPC_MAX_BYTES = 4 << 20


def choose(nbytes: int, available: tuple[str, ...]) -> str:
    """The transport for a request with ``nbytes`` bytes of input tensors, among
    ``available`` (what the server offers; "http" always)."""
    if "shm" in available and nbytes >= SHM_MIN_BYTES:
        return "shm"
    if "grpc" in available and nbytes < GRPC_MAX_BYTES:
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
