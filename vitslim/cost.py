"""Parameter and MAC counts: torch-pruning's module count, plus the attention matmuls it leaves out."""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import nn

from .family import Family
from .structure import Structure


def attention_macs(structure: Structure, batch: int = 1) -> int:
    """MACs of q.k^T, attn.v and the decomposed rel-pos terms, which module counters do not see."""
    total = 0
    for block in structure.blocks:
        a = block.attn
        per_seq = 2 * a.queries * a.seq_len * a.head_dim  # q.k^T and attn.v, per head
        if a.rel_pos is not None:
            h, w = a.rel_pos
            per_seq += a.queries * (h + w) * a.head_dim  # q against the rel_pos_h / rel_pos_w tables
        total += batch * a.num_seqs * a.num_heads * per_seq
    return total


def module_macs(encoder: nn.Module, family: Family, model: nn.Module) -> int:
    """torch-pruning's ``count_ops_and_params`` of the encoder at the family's input size.

    Counted on a meta-device copy: shapes are all it needs, so this costs no arithmetic.
    """
    shadow = copy.deepcopy(encoder).to("meta")
    return count_macs(shadow, family.example_input(model, device="meta"))


def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """torch-pruning's ``count_ops_and_params`` MACs of ``module(example)``, quietly: the counter prints
    a warning on stdout for a module registered twice (Hiera's shared q pool), and stdout is --json's."""
    import torch_pruning as tp

    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        macs, _ = tp.utils.count_ops_and_params(module, example)
    return int(macs)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
