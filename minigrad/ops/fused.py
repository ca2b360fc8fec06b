"""Fused transformer ops: a GPT's MLP and its multi-head self-attention, each as one op.

Each has a readable reference (NumPy/CuPy forward, Tensor-op backward) and faster variants
declared below it. Built by F.gelu_mlp and F.qkv_self_attention.
"""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import as_dtype, device_of
from ._util import xp_of
from .activations import normal_cdf_pdf
from .attention import (attention_grads, attention_reference, attention_vjp, causal_mask, half_kernels_run_on,
                        kernel_head_dim, softmax_ds_)
from .linalg import Linear
from .shape import Concatenate
from .special import gelu_and_slope


class GeluMLP(Function):
    """y = gelu(x W1ᵀ + b1) W2ᵀ + b2 with the exact GELU: a transformer's MLP as one op.

    x (N, C), W1 (H, C), W2 (C2, H), b1 (H,) and b2 (C2,) optional (flags has_b1, has_b2) ->
    y (N, C2). Keeps a = gelu(h) and the GELU slope, both (N, H). The native variant computes the
    activation in place (GELU overwrites the first GEMM's output) and the first-order backward
    scales the second GEMM's dx by the slope in place, so neither pass makes a second (N, H)
    array: each fresh array costs a cache-cold write.
    """

    def forward(self, x, w1, w2, *biases, has_b1=False, has_b2=False):
        if not x.dtype == w1.dtype == w2.dtype:
            raise TypeError(f"gelu_mlp: dtype mismatch, input {x.dtype} and weights {w1.dtype}, {w2.dtype}")
        self.has_b1, self.has_b2 = has_b1, has_b2
        b1 = biases[0] if has_b1 else None
        b2 = biases[-1] if has_b2 else None
        h = x @ w1.T                                          # (N, H)
        if b1 is not None:
            h += b1
        self.a, self.slope = self._gelu(h)                    # a = gelu(h), (N, H)
        y = self.a @ w2.T                                     # (N, C2)
        if b2 is not None:
            y += b2
        return y

    @staticmethod
    def _gelu(h):
        return gelu_and_slope(h)

    def backward(self, g):
        """The first-order formulas in Tensor ops, h and the slope recomputed from x (create_graph)."""
        x, w1, w2 = self.inputs[:3]
        b1 = self.inputs[3] if self.has_b1 else None
        h = Linear.apply(x, w1, b1) if b1 is not None else Linear.apply(x, w1)
        cdf, pdf = normal_cdf_pdf(h)
        a = h * cdf
        slope = cdf + h * pdf
        dh = (g @ w2) * slope
        grads = [dh @ w1, dh.swapaxes(0, 1) @ x, g.swapaxes(0, 1) @ a]
        if self.has_b1:
            grads.append(dh.sum(axis=0))
        if self.has_b2:
            grads.append(g.sum(axis=0))
        return tuple(grads)

    def backward_arrays(self, g):
        """da = g W2; dh = da ∘ slope (in place); dx = dh W1, dW1 = dhᵀ x, dW2 = gᵀ a; biases: row sums."""
        x, w1, w2 = self.inputs[:3]
        b1 = self.inputs[3] if self.has_b1 else None
        b2 = self.inputs[-1] if self.has_b2 else None
        da = g @ w2.data                                      # (N, H)
        dw2 = g.T @ self.a if w2.requires_grad else None
        db2 = g.sum(axis=0) if b2 is not None and b2.requires_grad else None
        da *= self.slope                                      # dh, in place
        dx = da @ w1.data if x.requires_grad else None
        dw1 = da.T @ x.data if w1.requires_grad else None
        db1 = da.sum(axis=0) if b1 is not None and b1.requires_grad else None
        return tuple([dx, dw1, dw2] + ([db1] if self.has_b1 else []) + ([db2] if self.has_b2 else []))


@GeluMLP.variant("native")
class GeluMLPNative(GeluMLP):
    """GELU in place on the first GEMM's output, by the native loop (kernels/cpu/gelu.cpp)."""

    @staticmethod
    def takes(x, w1, w2, *biases, has_b1=False, has_b2=False):
        return dispatch.cpu_native(x, w1, w2, *biases) is not None

    @staticmethod
    def _gelu(h):
        return dispatch.cpu_native(h).gelu(h, out=h)          # h becomes a = gelu(h)


