"""CIFAR's python batches are pickles: they are read through an unpickler that allows only
what numpy arrays are made of, so a crafted batch cannot run code."""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io import regular_file
from ..limits import MAX_FILE_BYTES


class _Refused(Exception):
    pass


def _array_globals() -> dict[tuple[str, str], Any]:
    """The only callables a pickled numpy array needs (numpy 1 and 2 module names)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 pickles of contiguous arrays
            allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of numpy arrays and plain values; refuses every other global, so a
    crafted file cannot run code (a __reduce__ payload needs a global such as os.system)."""
    _allowed = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def load_pickle(path: Path) -> Any:
    """A trusted-format pickle (CIFAR batch) read through ArrayUnpickler; UserError otherwise.
    latin1 decodes Python 2 strings as numpy requires; keys may come back as str or bytes."""
    path = regular_file(path, "pickled batch")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"pickled batch {path} is larger than {MAX_FILE_BYTES:,} bytes, the most "
                        "reslab reads")
    try:
        with open(path, "rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise UserError(f"refusing to load '{path}': it references {exc}, which is not part of "
                        "a numpy array (only arrays and plain values are allowed)") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read pickled batch '{path}': {exc}") from None
