"""Dataset files: where they are, what format, their columns checked, read in record batches.

Every file is opened through ``fsspec`` (any URL it knows: ``file://``, ``memory://``,
``s3://`` with its plugin, ...); local paths go to pyarrow's own file system, which reads
with fewer copies. A file is read on its own (not as one dataset), so that a row number
in a message is the row within that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

FORMATS = ("parquet", "ipc", "csv")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc",
               ".csv": "csv"}


class DatasetError(ValueError):
    """A dataset that cannot be evaluated as asked: a missing column, a column of the wrong
    type, a missing value, an unreadable file. The message names the column and the file."""


@dataclass(frozen=True)
class Columns:
    """The dataset's column for each argument of ``summarize`` (None: not used)."""

    predictions: str
    labels: str
    weights: str | None = None
    by: str | None = None

    def names(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.predictions, self.labels, self.weights, self.by) if c))


@dataclass(frozen=True)
class DataFile:
    """One file: its path on ``filesystem`` (a pyarrow FileSystem, picklable to Dask
    workers), its format, and the name a message gives it."""

    path: str
    filesystem: object
    format: str
    name: str


def _pyarrow_fs(fs):
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow.fs import FSSpecHandler, LocalFileSystem as ArrowLocal, PyFileSystem

    return ArrowLocal() if isinstance(fs, LocalFileSystem) else PyFileSystem(FSSpecHandler(fs))


def _format_of(path: str, file_format: str | None) -> str:
    if file_format is not None:
        if file_format not in FORMATS:
            raise DatasetError(f"file_format = {file_format!r} is not one of {', '.join(map(repr, FORMATS))}")
        return file_format
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DatasetError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
                           f"name it with file_format (--file-format): {', '.join(FORMATS)}")
    return _EXTENSIONS[ext]


def resolve(source: str | os.PathLike | list, file_format: str | None = None) -> list[DataFile]:
    """The files of ``source``: paths or URLs, a folder (its files of known extensions, in
    name order) or a glob pattern, or a list of these."""
    import fsspec

    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise DatasetError("no input files given")
    files: list[DataFile] = []
    for item in items:
        url = os.fspath(item)
        fs, path = fsspec.core.url_to_fs(url)
        if any(c in path for c in "*?["):
            paths = sorted(fs.glob(path))
        elif fs.isdir(path):
            paths = sorted(p for p in fs.find(path)
                           if file_format or os.path.splitext(p)[1].lower() in _EXTENSIONS)
        elif fs.exists(path):
            paths = [path]
        else:
            raise DatasetError(f"{url}: no such file")
        if not paths:
            raise DatasetError(f"{url}: no data files in it")
        arrow_fs = _pyarrow_fs(fs)
        for p in paths:
            name = fs.unstrip_protocol(p) if "://" in url else p
            files.append(DataFile(p, arrow_fs, _format_of(p, file_format), name))
    return files


def _short(exc: Exception, limit: int = 300) -> str:
    """pyarrow's message, without the data it sometimes prints after it."""
    text = str(exc).split("\n")[0]
    return text if len(text) <= limit else text[:limit] + "..."


# Numbers: predictions, labels and weights go to the kernels, which take any of these.
def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _check_type(f: DataFile, role: str, name: str, t: pa.DataType) -> None:
    if role == "by":
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise DatasetError(f"column {name!r} (by) of {f.name} is {t}: group keys must be integers or strings")
        return
    if role in ("predictions", "labels") and pa.types.is_fixed_size_list(t):
        t = t.value_type  # N×K: one fixed-size list per row
    if not _numeric(t):
        raise DatasetError(f"column {name!r} ({role}) of {f.name} is {t}, not numbers")


def check_schema(f: DataFile, columns: Columns, schema: pa.Schema) -> None:
    """Every needed column present, of a type its role takes."""
    for role, name in (("predictions", columns.predictions), ("labels", columns.labels),
                       ("weights", columns.weights), ("by", columns.by)):
        if name is None:
            continue
        if name not in schema.names:
            raise DatasetError(f"column {name!r} ({role}) is not in {f.name} (its columns: "
                               f"{', '.join(schema.names)})")
        _check_type(f, role, name, schema.field(name).type)


CSV_BLOCK_BYTES = 1 << 24


