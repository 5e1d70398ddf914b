"""The same evaluation on Dask: one summary per piece, merged in a tree.

Files are cut into pieces (a Parquet file into runs of row groups of about
``piece_rows`` rows; an Arrow IPC or CSV file is one piece) and each piece is read with
pyarrow *in the worker* by the same code as the local mode, so a message's row is still
the row within its file. A ``dask.dataframe.DataFrame`` is taken as it is: one summary
per partition (a message then gives the partition and the row within it). Workers get
serialised summaries (``LossSummary.to_bytes``), merged ``fan_in`` at a time.

A worker runs one kernel thread per Dask thread, and pyarrow reads a piece on the task's
thread: Dask's own parallelism is the only one, so N workers of one thread use N cores.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from .compute import Options, Result, from_wire, merge_wire, summarize_file_piece
from .sources import Columns, DataFile, count_rows, parquet_pieces

PIECE_ROWS = 1 << 22  # ~4 M rows: tasks of ~0.1 s, few enough that scheduling is cheap
FAN_IN = 8


@contextmanager
def client_for(scheduler: str | None, workers: int | None) -> Iterator[object]:
    """A ``distributed.Client`` for ``scheduler`` (an address), or for a local cluster of
    ``workers`` processes of one thread each, closed on exit. Neither: None (Dask's
    current scheduler, e.g. a Client the caller made)."""
    if scheduler is None and workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    # worker processes load the kernels from the same compile cache as this process (set
    # by lossd.kernels when unset), instead of each compiling every signature again
    import lossd.kernels  # noqa: F401

    env = {k: os.environ[k] for k in ("NUMBA_CACHE_DIR", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
                                      "LOSSD_CPU_TARGET", "_LOSSD_NUMBA_CPU_APPLIED") if k in os.environ}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=env,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _one_thread_per_task() -> None:
    """In a worker, one kernel thread per task: the worker's threads are its parallelism."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not in a worker (Dask's local schedulers): leave the kernels be
        return
    from lossd import kernels

    kernels.set_threads(1)


def _piece_task(f: DataFile, columns: Columns, options: Options, batch_rows: int,
                row_groups: list[int] | None, first_row: int) -> bytes | dict | None:
    _one_thread_per_task()
    return summarize_file_piece(f, columns, options, batch_rows, row_groups, first_row, use_threads=False)


def _frame_task(df, partition: int, columns: Columns, options: Options) -> bytes | dict | None:
    """One pandas partition's summary (a message names the partition and its row)."""
    import numpy as np

    from .compute import summarize_batch, to_wire
    from .sources import Batch, DatasetError

    _one_thread_per_task()
    if len(df) == 0:
        return None
    source = f"partition {partition} of the DataFrame"

    def values(name: str, keys: bool = False) -> np.ndarray:
        col = df[name]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise DatasetError(f"column {name!r} of {source} has a missing value at row {row}")
        if keys:
            return col.to_numpy()
        if col.dtype.kind not in "fiub":
            raise DatasetError(f"column {name!r} of {source} is {col.dtype}, not numbers")
        return col.to_numpy()

    batch = Batch(0, len(df), values(columns.predictions), values(columns.labels),
                  values(columns.weights) if columns.weights else None,
                  values(columns.by, keys=True) if columns.by else None, 0)
    return to_wire(summarize_batch(batch, columns, options, source))


def _tree(parts: list, fan_in: int = FAN_IN):
    from dask import delayed

    merge = delayed(merge_wire)
    while len(parts) > 1:
        parts = [merge(*parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def piece_rows_for(files: list[DataFile], threads: int) -> int:
    """Rows per piece: PIECE_ROWS, or fewer so that every thread gets about 4 pieces
    (row groups are never cut, so a file of few row groups gives few pieces)."""
    total = sum(count_rows(f) for f in files if f.format == "parquet")
    return max(1, min(PIECE_ROWS, -(-total // (4 * max(1, threads)))))


def file_tasks(files: list[DataFile], columns: Columns, options: Options, batch_rows: int,
               piece_rows: int = PIECE_ROWS) -> list:
    from dask import delayed

    task = delayed(_piece_task)
    parts = []
    for f in files:
        if f.format == "parquet":
            for ids, first, _ in parquet_pieces(f, piece_rows):
                parts.append(task(f, columns, options, batch_rows, ids, first))
        else:
            parts.append(task(f, columns, options, batch_rows, None, 0))
    return parts


def frame_tasks(ddf, columns: Columns, options: Options) -> list:
    from dask import delayed

    missing = [c for c in columns.names() if c not in ddf.columns]
    if missing:
        from .sources import DatasetError

        raise DatasetError(f"column {missing[0]!r} is not in the DataFrame (its columns: "
                           f"{', '.join(map(str, ddf.columns))})")
    task = delayed(_frame_task)
    return [task(part, i, columns, options) for i, part in enumerate(ddf[columns.names()].to_delayed())]


def evaluate_tasks(parts: list, client) -> Result | None:
    """Merge the pieces' summaries in a tree and compute it on ``client`` (or Dask's
    current scheduler)."""
    if not parts:
        return None
    root = _tree(parts)
    wire = client.compute(root).result() if client is not None else root.compute()
    return None if wire is None else from_wire(wire)
