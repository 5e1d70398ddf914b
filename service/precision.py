"""The contract's ``dtype`` option, identical on every path and transport.

``dtype: "float32"`` makes the request's float arrays (``predictions``, ``labels``,
``sample_weight``) float32 values: each value, as read in float64, is rounded to the
nearest float32 (NumPy's ``astype``), and a finite value beyond the float32 range is
refused rather than silently becoming infinite. The kernels still compute in float64
and return the per-element arrays as float32. Narrowing happens here, after decoding,
so that the JSON fast and slow paths and both OIP encodings give the same bits.
"""

from __future__ import annotations

import numpy as np

from .errors import RequestError

NARROWED = ("predictions", "labels", "sample_weight")


def to_float32(wide: np.ndarray) -> tuple[np.ndarray, int | None]:
    """``wide`` as float32, and the flat index of the first finite value that became
    infinite (it would silently change the loss), or None."""
    with np.errstate(over="ignore"):  # overflow is found (and named by the caller) below
        narrow = wide.astype(np.float32)
    if np.isfinite(narrow).all():
        return narrow, None
    over = (np.isinf(narrow) & np.isfinite(wide)).reshape(-1)
    return narrow, (int(np.flatnonzero(over)[0]) if over.any() else None)


def narrow(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 values; 422 naming ``name`` and the index of an overflow.

    Integers and booleans go through float64 first, as JSON numbers do, so a label
    array gives the same values whichever way it travelled."""
    if arr.dtype == np.float32:
        return arr
    wide = arr if arr.dtype.kind == "f" else arr.astype(np.float64)
    out, bad = to_float32(wide)
    if bad is not None:
        where = tuple(int(i) for i in np.unravel_index(bad, arr.shape))
        at = "[" + ", ".join(map(str, where)) + "]"  # the kernels' spelling: [1, 2]
        raise RequestError.at((name, *where), f"{name}{at} = {float(wide[where])!r} is beyond the "
                              'float32 range (dtype = "float32")', kind="value_error")
    return out
