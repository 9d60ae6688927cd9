"""TinyViT's window attention as it was before the fused kernel (2026-12-07): scores written
out, softmax, then the product with v. The speed benches time it as "before" beside the library's
:meth:`dorl.sam.tiny_vit.WindowAttention.attend` ("after"); the outputs are the same to float
rounding (``tests/test_sam_models.py`` checks the library against this formula)."""

from __future__ import annotations

import contextlib

from dorl.sam import tiny_vit


def written_out_attend(self, q, k, v):
    """softmax(q k^T * scale + bias) v of (windows, heads, n, head_dim) q, k, v, the scores
    materialised."""
    attn = (q * self.scale) @ k.transpose(-2, -1)
    return (attn + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1) @ v


@contextlib.contextmanager
def written_out_attention():
    """Every TinyViT window attention runs :func:`written_out_attend` inside the block."""
    fused = tiny_vit.WindowAttention.attend
    tiny_vit.WindowAttention.attend = written_out_attend
    try:
        yield
    finally:
        tiny_vit.WindowAttention.attend = fused
