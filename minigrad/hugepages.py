"""Large host arrays on transparent huge pages (2 MiB) where Linux gives them.

A decode step streams every weight and the KV cache from memory once per token. On 4 KiB pages that
is a TLB miss per 4 KiB; on 2 MiB pages, one per 2 MiB. NumPy advises huge pages itself only for
allocations of 4 MiB or more, and only on memory it has not touched before: under a tuned malloc
(minigrad.models.trainer.tune_malloc keeps freed memory in the heap) a large array may reuse heap
pages already mapped 4 KiB at a time. `empty` maps fresh anonymous memory instead, advises huge
pages before the first touch, and aligns the array to 2 MiB. Measured on the GPT-2-size int8 decode
(minigrad bench generate --weights int8): 8.0 ms/token with the weights on heap pages, 6.4 with them here.
"""
from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 2 << 20


def _mapped(nbytes: int):
    """`nbytes` of fresh zeroed memory (uint8) starting on a 2 MiB boundary, in its own anonymous
    mapping with MADV_HUGEPAGE; None below 2 MiB, without mmap advice, or when the mapping fails."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGE or advice is None:
        return None
    size = -(-(nbytes + HUGE_PAGE) // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:                             # no mapping to be had (a limit): NumPy's own, or its error
        return None
    try:
        m.madvise(advice)
    except OSError:
        pass                                    # no THP in this kernel: plain pages, still correct
    raw = np.frombuffer(m, np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    return raw[start:start + nbytes]


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array starting on a 2 MiB boundary, in its own anonymous mapping
    with MADV_HUGEPAGE (where the platform has it); plain np.empty below 2 MiB, without mmap advice,
    or when the mapping fails. The mapping lives as long as the array (or any view of it)."""
    raw = _mapped(_nbytes(shape, dtype))
    return np.empty(shape, dtype) if raw is None else raw.view(dtype).reshape(shape)


def zeros(shape, dtype) -> np.ndarray:
    """As `empty`, zero-filled (a fresh mapping is zero already: nothing is written)."""
    raw = _mapped(_nbytes(shape, dtype))
    return np.zeros(shape, dtype) if raw is None else raw.view(dtype).reshape(shape)


def pack(arrays, align: int = 4096) -> list:
    """Copies of `arrays`, in order, in one arena from `empty` (huge pages where Linux gives them),
    each C-contiguous and starting on an `align`-byte boundary (the hardware prefetcher stops at page
    ends). The arena lives as long as any of the copies."""
    sizes = [-(-a.nbytes // align) * align for a in arrays]
    raw = empty((sum(sizes) + align,), np.uint8)           # + align: below 2 MiB NumPy's start is not aligned
    off = (-raw.ctypes.data) % align
    out = []
    for a, size in zip(arrays, sizes):
        view = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        out.append(view)
        off += size
    return out
