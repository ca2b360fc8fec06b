"""The CPU emulator for the CUDA kernels: cuda_emu.h and its builder."""
