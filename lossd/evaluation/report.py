"""``lossd eval``'s output: one row per group (or one row), as a table, JSON or CSV.

JSON and CSV write every float exactly (Python's shortest round-trip repr); JSON writes
±inf as the strings ``"Infinity"``/``"-Infinity"``, as the service's responses do.
"""

from __future__ import annotations

import csv
import io
import json
import math

FORMATS = ("table", "json", "csv")


def rows(result, quantiles: tuple[float, ...] = (), weighted: bool = False) -> list[dict]:
    """``{"key"?, "loss", "count", "sum", "mean", "std", "min", "max", "p50"..., "inf_count",
    "weight_sum"?}`` per group, groups in key order (one row without ``by``)."""
    def row(s) -> dict:
        # no rows, or weights summing to 0: no mean loss
        out = {"loss": s.loss if s.count and s.weight_sum > 0 else None}
        out.update(s.stats(quantiles) if s.count else {"count": 0})
        out["inf_count"] = s.inf_count
        if weighted:
            out["weight_sum"] = s.weight_sum
        return out

    if not isinstance(result, dict):
        return [row(result)]
    return [{"key": k, **row(s)} for k, s in sorted(result.items(), key=lambda kv: (str(type(kv[0])), kv[0]))]


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return v.item() if hasattr(v, "item") else v


def to_json(table: list[dict], grouped: bool, total: dict | None = None) -> str:
    clean = [{k: _json_value(v) for k, v in r.items()} for r in table]
    if not grouped:
        return json.dumps(clean[0], allow_nan=False)
    return json.dumps({"groups": clean, "total": {k: _json_value(v) for k, v in (total or {}).items()}},
                      allow_nan=False)


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in table for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_table(table: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in table for k in r))
    cells = [fields] + [[_cell(r.get(f, "")) for f in fields] for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(fields))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]]) + "\n"


def render(result, fmt: str, quantiles: tuple[float, ...] = (), weighted: bool = False) -> str:
    table = rows(result, quantiles, weighted)
    grouped = isinstance(result, dict)
    if fmt == "json":
        if grouped:  # every group merged: the whole dataset's row beside the groups'
            from lossd.kernels import LossSummary

            total = rows(LossSummary.merge_all(result.values()), quantiles, weighted)[0]
            return to_json(table, True, total) + "\n"
        return to_json(table, False) + "\n"
    if fmt == "csv":
        return to_csv(table)
    return to_table(table)
