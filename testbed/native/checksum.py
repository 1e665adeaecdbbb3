"""The masked CRC-32C that frames every TensorBoard record, compiled (``checksum.cpp``): tensorboard's
own, in pure Python, cost about 5 microseconds a scalar, a third of what logging one costs. Without
the library (no compiler, TESTBED_KERNEL=torch) tensorboard's function computes the same number."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as python_masked_crc32c

from testbed.native import compiled_library

SOURCE = Path(__file__).with_name("checksum.cpp")


@lru_cache(maxsize=1)
def masked_crc32c_function() -> Callable[[bytes], int]:
    """``masked_crc32c(data) -> int``: the compiled one where the library builds, else tensorboard's."""
    library = compiled_library(SOURCE, {"masked_crc32c": [ctypes.c_char_p, ctypes.c_size_t]}, typed=False)
    if library is None:
        return python_masked_crc32c
    compiled = library.masked_crc32c
    compiled.restype = ctypes.c_uint32
    return lambda data: compiled(data, len(data))
