"""A fused attention for SAM's image encoder: the rel-pos terms go into a fused attention kernel.

SAM's own attention materialises q.k^T, adds the decomposed rel-pos terms into it and takes a softmax,
each a (heads, N, N) tensor (N = 4096 in the global blocks at 1024x1024). Here the two small rel-pos
tables (``bh``: N x H, ``bw``: N x W per head) are handed to a fused kernel. Kernels:

- ``sdpa``: one ``scaled_dot_product_attention`` call with the terms expanded into an additive mask;
- ``chunked``: the same, one block of queries at a time, so each block's mask stays in the CPU's cache
  (forward: 1.9x faster than ``sdpa`` on a SAM-B 0.77 global block on the CPU; under autograd larger
  blocks, as fast as ``sdpa`` with a lower peak: see ``benchmarks/attention.py`` and docs/results.md);
- ``flex``: ``flex_attention`` (compiled once per shape) with a ``score_mod`` that reads the two
  tables, so no mask is ever materialised; head dims below 16 are zero-padded to 16 (the GPU lowering
  needs 16; the scale is passed explicitly, so the result is unchanged);
- ``auto`` (default): ``chunked`` on the CPU (forward and backward; also under ``torch.compile``,
  which unrolls the blocks: 1285 ms vs 1892 ms for ``sdpa`` on SAM-B 0.77), ``sdpa`` on a GPU. Any
  kernel records ``sdpa`` when traced for ONNX export.

All compute what the plain module computes (fp32: within 1e-5) with the same parameters and state dict.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from vitslim.errors import UsageError

KERNELS = ("auto", "sdpa", "chunked", "flex")
MASK_BLOCK_BYTES = 8 << 20  # one query block's mask in ``chunked``: about a quarter of a server CPU's L3
# Under autograd each block's attention weights live until the backward pass; blocks above glibc's
# largest mmap threshold (32 MB) are returned to the system when freed instead of fragmenting the heap
# (8 MB blocks doubled the resident peak of a SAM-B training step).
TRAINING_BLOCK_BYTES = 64 << 20


def rel_pos_mask(bh: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """The additive (B, heads, N, H*W) mask the two tables stand for: ``bh[n, i] + bw[n, j]``."""
    return (bh.unsqueeze(-1) + bw.unsqueeze(-2)).flatten(-2)


def attend_masked(q, k, v, bh, bw, scale: float) -> torch.Tensor:
    """Attention with the rel-pos terms expanded into one additive (B, heads, N, N) mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=rel_pos_mask(bh, bw), scale=scale)


