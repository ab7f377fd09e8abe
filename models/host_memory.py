"""Keeping the process's freed memory for the next step while a model trains on the CPU.

A training step allocates and frees the same large buffers every time: the word-embedding gradient
(30,522 x 384 floats for MiniLM, 47 MB), the attention scores and their dropout masks, the
activations kept for the backward pass. glibc's ``malloc`` serves a block above its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and returns it to the kernel on ``free``, and gives the top of
its heap back once more than twice that is free. Each step then pays a page fault, and the kernel's
zeroing, for every page of those buffers: on a Sapphire Rapids with two threads, filling the
embedding gradient's fresh pages took 83 ms of a 530 ms MiniLM step.

:func:`kept_host_memory` stops both while a run trains (``M_MMAP_MAX`` 0: large blocks come from
the heap; ``M_TRIM_THRESHOLD`` at its maximum: the heap is not trimmed), so the second step reuses
the first step's pages. The same step took 392 ms (1.36x; ``bench/train_bench.py`` prints the
figure on its machine). On leaving, the defaults come back and :func:`malloc_trim` returns what is
free to the kernel, so a long-lived process does not keep a run's peak. The arithmetic is
unchanged: the same seed gives the same weights with it and without it (tested).

Only glibc has these knobs (``mallopt``); elsewhere (macOS, musl) this does nothing and says so in
what it returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("refit.train")

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
_lock = threading.Lock()
_holders = 0


def _glibc():
    """glibc's ``mallopt`` and ``malloc_trim``, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def kept_host_memory(enabled: bool = True) -> Iterator[str]:
    """Within the block, freed memory stays in the process for reuse (see the module doc); yields
    ``"kept"``, or ``"system"`` where it is not ``enabled`` or the C library is not glibc. Nested and
    concurrent holders share one hold: the defaults come back when the last one leaves."""
    global _holders
    libc = _glibc() if enabled else None
    if libc is None:
        yield "system"
        return
    with _lock:
        held = _holders > 0 or _hold(libc)
        _holders += held
    if not held:
        log.info("could not keep freed memory for reuse (mallopt refused); training as usual")
        yield "system"
        return
    try:
        yield "kept"
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _restore(libc)


def _hold(libc) -> bool:
    """Large blocks from the heap, and no trimming; the defaults again where glibc refuses either."""
    if libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD) == 1:
        return True
    _restore(libc)
    return False


def _restore(libc) -> None:
    """glibc's defaults, and what is free handed back to the kernel."""
    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
