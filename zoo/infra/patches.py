"""Export-time patches: context managers around library code, value-preserving, never edits.

Each one rewrites a construct that ``torch.export`` cannot trace symbolically (or that exports
to an op TensorRT rejects) into an equivalent that it can, for the duration of an export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def attention_mask_expand() -> Iterator[None]:
    """``Attention.prepare_attention_mask`` with ``expand`` instead of ``repeat_interleave``.

    The library repeats a ``(B, 1, L)`` mask per head with ``repeat_interleave(heads, dim=0,
    output_size=...)`` and then views it as ``(B, heads, -1, L)``; with a dynamic batch and
    text length the exporter cannot prove that ``-1`` is 1 and fails. ``unsqueeze + expand +
    reshape`` produces the same ``(B*heads, 1, L)`` tensor with shapes it can follow.
    """
    from diffusers.models.attention_processor import Attention

    original = Attention.prepare_attention_mask

    def prepare_attention_mask(self, attention_mask, target_length, batch_size, out_dim=3):
        if (
            attention_mask is None
            or out_dim != 3
            or attention_mask.ndim != 3
            or attention_mask.shape[-1] != target_length
            or attention_mask.shape[0] != batch_size
        ):
            return original(self, attention_mask, target_length, batch_size, out_dim)
        b, q, k = attention_mask.shape
        return attention_mask.unsqueeze(1).expand(b, self.heads, q, k).reshape(b * self.heads, q, k)

    Attention.prepare_attention_mask = prepare_attention_mask
    try:
        yield
    finally:
        Attention.prepare_attention_mask = original
