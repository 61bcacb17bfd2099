"""Distillation objectives: loss terms, each comparing a student tap with a reference model's tap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

OUTPUT = "output"
LOSS_SCALES = ("auto", "raw", "teacher")  # auto: the family's Family.loss_scale


def resolve_loss_scale(option: str, family) -> str:
    """The scale a run distils with: ``option``, or the family's when it is ``auto``."""
    return family.loss_scale if option == "auto" else option


@dataclass
class Term:
    """``weight(epoch) * MSE(student[tap], reference[tap])`` summed over the tap's points.

    ``tap`` is ``output`` or a tap kind of :mod:`vitslim.engine.taps`; ``reference`` names the model
    compared with: ``original`` (the uncompressed model) or ``previous`` (the previous stage's result).
    """

    name: str
    tap: str
    reference: str
    weight: Callable[[int], float]


def constant_then_off(alpha: float, epochs_on: int) -> Callable[[int], float]:
    """``alpha`` for the first ``epochs_on`` epochs, then 0 (SlimSAM stage 1's alignment weight)."""
    return lambda n: alpha if n < epochs_on else 0.0


def dynamic(half: int) -> Callable[[int], float]:
    """SlimSAM stage 2: alpha_n = (N - n - 1) / N for epoch n < N, then 0."""
    return lambda n: (half - n - 1) / half if n < half else 0.0


def term_loss(term: Term, student: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
              keys: list[str], scale: str = "raw") -> torch.Tensor:
    """Mean of the per-point MSEs (points of one tap kind, or the tensors of a family's output features,
    weigh equally). ``scale`` ``teacher`` divides each MSE by the reference tensor's mean square, so
    that tensors on different scales (SAM 2's FPN levels: mean squares 1.1, 3.8 and 27,700 on the
    shapes-sam2 teacher) count alike; ``raw`` leaves the MSEs as they are."""
    losses = []
    for k in keys:
        pairs = zip(student[k], reference[k]) if isinstance(student[k], (list, tuple)) else [(student[k], reference[k])]
        for s, r in pairs:
            if s.shape != r.shape:
                raise RuntimeError(f"loss term {term.name}: {k} has shape {tuple(s.shape)} in the student but "
                                   f"{tuple(r.shape)} in the {term.reference} model")
            mse = F.mse_loss(s.float(), r.float())
            if scale == "teacher":
                mse = mse / r.detach().float().pow(2).mean().clamp_min(1e-12)
            losses.append(mse)
    return torch.stack(losses).mean()
