"""timm layers that assume their attention width equals the embedding width, made to work at any width.

``EvaAttention`` and ``AttentionPoolLatent`` reshape their attention output to the *input* width, and
``EvaAttention`` adds its q/v biases through a functional ``F.linear``. Both are fine while the widths
are equal and nothing traces the model; after pruning they differ, and torch-pruning's dependency graph
cannot see a layer that is not called. The subclasses here compute the same functions (tested to 1e-6)
with their own width and real layer calls; the family switches a model's modules to them in place
(:func:`adopt`; parameters and state dict unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent, apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import nn


class EvaAttentionAnyWidth(EvaAttention):
    """``EvaAttention`` whose output width is ``num_heads * head_dim``, not the input's."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            qkv = self.qkv(x)
            if self.q_bias is not None:
                qkv = qkv + torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (proj(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if is_causal:
                attn = attn.masked_fill(torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            if attn_mask is not None:
                attn = attn + attn_mask if attn_mask.dtype != torch.bool else attn.masked_fill(~attn_mask, float("-inf"))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class AttentionPoolAnyWidth(AttentionPoolLatent):
    """``AttentionPoolLatent`` (SigLIP's and PE's ``map`` head) whose attention output width is
    ``num_heads * head_dim``, not the input's."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        if self.pos_embed is not None:
            x = x + self.pos_embed.unsqueeze(0).to(x.dtype)
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, self.latent_len, self.num_heads, self.head_dim)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q.transpose(1, 2)), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = (attn if attn_mask is None else attn + attn_mask).softmax(dim=-1) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, self.latent_len, self.num_heads * self.head_dim)))
        if self.mlp is not None:
            x = x + self.mlp(self.norm(x))
        if self.pool == "token":
            return x[:, 0]
        return x.mean(1) if self.pool == "avg" else x


_ANY_WIDTH = {EvaAttention: EvaAttentionAnyWidth, AttentionPoolLatent: AttentionPoolAnyWidth}


def adopt(module: nn.Module | None) -> None:
    """Switch a timm layer listed above to its any-width subclass in place (same parameters)."""
    if type(module) in _ANY_WIDTH:
        module.__class__ = _ANY_WIDTH[type(module)]
