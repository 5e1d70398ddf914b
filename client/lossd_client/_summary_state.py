"""LossSummary: a mergeable summary of per-element losses (pure Python, NumPy and
Apache DataSketches; no numba).

This file is shared verbatim by the kernels (``lossd.kernels.summary``) and the
client (``lossd_client._summary_state``): tests/test_summary.py checks the two
copies are byte-identical, so that a state the service sends merges in the client by
the same code that built it.

State of a summary over losses l_i >= 0 (or +inf) with element weights w_i >= 0:

- ``count`` = n, ``inf_count`` = #{l_i = +inf}, ``min``, ``max``;
- ``sum`` = Σ l_i, ``weighted_sum`` = Σ w_i·l_i (an element with w_i = 0 is left
  out, even beside l_i = inf), ``weight_sum`` = Σ w_i, each carried as a
  double-double (hi, lo) with hi = fl(hi + lo): every addition is Knuth's TwoSum
  (hi', e) = (fl(hi + x), hi + x - fl(hi + x)) with the errors added to lo, and each
  product w·l enters with its exact FMA error. The summands are >= 0, so the error
  of the pair is at most about (n + parts)·u²·Σ (u = 2^-53), and the rounded sum
  ``hi`` is within 1 ulp of the exact sum for any split of the data and any order
  of merges (tested: tests/test_summary.py);
- ``mean`` = Σ l_i / n, computed from the double-double sum and correctly rounded
  (within 1 ulp of the exact mean);
- ``m2`` = Σ (l_i - mean)², per part by two passes, across parts by Chan's update

      δ = mean_b - mean_a,  M2 = M2_a + M2_b + δ²·n_a·n_b / (n_a + n_b)

  (Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing
  sample variances", 1979; "Algorithms for computing the sample variance", The
  American Statistician 37(3), 1983). Relative error O(log(parts)·u·κ), not an
  ulp bound (κ the condition number of the variance);
- a KLL quantile sketch of the losses (Apache DataSketches, ``kll_doubles_sketch``,
  Karnin, Lang & Liberty 2016) with k = 200 by default: a quantile's normalized rank
  error is at most 1.33% (single-sided, 99% confidence; ``KLL_RANK_ERROR``). The
  sketch's update costs several times the rest of the state; a summary built with
  ``sketch=False`` has none (``quantile`` raises) and a merge with such a summary has
  none either.

Once a loss is +inf, ``sum``, ``mean`` and ``m2`` are inf (as the kernels' ``stats``:
mean inf, std inf); NaN is never produced. The empty summary (count 0) is the
identity of ``merge``; it has no statistics (``stats``/``loss``/``quantile`` raise).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction

from datasketches import kll_doubles_sketch

KLL_K = 200
KLL_RANK_ERROR = kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)
REDUCTIONS = ("mean", "sum")  # what a summary can reduce to; "none" needs every element

_MAGIC = b"LSUM"
_VERSION = 1
# magic, version, count, inf_count, then sum, weighted_sum, weight_sum as (hi, lo),
# m2, min, max, then the sketch's length
_HEAD = struct.Struct("<4sBQQ9dI")
_INF = math.inf


def _two_sum(a: float, b: float) -> tuple[float, float]:
    """(s, e): s = fl(a + b), s + e = a + b exactly (Knuth's TwoSum; Python floats
    are IEEE doubles rounded to nearest, never contracted). An infinite s has e = 0."""
    s = a + b
    if not math.isfinite(s):
        return s, 0.0
    bp = s - a
    return s, (a - (s - bp)) + (b - bp)


def _dd_add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(hi, lo) of a + b for double-doubles, renormalised so that hi = fl(hi + lo).
    Commutative bit for bit."""
    h, e = _two_sum(a[0], b[0])
    return _two_sum(h, (a[1] + b[1]) + e)


def _dd_value(a: tuple[float, float]) -> Fraction:
    return Fraction(a[0]) + Fraction(a[1])


def _dd_div(a: tuple[float, float], b: tuple[float, float]) -> float:
    """(a_hi + a_lo) / (b_hi + b_lo), correctly rounded (exact rationals); inf if a is."""
    if not math.isfinite(a[0]):
        return a[0]
    return float(_dd_value(a) / _dd_value(b))


def quantile_key(q: float) -> str:
    """"p" + 100·q from q's shortest decimal (0.5 -> p50, 0.999 -> p99.9), the kernels'
    ``stats`` key."""
    return "p" + format(Decimal(repr(float(q))).scaleb(2).normalize(), "f")


