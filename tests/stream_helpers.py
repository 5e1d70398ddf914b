"""A bounded stream of requests from several keep-alive clients, classifying every outcome,
for the shutdown and worker-death tests (host processes and the container alike).

Outcomes per request:
- ``ok``: a complete 200 answer whose ``loss`` is the expected one;
- ``refused``: the connection could not be opened (nothing was accepted: the server had
  stopped listening);
- ``dropped``: the request was sent on a connection that had answered before and no
  answer came (reset or closed): an accepted request that was lost, unless the process
  holding it was killed;
- ``unread``: the first request on a newly opened connection got no answer: either lost
  like ``dropped``, or the kernel had completed the handshake but no process ever
  accepted the connection (the instant a listener closes, its queue is reset), which a
  client cannot tell from a refusal that came late;
- ``status <code>`` / ``wrong``: any other answer.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ClientLog:
    outcomes: list[tuple[float, str, float]] = field(default_factory=list)  # (sent, outcome, ended)

    def count(self, outcome: str, after: float = 0.0) -> int:
        return sum(1 for t, o, _ in self.outcomes if o == outcome and t >= after)


class RequestStream:
    """``clients`` threads, each POSTing ``body`` to ``path`` on one keep-alive connection
    (a new one after any failure) until ``stop()``, ``max_seconds`` or ``max_requests``."""

    def __init__(self, port: int, path: str, body: dict, expected_loss: float | None = None,
                 clients: int = 8, max_seconds: float = 60.0, max_requests: int = 200_000,
                 timeout: float = 30.0) -> None:
        self.port, self.path, self.timeout = port, path, timeout
        self.payload = json.dumps(body).encode()
        self.expected_loss = expected_loss
        self.clients = [ClientLog() for _ in range(clients)]
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self._stop = threading.Event()
        self._sent = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(log,), daemon=True) for log in self.clients]

    def start(self) -> "RequestStream":
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_timeout: float = 60.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(join_timeout)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def totals(self, after: float = 0.0) -> Counter:
        c: Counter = Counter()
        for log in self.clients:
            for t, o, _ in log.outcomes:
                if t >= after:
                    c[o] += 1
        return c

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self, log: ClientLog) -> None:
        conn: http.client.HTTPConnection | None = None
        answered = False  # whether the current connection has answered a request yet
        deadline = self.t0 + self.max_seconds
        refused_in_a_row = 0
        while not self._stop.is_set() and time.monotonic() < deadline and self._take():
            sent_at = time.monotonic()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                try:
                    conn.connect()
                except OSError:
                    log.outcomes.append((sent_at, "refused", time.monotonic()))
                    conn = None
                    refused_in_a_row += 1
                    if refused_in_a_row >= 20:  # the server is gone for good
                        return
                    time.sleep(0.05)
                    continue
                answered = False
            refused_in_a_row = 0
            try:
                conn.request("POST", self.path, self.payload, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                log.outcomes.append((sent_at, "dropped" if answered else "unread", time.monotonic()))
                conn.close()
                conn = None
                continue
            answered = True
            log.outcomes.append((sent_at, self._judge(resp.status, data), time.monotonic()))
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _judge(self, status: int, data: bytes) -> str:
        if status != 200:
            return f"status {status}"
        if self.expected_loss is not None:
            try:
                if json.loads(data)["loss"] != self.expected_loss:
                    return "wrong"
            except (ValueError, KeyError):
                return "wrong"
        return "ok"


# How many first requests on new connections a closing listener may reset unread: the
# drain cuts the listen backlog to one before it takes the queue and shuts the listener,
# so at most that one, or the one the kernel was completing, per listening process.
UNREAD_AT_CLOSE = 2


def assert_drained(streams: list[RequestStream], t_term: float, processes: int, log: str) -> None:
    """The SIGTERM contract, as a client sees it: every request is answered right or
    refused; none on a connection that had answered before is lost; at most
    UNREAD_AT_CLOSE per process of first requests on new connections opened after the
    signal are reset unread (the listener's queue at the instant it closes)."""
    totals: Counter = Counter()
    for s in streams:
        totals += s.totals()
    assert set(totals) <= {"ok", "refused", "unread"}, f"lost or wrong answers: {totals}\n{log[-3000:]}"
    unread = [t for s in streams for c in s.clients for t, o, _ in c.outcomes if o == "unread"]
    assert all(t >= t_term for t in unread), f"unread before the signal: {totals}\n{log[-3000:]}"
    assert len(unread) <= UNREAD_AT_CLOSE * processes, f"{totals}\n{log[-3000:]}"
