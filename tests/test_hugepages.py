"""minigrad.hugepages: large host arrays in their own 2 MiB-aligned mappings (huge pages advised).
Whether Linux backs them with huge pages is its choice; what the module promises is tested here:
shape, dtype, alignment, zeros, and a mapping that lives as long as any view of it. The speed it buys
is measured, not asserted (kernels/cpu/quant_bench.py --arena, minigrad bench generate)."""
from __future__ import annotations

import gc
import mmap

import numpy as np
import pytest

from minigrad import hugepages

BIG = (3 << 20) // 4 + 5          # float32 elements: past 2 MiB, not a multiple of a page
needs_madvise = pytest.mark.skipif(getattr(mmap, "MADV_HUGEPAGE", None) is None,
                                   reason="this platform's mmap has no MADV_HUGEPAGE: empty() is np.empty")


@needs_madvise
@pytest.mark.parametrize("shape,dtype", [((BIG,), np.float32), ((3, 1 << 20), np.int8), ((1100, 1024), np.uint16)])
def test_large_arrays_start_on_a_huge_page_boundary(shape, dtype):
    a = hugepages.empty(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % hugepages.HUGE_PAGE == 0
    a[...] = 3                                   # every byte is ours to write
    assert (a == 3).all()


def test_small_arrays_are_plain_numpy():
    a = hugepages.empty((10, 7), np.float64)
    assert a.shape == (10, 7) and a.dtype == np.float64 and a.flags.c_contiguous
    z = hugepages.zeros((5,), np.int32)
    assert z.dtype == np.int32 and not z.any()


@pytest.mark.parametrize("shape", [(BIG,), (16,)])
def test_zeros_are_zero(shape):
    z = hugepages.zeros(shape, np.float32)
    assert z.shape == shape and z.dtype == np.float32 and not z.any()


def test_the_mapping_outlives_the_array_while_a_view_exists():
    a = hugepages.empty((BIG,), np.float32)
    a[...] = np.arange(BIG, dtype=np.float32)
    view = a[-8:]
    del a
    gc.collect()
    assert np.array_equal(view, np.arange(BIG - 8, BIG, dtype=np.float32))


def test_a_failed_mapping_falls_back_to_numpy(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(hugepages.mmap, "mmap", refuse)
    a = hugepages.empty((BIG,), np.float32)
    assert a.shape == (BIG,) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    z = hugepages.zeros((BIG,), np.float32)          # NumPy's zeros then, not uninitialised memory
    assert z.shape == (BIG,) and not z.any()


@pytest.mark.parametrize("sizes", [[(3, 5), (7,), (1000, 300)], [(10,), (20,)]])
def test_pack_copies_each_array_onto_its_own_aligned_start_in_one_arena(sizes):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(dt) for shape, dt in zip(sizes, (np.float32, np.int8, np.float64))]
    views = hugepages.pack(arrays, 4096)
    for a, v in zip(arrays, views):
        assert v.dtype == a.dtype and v.shape == a.shape and v.flags.c_contiguous and np.array_equal(v, a)
        assert v.ctypes.data % 4096 == 0 and not np.shares_memory(v, a)
    spans = sorted((v.ctypes.data, v.ctypes.data + v.nbytes) for v in views)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))    # no overlap
    bases = set()
    for v in views:
        while isinstance(v.base, np.ndarray):
            v = v.base
        bases.add(id(v))
    assert len(bases) == 1                                                        # one arena
