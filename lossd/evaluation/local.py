"""Streaming evaluation in this process: each file's record batches, one at a time.

Memory is bounded by the batches in flight, not by the file: the batch being summarised,
the one waiting for it and the one being read (a thread reads ahead, so that pyarrow
decodes the next batch, without the GIL, while the kernels summarise this one), each
``batch_rows`` rows of the needed columns (8 bytes a number: 2 MiB a column per 2^18 rows; a string key column more),
the Parquet row group being decoded, and the summaries (a sketch of a few KiB each, one
per group with ``by``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .compute import Options, Result, merge, summarize_batch
from .sources import Columns, DataFile, batches, count_rows

T = TypeVar("T")
_END = object()


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` produced by a thread at most ``depth`` ahead of the consumer; an
    exception in the producer is raised here, and a consumer that stops early (an
    error, a break) stops the thread before it reads further."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put((x, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # re-raised in the consumer, with its traceback
            put((_END, exc))

    t = threading.Thread(target=produce, name="lossd-eval-read", daemon=True)
    t.start()
    try:
        while True:
            x, exc = q.get()
            if x is _END:
                if exc is not None:
                    raise exc
                return
            yield x
    finally:
        stop.set()
        t.join()


def _progress_bar(files: list[DataFile], columns: Columns, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    counts = [count_rows(f) for f in files]
    total = None if any(c is None for c in counts) else sum(counts)
    return tqdm(total=total, unit=" rows", unit_scale=True, desc="lossd eval", dynamic_ncols=True)


def evaluate_files(files: list[DataFile], columns: Columns, options: Options, batch_rows: int,
                   progress: bool = False) -> Result | None:
    """Every file's batches summarised and merged in order (None: no rows at all)."""
    bar = _progress_bar(files, columns, progress)
    acc, read = None, 0
    try:
        every = ((f, b) for f in files for b in batches(f, columns, batch_rows))
        for f, batch in read_ahead(every):
            acc = merge(acc, summarize_batch(batch, columns, options, f.name))
            if bar is not None:
                read += batch.nbytes
                bar.update(batch.rows)
                bar.set_postfix_str(f"{read / 2**20:,.0f} MiB", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return acc
