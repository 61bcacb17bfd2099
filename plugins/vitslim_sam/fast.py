"""A fused attention for SAM's image encoder: one scaled_dot_product_attention call per block.

SAM's own attention materialises q.k^T, adds the decomposed rel-pos terms into it and takes a softmax,
each a (heads, N, N) tensor (N = 4096 in the global blocks at 1024x1024). Here the rel-pos terms are
built once as an additive mask and handed to ``scaled_dot_product_attention`` with the module's own
scale, which fuses the add, the softmax and attn.v. Same numbers (fp32: within 1e-5), fewer passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


class FusedAttention(Attention):
    """Drop-in for ``segment_anything``'s ``Attention`` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        bias = None
        if self.use_rel_pos:
            rel_h = get_rel_pos(H, H, self.rel_pos_h)
            rel_w = get_rel_pos(W, W, self.rel_pos_w)
            r_q = q.reshape(B, heads, H, W, -1)
            bh = torch.einsum("bnhwc,hkc->bnhwk", r_q, rel_h)
            bw = torch.einsum("bnhwc,wkc->bnhwk", r_q, rel_w)
            bias = (bh.unsqueeze(-1) + bw.unsqueeze(-2)).reshape(B, heads, H * W, H * W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, -1))


def fuse_attention(encoder: torch.nn.Module) -> int:
    """Switch every SAM ``Attention`` in ``encoder`` to :class:`FusedAttention`; returns how many."""
    n = 0
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = FusedAttention
            n += 1
    return n
