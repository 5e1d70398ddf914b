"""Latency budgets given on the command line, judged against locust's statistics.

locust itself fails a run on any failed request (``--exit-code-on-error``, default 1)
and locust-plugins checks only requests/s, the failure ratio and the *average* response
time (``--check-rps``, ``--check-fail-ratio``, ``--check-avg-response-time``); a
percentile per class is not among them, so it is judged here, in locust's ``quitting``
hook (see locustfile.py), from the same response-time histograms the CSV and HTML
report show. locust rounds response times below 100 ms to whole milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALL = "all"  # the budget applies to every request together (locust's "Aggregated" row)
BUDGET_EXIT_CODE = 3  # as locust-plugins' checks: distinct from locust's 1 for failures


@dataclass(frozen=True)
class Budget:
    name: str          # a request name (the class key) or ALL
    percentile: float  # 0 < q < 100
    max_ms: float

    def __str__(self) -> str:
        return f"{self.name}:p{self.percentile:g}={self.max_ms:g}"


def parse(spec: str) -> list[Budget]:
    """``"small_loss:p99=5,all:p95=200"`` -> budgets; ``ValueError`` naming a bad item."""
    out = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            name, rest = item.split(":", 1)
            pct, ms = rest.split("=", 1)
            if not pct.startswith("p"):
                raise ValueError
            budget = Budget(name.strip(), float(pct[1:]), float(ms))
        except ValueError:
            raise ValueError(f"budget {item!r} is not NAME:pQ=MS (e.g. small_loss:p99=5)") from None
        if not 0 < budget.percentile < 100 or not budget.max_ms > 0:
            raise ValueError(f"budget {item!r}: the percentile must be in (0, 100) and the time > 0 ms")
        out.append(budget)
    return out


def exceeded(budgets: list[Budget], stats: Any) -> list[str]:
    """Each budget that ``stats`` (a locust ``RequestStats``) does not meet, as a sentence;
    a budget for a name that made no request is not met either."""
    problems = []
    for b in budgets:
        entry = stats.total if b.name == ALL else _entry(stats, b.name)
        if entry is None or entry.num_requests == 0:
            problems.append(f"budget {b}: no {b.name} requests were made")
            continue
        got = entry.get_response_time_percentile(b.percentile / 100)
        if got > b.max_ms:
            problems.append(f"budget {b}: p{b.percentile:g} of {b.name} was {got:g} ms "
                            f"over {entry.num_requests} requests")
    return problems


def _entry(stats: Any, name: str) -> Any:
    for (entry_name, _method), entry in stats.entries.items():
        if entry_name == name:
            return entry
    return None