class QKVAttention(Function):
    """Multi-head self-attention on a packed projection.

    qkv (B, T, 3C) = [q | k | v] along the last axis; each part is split into n_head heads of
    hs = C // n_head -> y (B, T, C), the heads' attention outputs side by side. Equal to
    scaled_dot_product_attention per head. The reference keeps p (B, n_head, T, T).
    """

    def forward(self, qkv, n_head, is_causal, scale):
        self.n_head, self.is_causal, self.scale = n_head, is_causal, scale
        b, t, c3 = qkv.shape
        q, k, v = self._heads(qkv)                                    # 3 × (B, nh, T, hs)
        mask = causal_mask(xp_of(qkv), t, t) if is_causal else None
        o, self.p = attention_reference(q, k, v, mask, scale)        # (B, nh, T, hs)
        return o.transpose(0, 2, 1, 3).reshape(b, t, c3 // 3)

    @staticmethod
    def autocast_half_storage(inputs, kwargs, half) -> bool:
        """Under autocast: True when the kernel variant takes qkv cast to ``half`` (see
        Attention.autocast_half_storage): it then gets the half array."""
        qkv = inputs[0].data
        return QKVAttentionKernel.fits(qkv, kwargs["n_head"], as_dtype(half))

    def _heads(self, qkv):
        """Views q, k, v (B, nh, T, hs) of the packed array (or Tensor)."""
        b, t, c3 = qkv.shape
        heads = qkv.reshape((b, t, 3, self.n_head, c3 // 3 // self.n_head)).transpose((2, 0, 3, 1, 4))
        return heads[0], heads[1], heads[2]

    def _pack(self, dq, dk, dv, xp):
        """(B, nh, T, hs) × 3 -> (B, T, 3C), the layout of qkv."""
        b, nh, t, hs = dq.shape
        return xp.stack((dq, dk, dv)).transpose(1, 3, 0, 2, 4).reshape(b, t, 3 * nh * hs)

    def _head_grad(self, g):
        """dL/dy (B, T, C) as per-head gradients (B, nh, T, hs)."""
        b, t, c = g.shape
        return g.reshape((b, t, self.n_head, c // self.n_head)).transpose((0, 2, 1, 3))

    def backward(self, g):
        """The attention vector-Jacobian product per head in Tensor ops (differentiable)."""
        qkv = self.inputs[0]
        b, t, c3 = qkv.shape
        mask = causal_mask(xp_of(qkv.data), t, t) if self.is_causal else None
        grads = attention_vjp(*self._heads(qkv), self._head_grad(g), mask, self.scale)  # 3 × (B, nh, T, hs)
        d = Concatenate.apply(*(d.expand_dims(0) for d in grads), axis=0)               # (3, B, nh, T, hs)
        return (d.transpose((1, 3, 0, 2, 4)).reshape((b, t, c3)),)

    def backward_arrays(self, g):
        q, k, v = self._heads(self.inputs[0].data)
        grads = attention_grads(q, k, v, self.p, self._head_grad(g), lambda ds, p: softmax_ds_(ds, p, self.scale))
        return (self._pack(*grads, xp_of(g)),)


@QKVAttention.variant("kernel")
class QKVAttentionKernel(QKVAttention):
    """The fused CUDA attention kernels per head: kernels/attention.cu for float32/float64 (16 <= hs
    <= 128), kernels/attention_v2.cu for float16/bfloat16 (hs <= 128). The heads are copied out of
    the packed array; only o and the row log-sum-exps are kept."""

    @staticmethod
    def takes(qkv, n_head, is_causal, scale):
        return QKVAttentionKernel.fits(qkv, n_head, qkv.dtype)

    @staticmethod
    def fits(qkv, n_head, dtype) -> bool:
        """Whether the kernels take qkv as ``dtype`` (its own, or the type autocast would cast it to)."""
        return (kernel_head_dim(dtype, qkv.shape[-1] // 3 // n_head) and dispatch.use_kernels(device_of(qkv))
                and (dtype.itemsize > 2 or half_kernels_run_on(qkv)))

    def forward(self, qkv, n_head, is_causal, scale):
        self.n_head, self.is_causal, self.scale = n_head, is_causal, scale
        xp = xp_of(qkv)
        b, t, c3 = qkv.shape
        q, k, v = (xp.ascontiguousarray(h) for h in self._heads(qkv))
        self.o, self.lse = dispatch.launchers().attention_forward(q, k, v, is_causal=is_causal, scale=scale)
        return self.o.transpose(0, 2, 1, 3).reshape(b, t, c3 // 3)

    def backward_arrays(self, g):
        xp = xp_of(g)
        q, k, v = (xp.ascontiguousarray(h) for h in self._heads(self.inputs[0].data))
        grads = dispatch.launchers().attention_backward(q, k, v, self.o, self.lse,
                                                        xp.ascontiguousarray(self._head_grad(g), dtype=q.dtype),
                                                        is_causal=self.is_causal, scale=self.scale)
        return (self._pack(*grads, xp),)


@QKVAttention.variant("native")
class QKVAttentionNative(QKVAttention):
    """One native pass each way (kernels/cpu/attention_cpu.cpp) that reads the heads in place (no
    transposed copies) and keeps only y and the row log-sum-exps (B, n_head, T), no (T, T) array."""

    @staticmethod
    def takes(qkv, n_head, is_causal, scale):
        return dispatch.cpu_native(qkv) is not None

    def forward(self, qkv, n_head, is_causal, scale):
        self.n_head, self.is_causal, self.scale = n_head, is_causal, scale
        self.lib = dispatch.cpu_native(qkv)
        self.y, self.lse = self.lib.qkv_attention_forward(qkv, n_head, is_causal, scale)
        return self.y

    def backward_arrays(self, g):
        qkv = self.inputs[0].data
        dy = np.ascontiguousarray(g, dtype=qkv.dtype)
        return (self.lib.qkv_attention_backward(qkv, self.y, self.lse, dy, self.n_head, self.is_causal, self.scale),)
