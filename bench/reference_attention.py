"""TinyViT's window attention as it was before the fused kernel (2026-12-07): scores written
out, softmax, then the product with v. The speed benches time it as "before" beside the library's
:class:`dorl.sam.tiny_vit.WindowAttention` ("after"); the outputs are the same to float rounding
(``tests/test_sam_models.py`` checks the library against this formula)."""

from __future__ import annotations

import contextlib

from dorl.sam import tiny_vit


def written_out_forward(self, x):
    """(B, H, W, C) -> (B, H, W, C), attention scores materialised."""
    b, h, w, c = x.shape
    ws = self.window_size
    qkv = self.qkv(self.norm(x))
    pad_b, pad_r = (-h) % ws, (-w) % ws
    if pad_b or pad_r:
        filler = self.qkv(self.norm.bias[None]).to(qkv.dtype)
        padded = filler.expand(b, h + pad_b, w + pad_r, 3 * c).clone()
        padded[:, :h, :w] = qkv
        qkv = padded
    nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
    windows = qkv.view(b, nh, ws, nw, ws, 3 * c).transpose(2, 3)
    windows = windows.reshape(-1, ws * ws, self.num_heads, 3 * self.head_dim)
    q, k, v = windows.transpose(1, 2).split(self.head_dim, dim=3)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = (attn + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, nh, nw, ws, ws, c)
    out = out.transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
    return self.proj(out[:, :h, :w])


@contextlib.contextmanager
def written_out_attention():
    """Every TinyViT window attention runs :func:`written_out_forward` inside the block."""
    fused = tiny_vit.WindowAttention.forward
    tiny_vit.WindowAttention.forward = written_out_forward
    try:
        yield
    finally:
        tiny_vit.WindowAttention.forward = fused
