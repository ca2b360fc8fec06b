"""Native CPU loops for minigrad's hot non-matmul ops: see native.py (loader) and fast_cpu.cpp."""
