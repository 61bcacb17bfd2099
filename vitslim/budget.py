"""Widths for a latency budget: ``target_speedup`` (HALP-style, greedy over a measured latency model).

Starting from the model's widths, the planner removes, one step at a time, the unit that costs the
least importance per millisecond it saves, until the predicted latency meets the budget. A unit is a
step down the latency model's grid (see :mod:`vitslim.latency`): some whole heads of one block (key/value
groups under grouped-query attention), some head-dim channels of one block (all its heads alike), some
MLP channels of one block, or 1/32 of every residual stream. Its cost is the criterion's scores of the
channels it removes, as they are (a Taylor score sums ``|w * dL/dw|`` over a channel's weights, a
first-order estimate of the loss it would add, so scores of different kinds of channels compare),
the lowest-scored channels of a group going first; a head-dim channel's score, which sums over every
head, counts only the share of the heads still kept, and a head's only the share of its kept head dims.

The alternate schedule splits the budget this way: stage 1 plans every width at once against the whole
budget, on the teacher's scores, and keeps only the residual widths of that plan; stage 2 plans the
bottlenecks again, on the stage-1 student's scores with its residual widths fixed, against the same
budget. So the final model is the one that meets the target.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

    from .latency import LatencyModel
    from .structure import Structure

EMBED_STEPS = 32  # residual widths move in steps of 1/32
MIN_FRACTION = 0.125  # the narrowest residual the latency model has timed


def check_target(target: object) -> float:
    """A speed-up target must be a finite number > 1."""
    ok = not isinstance(target, bool) and isinstance(target, (int, float)) and math.isfinite(target) and target > 1
    if not ok:
        raise UsageError(f"target speed-up must be a number > 1 (times faster than the dense model), got {target!r}")
    return float(target)


@dataclass
class _Block:
    units: list[int]  # key/value groups grid (whole heads), descending from the current
    dims: list[int]
    hidden: list[int]
    per_group: int
    head_scores: torch.Tensor | None  # normalised, sorted descending (None: whole heads not allowed)
    dim_scores: torch.Tensor | None
    mlp_scores: torch.Tensor
    u: int
    d: int
    m: int
    gated: bool


def _sorted(scores: torch.Tensor | None) -> torch.Tensor | None:
    """Scores from the highest down (the planner removes from the end)."""
    import torch

    return None if scores is None else torch.sort(scores.to(torch.float64), descending=True).values


def _lost(sorted_scores: torch.Tensor, now: int, after: int) -> float:
    return float(sorted_scores[after:now].sum())


def plan_widths(structure: Structure, scores: dict[str, torch.Tensor], latency: LatencyModel, target_ms: float,
                embedding: bool = True, bottleneck: bool = True) -> tuple[dict, float]:
    """Widths (as :meth:`Structure.widths`) that meet ``target_ms`` by ``latency``'s prediction, losing the
    least importance (see the module docstring); ``embedding``/``bottleneck``: which widths may move.
    Returns the widths and their predicted milliseconds; a target out of reach is a :class:`UsageError`."""
    from .latency import dim_grid, head_grid, hidden_grid

    widths = copy.deepcopy(structure.widths())
    streams0 = list(latency.streams)
    streams = [widths["embed_dim"], *widths.get("stream_dims", [])]
    emb_scores = [_sorted(scores.get("embedding" if i == 0 else f"embedding.{i}"))
                  for i in range(len(streams))]
    blocks = []
    for i, spec in enumerate(structure.blocks):
        a, t = spec.attn, latency.kinds[latency.block_kind[i]]
        per = a.num_heads // a.kv_heads
        heads_ok = "heads" in a.modes and f"{a.module}.heads" in scores
        dims_ok = "head_dim" in a.modes and f"{a.module}.head_dim" in scores
        blocks.append(_Block(
            units=[u for u in head_grid(t.heads[-1]) if u <= a.kv_heads], dims=[d for d in dim_grid(t.dims[-1]) if d <= a.head_dim],
            hidden=[m for m in hidden_grid(t.hidden[-1]) if m <= spec.mlp.hidden], per_group=per,
            head_scores=_sorted(scores[f"{a.module}.heads"]) if heads_ok else None,
            dim_scores=_sorted(scores[f"{a.module}.head_dim"]) if dims_ok else None,
            mlp_scores=_sorted(scores[f"{spec.name}.mlp"]), u=a.kv_heads, d=a.head_dim,
            m=spec.mlp.hidden, gated=bool(spec.mlp.gate or spec.mlp.fused_gate)))

    def write(b: _Block, w: dict) -> None:
        w["num_heads"], w["head_dim"], w["mlp_hidden"] = b.u * b.per_group, b.d, b.m
        if "num_kv_heads" in w:
            w["num_kv_heads"] = b.u

    def frac() -> float:
        return sum(s / s0 for s, s0 in zip(streams, streams0)) / len(streams)

    def block_ms(i: int, b: _Block, f: float) -> float:
        w = dict(widths["blocks"][i])
        write(b, w)
        return latency.block_ms(i, f, w)

    def current() -> dict:
        w = copy.deepcopy(widths)
        w["embed_dim"] = streams[0]
        if "stream_dims" in w:
            w["stream_dims"] = streams[1:]
        for b, bw in zip(blocks, w["blocks"]):
            write(b, bw)
        return w

    def total() -> float:
        return latency.predict(current())

    now = total()
    while now > target_ms:
        f = frac()
        _, scale = latency.context(f)  # block milliseconds, as they add up inside the encoder
        best = finisher = None  # (importance lost per ms saved, apply, lost); (lost, apply, lost)

        def consider(lost: float, saved: float, apply) -> None:
            nonlocal best, finisher
            if saved <= 0:
                return
            if best is None or lost / saved < best[0]:
                best = (lost / saved, apply, lost)
            if now - saved <= target_ms and (finisher is None or lost < finisher[0]):
                finisher = (lost, apply, lost)

        if bottleneck:
            for i, b in enumerate(blocks):
                base = block_ms(i, b, f)
                moves = []  # every lower grid width on each axis (a flat stretch of the table saves nothing)
                if b.head_scores is not None:
                    moves += [("u", u, _lost(b.head_scores, b.u, u) * b.d / b.dims[-1]) for u in b.units if u < b.u]
                if b.dim_scores is not None:
                    moves += [("d", d, _lost(b.dim_scores, b.d, d) * b.u / b.units[-1]) for d in b.dims if d < b.d]
                moves += [("m", m, _lost(b.mlp_scores, b.m, m)) for m in b.hidden if m < b.m]
                for attr, value, lost in moves:
                    trial = copy.copy(b)
                    setattr(trial, attr, value)
                    consider(lost, scale * (base - block_ms(i, trial, f)),
                             lambda b=b, attr=attr, value=value: setattr(b, attr, value))
        for step in range(round(f * EMBED_STEPS) - 1, round(MIN_FRACTION * EMBED_STEPS) - 1, -1) if embedding else ():
            after = [max(1, round(s0 * step / EMBED_STEPS)) for s0 in streams0]
            lost = sum(_lost(sc, s, a) for sc, s, a in zip(emb_scores, streams, after) if sc is not None)
            old = list(streams)
            streams[:] = after
            saved = now - total()
            streams[:] = old
            consider(lost, saved, lambda after=after: streams.__setitem__(slice(None), after))
        if finisher is not None and (best is None or finisher[0] <= best[2]):
            best = finisher  # one move meets the budget, losing no more than the best-priced step
        if best is None:
            raise UsageError(f"the target is out of reach: the narrowest widths the latency model knows are "
                             f"predicted at {now:.1f} ms, the target is {target_ms:.1f} ms")
        best[1]()
        now = total()
    widths["embed_dim"] = streams[0]
    if "stream_dims" in widths:
        widths["stream_dims"] = streams[1:]
    for b, w in zip(blocks, widths["blocks"]):
        write(b, w)
    return widths, now


def fastest(structure: Structure, latency: LatencyModel, embedding: bool = True, bottleneck: bool = True) -> float:
    """The predicted milliseconds at the narrowest widths the planner may reach (for a reachability check)."""
    from .latency import dim_grid, head_grid, hidden_grid

    widths = copy.deepcopy(structure.widths())
    if embedding:
        f = MIN_FRACTION
        widths["embed_dim"] = max(1, round(latency.streams[0] * f))
        if "stream_dims" in widths:
            widths["stream_dims"] = [max(1, round(s * f)) for s in latency.streams[1:]]
    if bottleneck:
        for spec, w in zip(structure.blocks, widths["blocks"]):
            a = spec.attn
            per = a.num_heads // a.kv_heads
            units = head_grid(a.kv_heads)[0] if "heads" in a.modes else a.kv_heads
            w["num_heads"], w["head_dim"] = units * per, dim_grid(a.head_dim)[0] if "head_dim" in a.modes else a.head_dim
            if "num_kv_heads" in w:
                w["num_kv_heads"] = units
            w["mlp_hidden"] = hidden_grid(spec.mlp.hidden)[0]
    return latency.predict(widths)


def check_reachable(structure: Structure, latency: LatencyModel, target: float, embedding: bool = True,
                    bottleneck: bool = True) -> None:
    """Refuse, in one line and before any scoring, a target the narrowest widths cannot meet."""
    dense = latency.predict(latency.key["widths"])
    best = dense / fastest(structure, latency, embedding, bottleneck)
    if best < target:
        raise UsageError(f"a {target:g}x speed-up is out of reach on {latency.key['device']}: the narrowest widths "
                         f"the latency model knows are predicted {best:.1f}x faster than the dense model")
