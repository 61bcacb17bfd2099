"""Family-agnostic description of a ViT encoder: what the pruning core works from.

Every name is a dotted path relative to the encoder module (the part that gets compressed), so a
description applies equally to the real model and to a meta-device shadow of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AttentionSpec:
    """One multi-head attention layer.

    ``qkv`` names one layer producing ``3 * num_heads * head_dim`` features laid out as (q|k|v, head,
    dim), or three layers ``(q, k, v)`` producing ``num_heads * head_dim`` each (k and v
    ``num_kv_heads * head_dim`` with grouped-query attention, where query heads ``g * G .. (g + 1) * G - 1``
    share key/value head ``g``, ``G = num_heads / num_kv_heads``; whole heads then go by such groups);
    ``proj`` consumes ``num_heads * head_dim``. ``head_dim_params`` are parameters with one axis per head-dim channel that
    all heads share (SAM's ``rel_pos_h``/``rel_pos_w``), ``width_params`` parameters with one axis over
    the attention width (head, dim) (EVA's separate q and v biases, an output gate's rows), and
    ``head_params`` parameters with one axis per head (a per-head relative position bias table), all as
    ``(name, axis)``. ``modes`` are the ways its channels may be removed (``head_dim``, ``heads``), the
    first used when the one asked for is not among them: rotary attention (q and k turned in pairs of
    head-dim channels by a table every block shares) loses only whole heads; a relative position bias
    shared by every block keeps every head.
    ``seq_len`` and ``num_seqs`` describe the attention matrices at the family's input size (for MACs),
    ``q_len`` the queries per sequence where they are fewer than the keys (pooled queries; 0: ``seq_len``);
    ``rel_pos`` is the (height, width) grid when decomposed relative positions are added, else None.
    """

    module: str
    qkv: str | tuple[str, str, str]
    proj: str
    num_heads: int
    head_dim: int
    head_dim_params: list[tuple[str, int]] = field(default_factory=list)
    seq_len: int = 0
    num_seqs: int = 1
    rel_pos: tuple[int, int] | None = None
    width_params: list[tuple[str, int]] = field(default_factory=list)
    head_params: list[tuple[str, int]] = field(default_factory=list)
    modes: tuple[str, ...] = ("head_dim", "heads")
    num_kv_heads: int | None = None  # None: one key/value head per query head
    q_len: int = 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def queries(self) -> int:
        """Queries per attention sequence (``q_len``, or ``seq_len`` when queries are not pooled)."""
        return self.q_len or self.seq_len


@dataclass
class MlpSpec:
    """Two-layer MLP: ``fc1`` expands to ``hidden`` features, ``fc2`` brings them back. A gated MLP
    (SwiGLU: ``fc2(act(gate(x)) * fc1(x))``) names its ``gate`` projection, whose outputs are pruned
    with ``fc1``'s. ``hidden_params`` have one axis over the hidden channels, as ``(name, axis)`` (a norm
    between the two layers, as in EVA02's ``scale_mlp``)."""

    fc1: str
    fc2: str
    hidden: int
    gate: str | None = None
    fused_gate: bool = False  # GLU in one layer: fc1 gives 2 x hidden features, channel j = rows j and hidden + j
    hidden_params: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class BlockSpec:
    """One transformer block; ``name`` is its module path (the block's output is a feature tap)."""

    name: str
    attn: AttentionSpec
    mlp: MlpSpec


@dataclass
class ResidualStream:
    """A residual stream after the first (a hierarchical encoder's later stage): its ``width``, the module
    whose output channels start it (``root``), and every ``(param, axis)`` tied to its width."""

    width: int
    root: str
    params: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Structure:
    """What the core needs to know about an encoder.

    ``embed_dim`` is the residual width. ``embedding_params`` lists every parameter with an axis tied to
    it, as ``(name, axis)``: the patch embedding, position embedding, tokens, norms, every block's
    attention/MLP input and output sides, and what reads the final residual stream (SAM's neck, a head).
    ``embedding_root`` is the module whose output channels start the residual stream. ``head_mlps`` are
    MLPs outside the blocks (an attention-pooling head's), whose hidden channels are pruned with the
    blocks' MLPs.

    A hierarchical encoder (Hiera) changes its residual width from stage to stage: the fields above then
    describe the first stage's stream, and ``later_streams`` the others. A block whose attention reads
    one stream and writes the next lists its input-side parameters under the first and its output side
    under the second; each stream is pruned as its own group.
    """

    embed_dim: int
    blocks: list[BlockSpec]
    embedding_root: str
    embedding_params: list[tuple[str, int]] = field(default_factory=list)
    head_mlps: list[MlpSpec] = field(default_factory=list)
    later_streams: list[ResidualStream] = field(default_factory=list)

    def streams(self) -> list[ResidualStream]:
        """Every residual stream, the first included (its ``params`` is ``embedding_params`` itself)."""
        return [ResidualStream(self.embed_dim, self.embedding_root, self.embedding_params), *self.later_streams]

    def set_stream_params(self, i: int, params: list[tuple[str, int]]) -> None:
        """Replace stream ``i``'s tied parameters (0: ``embedding_params``)."""
        if i == 0:
            self.embedding_params = params
        else:
            self.later_streams[i - 1].params = params

    def widths(self) -> dict:
        """The per-block widths, as stored in model files (``stream_dims``: the later streams' widths)."""
        return {
            "embed_dim": self.embed_dim,
            **({"stream_dims": [s.width for s in self.later_streams]} if self.later_streams else {}),
            "blocks": [
                {"num_heads": b.attn.num_heads, "head_dim": b.attn.head_dim, "mlp_hidden": b.mlp.hidden,
                 **({"num_kv_heads": b.attn.num_kv_heads} if b.attn.num_kv_heads else {})}
                for b in self.blocks
            ],
            **({"head_mlps": [m.hidden for m in self.head_mlps]} if self.head_mlps else {}),
        }
