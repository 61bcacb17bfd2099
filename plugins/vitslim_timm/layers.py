"""timm layers that assume their attention width equals the embedding width, made to work at any width.

``EvaAttention``, BEiT's ``Attention``, ``RelPosAttention`` and ``AttentionPoolLatent`` reshape their
attention output to the *input* width, and EVA and BEiT (unless ``qkv_bias_separate``) add their q/v
biases through a functional ``F.linear``. Both are fine while the widths are equal and nothing traces
the model; after pruning they differ, and torch-pruning's dependency graph cannot see a layer that is
not called. The subclasses here compute the same functions (tested to 1e-5) with their own width and
real layer calls; the family switches a model's modules to them in place (:func:`adopt`; parameters and
state dict unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent, apply_rot_embed_cat
from timm.layers.attention import resolve_self_attn_mask
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn


def _qkv_with_biases(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``qkv(x)`` plus EVA's / BEiT's separate q and v biases (k has none), with ``qkv`` called as a layer."""
    qkv = attn.qkv(x)
    if attn.q_bias is None:
        return qkv
    return qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None, is_causal: bool = False) -> torch.Tensor:
    """Softmax attention with a mask (additive or boolean; None: none), fused or not as the layer says."""
    if attn.fused_attn:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=attn.attn_drop.p if attn.training else 0.0)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    bias = resolve_self_attn_mask(q.shape[-2], scores, mask, is_causal)
    return attn.attn_drop((scores if bias is None else scores + bias).softmax(dim=-1)) @ v


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads * head_dim)."""
    B, _, N, _ = x.shape
    return x.transpose(1, 2).reshape(B, N, -1)


class EvaAttentionAnyWidth(EvaAttention):
    """``EvaAttention`` whose output width is ``num_heads * head_dim``, not the input's."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            qkv = _qkv_with_biases(self, x)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (proj(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        x = self.norm(_merge_heads(_attend(self, q, k, v, attn_mask, is_causal)))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class BeitAttentionAnyWidth(BeitAttention):
    """BEiT's ``Attention`` (q/v biases, per-block and shared relative position bias tables) at any width."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = _qkv_with_biases(self, x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        return self.proj_drop(self.proj(_merge_heads(_attend(self, q, k, v, bias))))


class RelPosAttentionAnyWidth(RelPosAttention):
    """``RelPosAttention`` (a per-block or shared relative position bias, from a table or an MLP) at any width."""

    def forward(self, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        return self.proj_drop(self.proj(_merge_heads(_attend(self, q, k, v, bias))))


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


class _Copy(nn.Module):
    """``x.clone()``: what NaFlexVit's patch embedding normalises with when it has no norm, so that its
    in-place position-embedding add does not overwrite the projection's output (which would hide the
    projection from torch-pruning's dependency graph). No parameters; the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


_ANY_WIDTH = {EvaAttention: EvaAttentionAnyWidth, BeitAttention: BeitAttentionAnyWidth,
              RelPosAttention: RelPosAttentionAnyWidth, AttentionPoolLatent: AttentionPoolAnyWidth}


def adopt(module: nn.Module | None) -> None:
    """Switch a timm layer listed above to its any-width subclass in place, or give NaFlexVit's patch
    embedding a traceable norm (same parameters, same function)."""
    if type(module) in _ANY_WIDTH:
        module.__class__ = _ANY_WIDTH[type(module)]
    elif type(module).__name__ == "NaFlexEmbeds" and isinstance(module.norm, nn.Identity):
        module.norm = _Copy()