def _record_batches(f: DataFile, columns: Columns, batch_rows: int, row_groups: list[int] | None,
                    use_threads: bool) -> Iterator[pa.RecordBatch]:
    """The needed columns, pulled one record batch at a time: a reader decodes a batch
    when asked for it, never ahead (pyarrow's dataset scanner reads ahead as fast as it
    can, and Parquet's pre-buffering fetches every row group of a scan at once)."""
    names = columns.names()
    if f.format == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f.filesystem.open_input_file(f.path), pre_buffer=False)
        check_schema(f, columns, pf.schema_arrow)
        yield from pf.iter_batches(batch_size=batch_rows, row_groups=row_groups, columns=names,
                                   use_threads=use_threads)
    elif f.format == "ipc":
        schema = pa.ipc.open_file(f.filesystem.open_input_file(f.path)).schema
        check_schema(f, columns, schema)
        options = pa.ipc.IpcReadOptions(included_fields=[schema.get_field_index(n) for n in names],
                                        use_threads=use_threads)
        reader = pa.ipc.open_file(f.filesystem.open_input_file(f.path), options=options)
        for i in range(reader.num_record_batches):
            rb = reader.get_batch(i)
            for start in range(0, rb.num_rows, batch_rows):
                yield rb.slice(start, batch_rows)
    else:
        import pyarrow.csv as pacsv

        # Numbers are read as float64 whatever the first block looks like: a column of 0/1
        # labels (inferred int64) may hold 0.5 a million rows later.
        types = {c: pa.float64() for c in (columns.predictions, columns.labels, columns.weights) if c}
        header = pacsv.open_csv(f.filesystem.open_input_stream(f.path),
                                read_options=pacsv.ReadOptions(block_size=1 << 16, use_threads=False))
        check_schema(f, columns, pa.schema([pa.field(n, types.get(n, t)) for n, t in
                                            zip(header.schema.names, header.schema.types)]))
        reader = pacsv.open_csv(f.filesystem.open_input_stream(f.path),
                                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=use_threads),
                                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names))
        for rb in reader:
            for start in range(0, rb.num_rows, batch_rows):
                yield rb.slice(start, batch_rows)


@dataclass
class Batch:
    """One record batch as NumPy arrays for ``summarize``, and its first row in the file."""

    first_row: int
    rows: int
    predictions: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    by: np.ndarray | None
    nbytes: int


def _values(f: DataFile, first_row: int, name: str, arr: pa.Array) -> np.ndarray:
    if arr.null_count:
        row = first_row + int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise DatasetError(f"column {name!r} of {f.name} has a missing value at row {row}")
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        flat = arr.flatten()
        if flat.null_count:
            row = first_row + int(np.flatnonzero(np.asarray(flat.is_null()))[0]) // width
            raise DatasetError(f"column {name!r} of {f.name} has a missing value at row {row}")
        return flat.to_numpy(zero_copy_only=False).reshape(len(arr), width)
    # zero-copy for numbers without nulls; booleans are unpacked from bits
    return arr.to_numpy(zero_copy_only=False)


def _keys(f: DataFile, first_row: int, name: str, arr: pa.Array) -> np.ndarray:
    if arr.null_count:
        row = first_row + int(np.flatnonzero(np.asarray(arr.is_null()))[0])
        raise DatasetError(f"column {name!r} (by) of {f.name} has a missing key at row {row}")
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.to_numpy(zero_copy_only=False)


def to_batch(f: DataFile, columns: Columns, first_row: int, rb: pa.RecordBatch) -> Batch:
    col = {name: rb.column(name) for name in columns.names()}
    return Batch(first_row, rb.num_rows,
                 _values(f, first_row, columns.predictions, col[columns.predictions]),
                 _values(f, first_row, columns.labels, col[columns.labels]),
                 _values(f, first_row, columns.weights, col[columns.weights]) if columns.weights else None,
                 _keys(f, first_row, columns.by, col[columns.by]) if columns.by else None,
                 rb.nbytes)


def batches(f: DataFile, columns: Columns, batch_rows: int, *, row_groups: list[int] | None = None,
            first_row: int = 0, use_threads: bool = True) -> Iterator[Batch]:
    """The file's needed columns in record batches of at most ``batch_rows`` rows (only
    ``row_groups`` of a Parquet file when given, whose first row is ``first_row``)."""
    row = first_row
    try:
        for rb in _record_batches(f, columns, batch_rows, row_groups, use_threads):
            if rb.num_rows == 0:
                continue
            yield to_batch(f, columns, row, rb)
            row += rb.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DatasetError(f"{f.name}: cannot read it as {f.format}: {_short(exc)}") from None


def count_rows(f: DataFile) -> int | None:
    """Rows of a Parquet or IPC file from its metadata; None for CSV (known only by reading)."""
    if f.format == "csv":
        return None
    fmt = pads.ParquetFileFormat() if f.format == "parquet" else pads.IpcFileFormat()
    return pads.dataset(f.path, format=fmt, filesystem=f.filesystem).count_rows()


def parquet_pieces(f: DataFile, target_rows: int) -> list[tuple[list[int], int, int]]:
    """Consecutive row groups of a Parquet file in pieces of about ``target_rows`` rows:
    (row group ids, first row, rows) each; the pieces Dask computes in parallel."""
    import pyarrow.parquet as pq

    with f.filesystem.open_input_file(f.path) as fh:
        meta = pq.ParquetFile(fh).metadata
    pieces, ids, first, rows, start = [], [], 0, 0, 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if ids and rows + n > target_rows:
            pieces.append((ids, first, rows))
            ids, first, rows = [], start, 0
        ids.append(i)
        rows += n
        start += n
    if ids:
        pieces.append((ids, first, rows))
    return pieces