def attend_chunked(q, k, v, bh, bw, scale: float) -> torch.Tensor:
    """:func:`attend_masked` over blocks of queries whose masks are about ``MASK_BLOCK_BYTES`` each
    (``TRAINING_BLOCK_BYTES`` when gradients are needed)."""
    B, heads, N, _ = q.shape
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, bh, bw))
    block_bytes = TRAINING_BLOCK_BYTES if training else MASK_BLOCK_BYTES
    rows = max(16, block_bytes // (B * heads * N * q.element_size()))
    if rows >= N:
        return attend_masked(q, k, v, bh, bw, scale)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    if training:
        # Under autograd the CPU's SDPA takes its math path, which saves a contiguous copy of k^T and v
        # per call; here both are laid out once and every block's matmuls keep views of them.
        k_t, v = k.transpose(-2, -1).contiguous(), v.contiguous()
        for start in range(0, N, rows):
            block = slice(start, start + rows)
            mask = rel_pos_mask(bh[:, :, block], bw[:, :, block])
            scores = torch.baddbmm(mask.flatten(0, 1), (q[:, :, block] * scale).flatten(0, 1), k_t.flatten(0, 1))
            out[:, :, block] = (scores.softmax(-1) @ v.flatten(0, 1)).view(B, heads, -1, v.shape[-1])
        return out
    for start in range(0, N, rows):
        block = slice(start, start + rows)
        out[:, :, block] = attend_masked(q[:, :, block], k, v, bh[:, :, block], bw[:, :, block], scale)
    return out


FLEX_MIN_HEAD_DIM = 16  # inductor's GPU flex_attention lowering refuses smaller head dims
FLEX_RECOMPILE_LIMIT = 64  # one compilation per attention shape; per-block widths give many


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    from vitslim.device import compile_cache_per_capability

    compile_cache_per_capability()
    return torch.compile(flex_attention, dynamic=False)  # CPU inductor fails on dynamic shapes (2.14)


def attend_flex(q, k, v, bh, bw, scale: float) -> torch.Tensor:
    """``flex_attention`` whose ``score_mod`` adds ``bh[query, key row] + bw[query, key column]``."""
    width, head_dim = bw.shape[-1], v.shape[-1]
    if head_dim < FLEX_MIN_HEAD_DIM:  # zero channels add nothing to q.k; padded outputs are cut off
        q, k, v = (F.pad(t, (0, FLEX_MIN_HEAD_DIM - head_dim)) for t in (q, k, v))

    def rel_pos(score, b, h, query, key):
        return score + bh[b, h, query, key // width] + bw[b, h, query, key % width]

    # dynamo's default allows 8 compilations per function before it silently runs flex_attention
    # unfused; a globally ranked model has a shape per block
    with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
        out = _compiled_flex_attention()(q, k, v, score_mod=rel_pos, scale=scale)
    return out[..., :head_dim]


ATTEND = {"sdpa": attend_masked, "chunked": attend_chunked, "flex": attend_flex}


def split_heads(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of SAM attention ``attn`` for ``x`` (B, H, W, dim), each (B, heads, H*W, head_dim)."""
    B, H, W, _ = x.shape
    return attn.qkv(x).reshape(B, H * W, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def rel_pos_terms(attn: Attention, q: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed rel-pos terms as two tables: ``bh`` (B, heads, N, H) and ``bw`` (B, heads, N, W),
    so that the bias of query n and key (row i, column j) is ``bh[n, i] + bw[n, j]``."""
    B, heads = q.shape[:2]
    r_q = q.reshape(B, heads, H, W, -1)
    bh = torch.einsum("bnhwc,hkc->bnhwk", r_q, rel_pos_table(H, attn.rel_pos_h)).reshape(B, heads, H * W, H)
    bw = torch.einsum("bnhwc,wkc->bnhwk", r_q, rel_pos_table(W, attn.rel_pos_w)).reshape(B, heads, H * W, W)
    return bh, bw


def rel_pos_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """SAM's ``get_rel_pos(size, size, rel_pos)`` with the index built on ``rel_pos``'s device (SAM
    builds it on the CPU, a host-to-device copy that CUDA graph capture refuses)."""
    if rel_pos.shape[0] != 2 * size - 1:  # SAM interpolates the table: keep its code for that case
        return get_rel_pos(size, size, rel_pos)
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


class FusedAttention(Attention):
    """Drop-in for ``segment_anything``'s ``Attention`` (same parameters, same state dict)."""

    kernel: str = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = split_heads(self, x)
        if self.use_rel_pos:
            bh, bw = rel_pos_terms(self, q, H, W)
            out = ATTEND[self._kernel_for(x)](q, k, v, bh, bw, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, H, W, -1))

    def _kernel_for(self, x: torch.Tensor) -> str:
        if torch.jit.is_tracing():  # ONNX export: one attention node per block, in operators ONNX has
            return "sdpa"
        if self.kernel != "auto":
            return self.kernel
        return "chunked" if x.device.type == "cpu" else "sdpa"


def fuse_attention(encoder: torch.nn.Module, kernel: str = "auto") -> int:
    """Switch every SAM ``Attention`` in ``encoder`` to :class:`FusedAttention` using ``kernel``;
    returns how many modules were switched."""
    if kernel not in KERNELS:
        raise UsageError(f"unknown attention kernel '{kernel}' for SAM: choose {', '.join(KERNELS)}")
    n = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = FusedAttention
            module.kernel = kernel
            n += 1
    return n
