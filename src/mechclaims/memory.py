"""Handing freed memory back to the operating system between forward passes.

A forward pass allocates and frees hundreds of megabytes of activations. glibc's
allocator keeps freed heap memory for reuse, and its adaptive mmap threshold
moves large blocks onto that heap after the first frees, so a claim run's
resident memory ratchets up pass after pass (SmolLM2's Claim 1 study held 1.86
GB where its live data needed about 1.1). :func:`release_memory` asks glibc to return
free pages (``malloc_trim``); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> bool:
    """Return the allocator's free pages to the operating system (glibc only); whether it asked."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return trim is not None
