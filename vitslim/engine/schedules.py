"""Schedules: the stages of a compression run, each pruning then distilling."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError
from .losses import OUTPUT, Term, constant_then_off, dynamic
from .taps import BLOCK_OUTPUTS, BOTTLENECKS

SCHEDULES = ("alternate", "alternate:K", "one-shot", "iterative:K")


@dataclass
class Stage:
    """Prune ``part`` by ``ratio`` (of the current widths), then distil for ``epochs`` with ``terms``."""

    name: str
    part: str
    ratio: float
    terms: list[Term]
    epochs: int


def build_schedule(schedule: str, ratio: float, epochs: int, alpha: float = 0.5) -> list[Stage]:
    """``alternate`` (SlimSAM), ``alternate:K``, ``one-shot`` or ``iterative:K``; every schedule spends the
    same number of epochs in total (2 x ``epochs``). ``alternate:K`` repeats SlimSAM's two stages K times,
    each pair removing ``1 - (1 - ratio) ** (1 / K)`` of the current widths (K rounds remove ``ratio``),
    each stage distilling for ``epochs / K``: the same cut and the same steps in smaller steps."""
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1, got {epochs}")
    one = lambda n: 1.0  # noqa: E731
    if schedule == "alternate" or schedule.startswith("alternate:"):
        rounds = 1 if schedule == "alternate" else _rounds(schedule, "alternate")
        each = max(1, round(epochs / rounds))  # the K rounds share each part's epochs
        per_round = ratio if rounds == 1 else 1 - (1 - ratio) ** (1 / rounds)  # of the current widths
        half = max(1, each // 2)
        stage1_align = constant_then_off(alpha, max(1, (each + 1) // 2))
        stage2 = dynamic(half)
        stages = []
        for i in range(rounds):
            tag = "" if rounds == 1 else str(i + 1)
            stages += [
                Stage(f"embedding{tag}", "embedding", per_round, [
                    Term("output", OUTPUT, "original", one),
                    # after round 1 the bottlenecks are narrower than the teacher's: align to the last round's
                    Term("bottlenecks", BOTTLENECKS, "original" if i == 0 else "previous", stage1_align),
                ], each),
                Stage(f"bottleneck{tag}", "bottleneck", per_round, [
                    Term("output", OUTPUT, "original", lambda n: 1.0 - stage2(n)),
                    Term("blocks", BLOCK_OUTPUTS, "previous", stage2),
                    Term("output_previous", OUTPUT, "previous", stage2),
                ], each),
            ]
        return stages
    if schedule == "one-shot":
        return [Stage("one-shot", "both", ratio, [Term("output", OUTPUT, "original", one)], 2 * epochs)]
    if schedule.startswith("iterative:"):
        k = _rounds(schedule, "iterative")
        per_round = 1 - (1 - ratio) ** (1 / k)
        each = max(1, round(2 * epochs / k))
        return [Stage(f"round{i + 1}", "both", per_round, [Term("output", OUTPUT, "original", one)], each)
                for i in range(k)]
    raise UsageError(f"unknown schedule '{schedule}': choose alternate, alternate:K, one-shot or iterative:K")


def _rounds(schedule: str, kind: str) -> int:
    """K of ``kind:K``."""
    try:
        k = int(schedule.split(":", 1)[1])
    except ValueError:
        k = 0
    if k < 1:
        raise UsageError(f"bad schedule '{schedule}': write {kind}:K with K >= 1, e.g. {kind}:3")
    return k


def auto_epochs(schedule: str, steps_per_epoch: int, min_steps: int) -> int:
    """Epochs (per stage of ``alternate``: the unit every schedule shares) giving ``min_steps`` optimizer
    steps per stage: with little data, many epochs of augmented views; from thousands of images, one."""
    per_stage = max(1, math.ceil(min_steps / max(1, steps_per_epoch)))
    if schedule.startswith("iterative:"):  # K rounds share 2 x epochs: each round gets 2 * epochs / K
        per_stage = max(1, math.ceil(per_stage * int(schedule.split(":", 1)[1]) / 2))
    return per_stage
