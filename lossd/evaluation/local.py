"""Streaming evaluation in this process: each file's record batches, one at a time.

Memory is bounded by the batches in flight, not by the file: the batch being summarised
plus the one pyarrow reads ahead (``batch_readahead=1``), each ``batch_rows`` rows of the
needed columns (8 bytes a number: 2 MiB a column per 2^18 rows; a string key column more),
the Parquet row group being decoded, and the summaries (a sketch of a few KiB each, one
per group with ``by``).
"""

from __future__ import annotations

from .compute import Options, Result, merge, summarize_batch
from .sources import Columns, DataFile, batches, count_rows


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
        for f in files:
            for batch in batches(f, columns, batch_rows):
                acc = merge(acc, summarize_batch(batch, columns, options, f.name))
                if bar is not None:
                    read += batch.nbytes
                    bar.update(batch.rows)
                    bar.set_postfix_str(f"{read / 2**20:,.0f} MiB", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return acc