def _float_out(x: float) -> float | str:
    # JSON has no infinities: the service's convention, "Infinity" / "-Infinity"
    return x if math.isfinite(x) else ("Infinity" if x > 0 else "-Infinity")


def _float_in(name: str, x) -> float:
    if isinstance(x, str):
        if x in ("Infinity", "-Infinity"):
            return float(x.replace("Infinity", "inf"))
        raise ValueError(f"summary field {name!r}: {x!r} is not a number")
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        raise ValueError(f"summary field {name!r}: {x!r} is not a number")
    return float(x)


class LossSummary:
    """An immutable, mergeable summary of per-element losses (see the module's
    docstring for the state and its precision). Build one with
    ``lossd.kernels.summarize`` (or ``loss(..., summary=True)``), combine with
    ``merge``/``merge_all``, read ``stats()``, ``quantile(q)`` and ``loss``.

    ``loss`` is the mean reduction, Σ w·l / Σ w (unweighted: Σ l / n), as
    ``loss(..., reduction="mean")``; ``reduce("sum")`` is Σ w·l as
    ``reduction="sum"``. A summary cannot give ``reduction="none"``.
    """

    __slots__ = ("count", "inf_count", "_sum", "_wsum", "_weights", "m2", "min", "max", "_sketch")

    count: int
    inf_count: int
    m2: float
    min: float
    max: float

    def __init__(self, count: int, inf_count: int, sum: tuple[float, float],
                 weighted_sum: tuple[float, float], weight_sum: tuple[float, float], m2: float,
                 min: float, max: float, sketch: kll_doubles_sketch | None) -> None:
        """Internal: use ``summarize``, ``empty``, ``merge`` or the deserialisers."""
        for name, v in (("count", count), ("inf_count", inf_count), ("sum", sum),
                        ("_wsum", weighted_sum), ("_weights", weight_sum), ("m2", m2),
                        ("min", min), ("max", max), ("_sketch", sketch)):
            object.__setattr__(self, "_sum" if name == "sum" else name, v)

    def __setattr__(self, name, value):
        raise AttributeError("LossSummary is immutable: merge returns a new one")

    def __reduce__(self):  # pickling (Dask ships states between processes)
        return (LossSummary.from_bytes, (self.to_bytes(),))

    # -- construction ---------------------------------------------------------------

    @classmethod
    def empty(cls, k: int = KLL_K) -> LossSummary:
        """The summary of no losses: the identity of ``merge``."""
        return cls(0, 0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), 0.0, _INF, -_INF, kll_doubles_sketch(k))

    def merge(self, other: LossSummary) -> LossSummary:
        """The summary of both parts' losses (a new object; neither is changed).

        Commutative bit for bit; associative exactly for count, inf_count, min, max,
        and within the module's bounds for the sums, mean and m2."""
        if not isinstance(other, LossSummary):
            raise TypeError(f"can only merge a LossSummary, not {type(other).__name__}")
        if other.count == 0 and self.count == 0:
            return LossSummary(0, 0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), 0.0, _INF, -_INF,
                               _merged_sketch(self._sketch, other._sketch))
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        na, nb = self.count, other.count
        n = na + nb
        s = _dd_add(self._sum, other._sum)
        if not math.isfinite(s[0]):
            m2 = _INF
        else:
            delta = other.mean - self.mean
            # δ·(δ·f), f = na·nb/n: δ² alone could overflow where M2 does not
            m2 = (self.m2 + other.m2) + delta * (delta * (na * nb / n))
            m2 = m2 if m2 == m2 else _INF
        sk = _merged_sketch(self._sketch, other._sketch)
        return LossSummary(n, self.inf_count + other.inf_count, s, _dd_add(self._wsum, other._wsum),
                           _dd_add(self._weights, other._weights), m2, min(self.min, other.min),
                           max(self.max, other.max), sk)

    @classmethod
    def merge_all(cls, summaries: Iterable[LossSummary]) -> LossSummary:
        """Merge any number of summaries pairwise, as a balanced tree (depth log2 of the
        count); no summaries give ``empty()``."""
        level = list(summaries)
        if not level:
            return cls.empty()
        while len(level) > 1:
            level = [level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        return level[0]

    # -- values ---------------------------------------------------------------------

    @property
    def sum(self) -> float:
        """Σ l (unweighted), within 1 ulp of the exact sum."""
        return self._sum[0]

    @property
    def weighted_sum(self) -> float:
        """Σ w·l, within 1 ulp of the exact sum (= ``sum`` without weights)."""
        return self._wsum[0]

    @property
    def weight_sum(self) -> float:
        """Σ w over the elements (a row's weight counts once per column; = ``count``
        without weights)."""
        return self._weights[0]

    @property
    def mean(self) -> float:
        """Σ l / count (unweighted), correctly rounded from the double-double sum; 0.0
        for the empty summary."""
        if self.count == 0:
            return 0.0
        return _dd_div(self._sum, (float(self.count), 0.0))

    @property
    def std(self) -> float:
        """sqrt(m2 / count), the population standard deviation, as the kernels' stats."""
        self._need_data("std")
        return math.sqrt(self.m2 / self.count) if self.m2 < _INF else _INF

    @property
    def loss(self) -> float:
        """The mean reduction Σ w·l / Σ w, as ``loss(..., reduction="mean")``."""
        return self.reduce("mean")

    @property
    def k(self) -> int | None:
        """The KLL sketch's k (None: built without a sketch)."""
        return None if self._sketch is None else self._sketch.k

    def reduce(self, reduction: str = "mean") -> float:
        """The reduced loss: "mean" (Σ w·l / Σ w, correctly rounded from the
        double-doubles) or "sum" (Σ w·l). "none" needs every element: not a summary's."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction = {reduction!r}: a summary gives {' or '.join(REDUCTIONS)}"
                             + (" (per-element losses are not kept)" if reduction == "none" else ""))
        self._need_data("loss")
        if reduction == "sum":
            return self._wsum[0]
        if not self._weights[0] > 0.0:
            raise ValueError('sample_weight sums to 0: reduction = "mean" is undefined')
        return _dd_div(self._wsum, self._weights)

    def quantile(self, q: float) -> float:
        """The q-quantile of the losses from the KLL sketch: a loss whose rank is within
        ``KLL_RANK_ERROR`` (1.33% for k = 200) of q·count."""
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q = {q!r} is outside [0, 1]")
        self._need_data("quantile")
        if self._sketch is None:
            raise ValueError("this LossSummary has no quantile sketch (built with sketch=False, or merged "
                             "with one that was)")
        return float(self._sketch.get_quantile(float(q)))

    def stats(self, quantiles: float | Iterable[float] = ()) -> dict[str, float]:
        """The kernels' ``stats`` keys: count, sum, mean, std, min, max and one "p50"-style
        key per quantile (from the sketch, so within its rank error rather than
        interpolated as the kernels' exact quantiles)."""
        self._need_data("stats")
        out = {"count": self.count, "sum": self.sum, "mean": self.mean, "std": self.std,
               "min": self.min, "max": self.max}
        qs = (quantiles,) if isinstance(quantiles, (int, float)) else tuple(quantiles)
        for q in qs:
            out[quantile_key(q)] = self.quantile(q)
        return out

    def _need_data(self, what: str) -> None:
        if self.count == 0:
            raise ValueError(f"an empty LossSummary (count 0) has no {what}")

    # -- serialisation --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Versioned, compact (101 bytes + the sketch's: 97 of header, 4 of CRC-32 at the end)."""
        sk = b"" if self._sketch is None else self._sketch.serialize()
        body = _HEAD.pack(_MAGIC, _VERSION, self.count, self.inf_count, *self._sum, *self._wsum,
                          *self._weights, self.m2, self.min, self.max, len(sk)) + sk
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> LossSummary:
        """The summary ``to_bytes`` wrote; ValueError for anything else (foreign or
        corrupted bytes, another version)."""
        data = bytes(data)
        if len(data) < _HEAD.size + 4 or data[:4] != _MAGIC:
            raise ValueError("not a LossSummary serialisation (no LSUM header)")
        if data[4] != _VERSION:
            raise ValueError(f"LossSummary serialisation version {data[4]} is not {_VERSION}")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise ValueError("corrupted LossSummary serialisation (CRC-32 mismatch)")
        (_, _, count, inf_count, sh, sl, wh, wl, ah, al, m2, lmin, lmax,
         sklen) = _HEAD.unpack_from(body)
        if len(body) != _HEAD.size + sklen:
            raise ValueError("corrupted LossSummary serialisation (sketch length)")
        return cls._checked(count, inf_count, (sh, sl), (wh, wl), (ah, al), m2, lmin, lmax,
                            body[_HEAD.size:])

    def to_dict(self) -> dict:
        """JSON-able: floats as JSON numbers (their shortest repr, which reads back to the
        same bits), ±inf as "Infinity"/"-Infinity", each double-double as [hi, lo], the
        sketch as base64 of its serialisation (null without one)."""
        return {"version": _VERSION, "count": self.count, "inf_count": self.inf_count,
                "sum": [_float_out(x) for x in self._sum],
                "weighted_sum": [_float_out(x) for x in self._wsum],
                "weight_sum": [_float_out(x) for x in self._weights],
                "m2": _float_out(self.m2), "min": _float_out(self.min), "max": _float_out(self.max),
                "sketch": None if self._sketch is None
                else base64.b64encode(self._sketch.serialize()).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> LossSummary:
        """The summary ``to_dict`` wrote (also after a JSON round trip); ValueError
        naming the field otherwise."""
        if not isinstance(d, dict):
            raise ValueError(f"a LossSummary dict must be an object, not {type(d).__name__}")
        want = ("version", "count", "inf_count", "sum", "weighted_sum", "weight_sum", "m2", "min",
                "max", "sketch")
        missing = [f for f in want if f not in d]
        if missing or len(d) != len(want):
            extra = sorted(set(d) - set(want))
            raise ValueError(f"LossSummary dict: missing {missing}, unknown {extra}")
        if d["version"] != _VERSION:
            raise ValueError(f"LossSummary dict version {d['version']!r} is not {_VERSION}")
        pairs = []
        for f in ("sum", "weighted_sum", "weight_sum"):
            v = d[f]
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise ValueError(f"summary field {f!r} must be [hi, lo]")
            pairs.append((_float_in(f, v[0]), _float_in(f, v[1])))
        ints = []
        for f in ("count", "inf_count"):
            if isinstance(d[f], bool) or not isinstance(d[f], int):
                raise ValueError(f"summary field {f!r} must be an integer, got {d[f]!r:.40}")
            ints.append(d[f])
        try:
            sk = b"" if d["sketch"] is None else base64.b64decode(d["sketch"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ValueError("summary field 'sketch' is not base64") from None
        return cls._checked(*ints, *pairs, _float_in("m2", d["m2"]), _float_in("min", d["min"]),
                            _float_in("max", d["max"]), sk)

    @classmethod
    def _checked(cls, count, inf_count, s, ws, ww, m2, lmin, lmax, sketch_bytes) -> LossSummary:
        if not 0 <= inf_count <= count < 2**63:
            raise ValueError(f"LossSummary: inf_count {inf_count} / count {count} are inconsistent")
        if any(x != x for x in (*s, *ws, *ww, m2, lmin, lmax)):
            raise ValueError("LossSummary: a NaN in the state")
        if count and not (0.0 <= lmin <= lmax and m2 >= 0.0 and s[0] >= 0.0):
            raise ValueError("LossSummary: min, max, m2 or sum out of range")
        if not sketch_bytes:  # built without a sketch
            return cls(count, inf_count, s, ws, ww, m2, lmin, lmax, None)
        try:
            sk = kll_doubles_sketch.deserialize(bytes(sketch_bytes))
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"LossSummary: corrupted sketch ({e})") from None
        if sk.n != count:
            raise ValueError(f"LossSummary: the sketch holds {sk.n} values, count is {count}")
        return cls(count, inf_count, s, ws, ww, m2, lmin, lmax, sk)

    # -- comparison and display -----------------------------------------------------

    def __eq__(self, other) -> bool:
        """Bit-for-bit equal states (sketch included)."""
        if not isinstance(other, LossSummary):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.count == 0:
            return "LossSummary(count=0)"
        return (f"LossSummary(count={self.count}, sum={self.sum!r}, mean={self.mean!r}, "
                f"std={self.std!r}, min={self.min!r}, max={self.max!r}, inf_count={self.inf_count}, "
                f"weighted_sum={self.weighted_sum!r}, weight_sum={self.weight_sum!r})")


def _merged_sketch(a: kll_doubles_sketch | None, b: kll_doubles_sketch | None) -> kll_doubles_sketch | None:
    """A new sketch of both (None if either is None: its values are unknown)."""
    if a is None or b is None:
        return None
    out = kll_doubles_sketch.deserialize(a.serialize())
    out.merge(b)
    return out


def merge_groups(a: dict, b: dict) -> dict:
    """Key-wise merge of two {key: LossSummary} dicts (a key in one only is kept as is)."""
    out = dict(a)
    for key, s in b.items():
        out[key] = out[key].merge(s) if key in out else s
    return out
