"""One batch's summary, and the merge of summaries (or of per-group summaries).

The same functions run in this process (streaming) and in Dask's workers (one piece of
a file, or one partition of a DataFrame), so both modes give answers of the same meaning.
Summaries travel between processes as ``LossSummary.to_bytes``: a few hundred bytes
each, cheaper to pickle than the object and its sketch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from lossd.kernels import InputError, LossSummary, merge_groups, summarize

from .sources import Batch, Columns, DataFile

Result = Union[LossSummary, dict]  # one summary, or {key: summary} with `by`


@dataclass(frozen=True)
class Options:
    """``summarize``'s options, as its keywords (and the JSON fields) name them."""

    input: str = "logits"
    loss: str = "cross_entropy"
    pos_weight: object = None
    label_smoothing: float = 0.0
    eps: float | None = None
    gamma: float = 2.0
    alpha: float | None = None
    dtype: str = "float64"
    sketch: bool = True  # the KLL quantile sketch: most of summarize's cost

    def keywords(self) -> dict:
        return dict(input=self.input, loss=self.loss, pos_weight=self.pos_weight,
                    label_smoothing=self.label_smoothing, eps=self.eps, gamma=self.gamma, alpha=self.alpha,
                    dtype=self.dtype, sketch=self.sketch)


class DatasetInputError(InputError):
    """The kernels' ``InputError`` for one element of a dataset: the index is the row within
    the file (not within the batch), and the message names the column and the file."""

    def __init__(self, argument: str | None, reason: str, index: tuple[int, ...] = (),
                 column: str | None = None, source: str | None = None) -> None:
        self.column, self.source = column, source
        where = ", ".join(p for p in (f"column {column!r}" if column else "", source or "") if p)
        super().__init__(argument, f"{reason} ({where})" if where else reason, index)
        self.reason = reason

    def __reduce__(self):  # picklable: raised in a Dask worker, re-raised here
        return (DatasetInputError, (self.argument, self.reason, self.index, self.column, self.source))


_ROLE = {"predictions": "predictions", "labels": "labels", "sample_weight": "weights"}


def _located(exc: InputError, columns: Columns, first_row: int, source: str) -> InputError:
    column = getattr(columns, _ROLE[exc.argument]) if exc.argument in _ROLE else None
    if column is None or not exc.index:  # an option, or an argument as a whole
        return DatasetInputError(exc.argument, exc.reason, exc.index, column, source)
    index = (exc.index[0] + first_row, *exc.index[1:])
    return DatasetInputError(exc.argument, exc.reason, index, column, source)


def summarize_batch(batch: Batch, columns: Columns, options: Options, source: str) -> Result:
    """``summarize`` on one batch; an InputError's row is the batch's first row plus its index."""
    try:
        return summarize(batch.predictions, batch.labels, sample_weight=batch.weights, by=batch.by,
                         **options.keywords())
    except InputError as exc:
        raise _located(exc, columns, batch.first_row, source) from None


def merge(a: Result | None, b: Result) -> Result:
    if a is None:
        return b
    if isinstance(a, dict):
        return merge_groups(a, b)
    return a.merge(b)


def to_wire(r: Result) -> bytes | dict:
    return {k: s.to_bytes() for k, s in r.items()} if isinstance(r, dict) else r.to_bytes()


def from_wire(w: bytes | dict) -> Result:
    return {k: LossSummary.from_bytes(b) for k, b in w.items()} if isinstance(w, dict) else LossSummary.from_bytes(w)


def merge_wire(*parts: bytes | dict | None) -> bytes | dict | None:
    """Merge serialised results (None: a piece with no rows)."""
    acc = None
    for p in parts:
        if p is not None:
            acc = merge(acc, from_wire(p))
    return None if acc is None else to_wire(acc)


def summarize_file_piece(f: DataFile, columns: Columns, options: Options, batch_rows: int,
                         row_groups: list[int] | None, first_row: int, use_threads: bool) -> bytes | dict | None:
    """A file (or some of a Parquet file's row groups) summarised batch by batch."""
    from .sources import batches

    acc = None
    for batch in batches(f, columns, batch_rows, row_groups=row_groups, first_row=first_row,
                         use_threads=use_threads):
        acc = merge(acc, summarize_batch(batch, columns, options, f.name))
    return None if acc is None else to_wire(acc)
