"""Compile-once caches of the block functions and drivers, their function pointers,
and ``warmup``."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import numpy as np
from numba.core import types

from . import _drivers as D
from . import _elements as E

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_compiled: dict[tuple, object] = {}
_compile_lock = threading.Lock()


def _compile_once(key: tuple, build, signatures):  # signatures: a callable, built lazily
    """A dispatcher compiled once for ``signatures`` (from the on-disk cache when it
    can), then frozen. Freezing matters twice: writable arrays then convert to the
    read-only signature instead of compiling a second one, and a block function passed
    to a driver converts to the driver's first-class function type instead of
    compiling (and caching) a specialisation for that one dispatcher."""
    fn = _compiled.get(key)
    if fn is None:
        with _compile_lock:
            fn = _compiled.get(key)
            if fn is None:
                fn = build()
                for sig in signatures():
                    fn.compile(sig)
                fn.disable_compile()
                _compiled[key] = fn
    return fn


def _block(kind: int, grad: bool, dtype: np.dtype):
    key = ("block", kind, grad, dtype.char)
    fn = _compiled.get(key)  # the per-call path: no closures built once compiled
    if fn is None:
        fn = _compile_once(key, lambda: D.make_block(kind, int(grad)),
                           lambda: [D.block_signature(dtype)])
    return fn


class _FunctionPointer(types.WrapperAddressProtocol):
    """A compiled function as a first-class function value for the parallel drivers.

    Passing the dispatcher itself works too, but Numba then converts it to a function
    pointer on every call (tens of microseconds of Python); this holds the address of
    the compiled overload's C wrapper, looked up once."""

    def __init__(self, dispatcher, signature) -> None:
        cres = dispatcher.get_compile_result(signature)
        self._address = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
        self._signature = signature
        self._dispatcher = dispatcher  # keeps the code alive

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


_pointers: dict[tuple, _FunctionPointer] = {}


def _pointer(key: tuple, dispatcher, signature) -> _FunctionPointer:
    """The function pointer of a compiled block (``dispatcher`` and ``signature`` are
    callables, only run the first time)."""
    ptr = _pointers.get(key)
    if ptr is None:
        ptr = _pointers[key] = _FunctionPointer(dispatcher(), signature())
    return ptr


def _block_pointer(kind: int, grad: bool, dtype: np.dtype) -> _FunctionPointer:
    return _pointer((kind, grad, dtype.char), lambda: _block(kind, grad, dtype),
                    lambda: D.block_signature(dtype))


def _logreg_pointer(dtype: np.dtype) -> _FunctionPointer:
    return _pointer(("logreg", dtype.char), lambda: _logreg_block(dtype),
                    lambda: D.logreg_block_signature(dtype))



def _driver():
    return _compile_once(("driver", "loss"), lambda: D.run_blocks,
                         lambda: [D.driver_signature(dt) for dt in DTYPES])


def _logreg_block(dtype: np.dtype):
    return _compile_once(("block", "logreg", dtype.char),
                         D.make_logreg_block, lambda: [D.logreg_block_signature(dtype)])


def _logreg_driver():
    return _compile_once(("driver", "logreg"), lambda: D.run_logreg,
                         lambda: [D.logreg_driver_signature(dt) for dt in DTYPES])



WEIGHT_PREP_SIG = types.Tuple((types.int64, types.float64, types.float64, types.float64))(
    types.Array(types.float64, 1, "C", readonly=True), types.boolean)


def _weight_prep():
    return _compile_once(("weights",), lambda: D.weight_prep, lambda: [WEIGHT_PREP_SIG])


def _merges() -> None:
    # the merges compile for the one signature each call site uses
    D.merge_blocks(np.zeros((2, D.N_STATS)), 1.0, 0.0)
    spart = np.zeros((2, 5))
    D.dd_total(spart[:, 0], spart[:, 1])


def _warmup_steps() -> list[tuple[Callable[[], object], int]]:
    """Every compilation warmup() does, in order, with how many signatures each makes."""
    steps: list[tuple[Callable[[], object], int]] = []
    for dt in DTYPES:
        for kind in range(E.N_KINDS):
            for g in (False, True):
                steps.append((functools.partial(_block_pointer, kind, g, dt), 1))
        steps.append((functools.partial(_logreg_pointer, dt), 1))
    steps += [(_driver, len(DTYPES)), (_logreg_driver, len(DTYPES)), (_weight_prep, 1), (_merges, 2)]
    return steps


def warmup(progress: Callable[[int, int], None] | None = None) -> int:
    """Compile (or load from the on-disk cache) every block function and driver the
    public functions can dispatch to, and the helpers they call; returns how many
    signatures are ready. ``progress(done, total)`` is called after each step, from this
    thread (a first compile takes minutes, a load from the cache about a second)."""
    steps = _warmup_steps()
    total = sum(n for _, n in steps)
    done = 0
    for step, n in steps:
        step()
        done += n
        if progress is not None:
            progress(done, total)
    return total

