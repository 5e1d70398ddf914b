"""Loss summaries of whole datasets (``lossd eval``, ``lossd.evaluate``): Parquet, Arrow IPC
and CSV files streamed in record batches with pyarrow, or evaluated on Dask.

Needs the ``eval`` extra (``pip install 'lossd[eval]'``: pyarrow, dask[dataframe],
distributed, fsspec, tqdm). Nothing heavy is imported here, so ``lossd eval --help``
stays fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from lossd.kernels import LossSummary

BATCH_ROWS = 1 << 20  # rows per record batch: 8 MiB per float64 column


def evaluate(source, *, predictions: str, labels: str, weights: str | None = None, by: str | None = None,
             input: str = "logits", loss: str = "cross_entropy", pos_weight=None,
             label_smoothing: float = 0.0, eps: float | None = None, gamma: float = 2.0,
             alpha: float | None = None, dtype: str = "float64", sketch: bool = True,
             file_format: str | None = None,
             scheduler: str | None = None, workers: int | None = None, progress: bool = False,
             batch_rows: int = BATCH_ROWS) -> Union["LossSummary", dict]:
    """The loss summary of a dataset: ``LossSummary`` (``.loss``, ``.stats()``, ``.count``,
    ...), or ``{key: LossSummary}`` with ``by`` (a column of integer or string keys).

    ``source``: a path or URL (any ``fsspec`` URL; a folder or glob pattern means its
    files), a list of them, or a ``dask.dataframe.DataFrame``. Files are Parquet, Arrow IPC
    (Feather) or CSV by extension, or as ``file_format`` says. ``predictions``, ``labels``,
    ``weights`` (``sample_weight``) and ``by`` name columns; the loss options are
    ``kernels.loss``'s; ``sketch=False`` leaves out the KLL quantile sketch (most of the
    cost; ``quantile`` then raises). Each file is streamed in record batches of ``batch_rows`` rows in
    this process; with ``scheduler`` (a Dask scheduler's address) or ``workers`` (a local
    cluster of that many one-thread processes) the pieces are summarised by Dask and merged
    in a tree. A DataFrame runs on Dask's current scheduler unless one is named.

    Raises ``DatasetError`` (a ``ValueError``) for missing or mistyped columns, missing
    values or unreadable files, naming the column and file, and the kernels' ``InputError``
    for bad values, with the row within its file as index. A dataset without rows gives
    an empty summary (count 0).
    """
    from lossd.kernels import LossSummary

    from .compute import Options
    from .sources import Columns, DatasetError, resolve

    if batch_rows < 1:
        raise DatasetError(f"batch_rows = {batch_rows} must be >= 1")
    if workers is not None and workers < 1:
        raise DatasetError(f"workers = {workers} must be >= 1")
    if scheduler is not None and workers is not None:
        raise DatasetError("give scheduler or workers, not both")
    columns = Columns(predictions, labels, weights, by)
    options = Options(input, loss, pos_weight, label_smoothing, eps, gamma, alpha, dtype, sketch)
    frame = _is_dask_frame(source)
    if frame or scheduler is not None or workers is not None:
        from . import on_dask

        with on_dask.client_for(scheduler, workers) as client:
            if frame:
                parts = on_dask.frame_tasks(source, columns, options)
            else:
                files = resolve(source, file_format)
                threads = sum(client.nthreads().values()) if client is not None else os.cpu_count() or 1
                parts = on_dask.file_tasks(files, columns, options, batch_rows,
                                           on_dask.piece_rows_for(files, threads))
            result = on_dask.evaluate_tasks(parts, client)
    else:
        from .local import evaluate_files

        result = evaluate_files(resolve(source, file_format), columns, options, batch_rows, progress)
    if result is None:
        return {} if by is not None else LossSummary.empty()
    return result


def _is_dask_frame(source) -> bool:
    if isinstance(source, (str, os.PathLike, list, tuple)):
        return False
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(source, dd.DataFrame)


__all__ = ["evaluate", "BATCH_ROWS"]
