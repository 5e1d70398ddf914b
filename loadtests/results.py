"""What one locust run measured, read back from the CSV files locust wrote, and its
summary as a markdown table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

AGGREGATED = "Aggregated"


@dataclass(frozen=True)
class ClassStats:
    """One row of ``<prefix>_stats.csv``: a request name (class key) or the aggregate."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max_ms: float
    avg_ms: float

    @classmethod
    def from_row(cls, row: dict[str, str]) -> "ClassStats":
        def num(key: str) -> float:
            v = row.get(key, "")
            return float(v) if v not in ("", "N/A") else math.nan

        return cls(row["Name"], int(row["Request Count"]), int(row["Failure Count"]),
                   num("Requests/s"), num("50%"), num("95%"), num("99%"),
                   num("Max Response Time"), num("Average Response Time"))


@dataclass
class RunResult:
    """A finished locust run: its exit code, statistics and what it cost the machine."""

    name: str
    out: Path
    exit_code: int
    wall_s: float
    stats: dict[str, ClassStats] = field(default_factory=dict)
    failures: list[tuple[str, str, int]] = field(default_factory=list)  # name, error, count
    users: dict[str, int] = field(default_factory=dict)  # by class key
    cores: dict[str, float] = field(default_factory=dict)  # server, client, others
    load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # load average at start, end

    def get(self, key: str) -> ClassStats | None:
        return self.stats.get(key)

    def to_json(self) -> dict:
        return {"name": self.name, "exit_code": self.exit_code, "wall_s": self.wall_s,
                "stats": {k: v.__dict__ for k, v in self.stats.items()},
                "failures": [{"name": n, "error": e, "occurrences": c} for n, e, c in self.failures],
                "users": self.users, "cores": self.cores,
                "load_average_start": list(self.load[0]), "load_average_end": list(self.load[1])}


def read_run(name: str, prefix: Path, exit_code: int, wall_s: float,
             class_of: dict[str, str]) -> RunResult:
    """The CSV files of the locust run with csv prefix ``prefix``; ``class_of`` maps user
    class names (SmallLoss) to keys (small_loss) for the user counts."""
    r = RunResult(name, prefix.parent, exit_code, wall_s)
    stats_csv = Path(f"{prefix}_stats.csv")
    if stats_csv.exists():
        with open(stats_csv, newline="") as f:
            for row in csv.DictReader(f):
                s = ClassStats.from_row(row)
                r.stats[s.name] = s
    failures_csv = Path(f"{prefix}_failures.csv")
    if failures_csv.exists():
        with open(failures_csv, newline="") as f:
            for row in csv.DictReader(f):
                r.failures.append((row["Name"], row["Error"], int(row["Occurrences"])))
    users_json = Path(f"{prefix}_users.json")
    if users_json.exists():
        by_class = json.loads(users_json.read_text())["by_class"]
        r.users = {class_of.get(k, k): v for k, v in by_class.items() if v}
    return r


def fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def fmt_rate(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c) for c in cells) + " |" for cells in lines)


def summary_table(r: RunResult, describe: dict[str, str]) -> str:
    """Requests/s, p50, p95, p99 and failures per class, then all together."""
    rows = []
    names = [n for n in r.stats if n != AGGREGATED] + ([AGGREGATED] if AGGREGATED in r.stats else [])
    for name in names:
        s = r.stats[name]
        rows.append([name if name != AGGREGATED else "**all**", describe.get(name, ""),
                     str(r.users.get(name, "")) if name != AGGREGATED else str(sum(r.users.values()) or ""),
                     str(s.requests), str(s.failures), fmt_rate(s.rps), fmt_ms(s.p50), fmt_ms(s.p95),
                     fmt_ms(s.p99), fmt_ms(s.max_ms)])
    return md_table(["class", "request", "users", "requests", "failures", "req/s", "p50 ms", "p95 ms",
                     "p99 ms", "max ms"], rows)


def cores_line(r: RunResult) -> str:
    c = r.cores
    if not c:
        return ""
    parts = [f"{name} {c[name]:.2f}" for name in ("server", "client", "others") if name in c]
    load = ", ".join(f"{x:.2f}" for x in r.load[0])
    return (f"Cores used on average (of {psutil_cores()}): " + ", ".join(parts)
            + f". Load average at start: {load}.")


def psutil_cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def failures_text(r: RunResult, limit: int = 10) -> str:
    if not r.failures:
        return ""
    lines = [f"- {name}: {count} x {error[:300]}" for name, error, count in r.failures[:limit]]
    return "Failures:\n" + "\n".join(lines)
