"""Finiteness checks, shared by pruning and the engine: nothing non-finite is scored, kept or written."""

from __future__ import annotations

import torch
from torch import nn


def finite(value: torch.Tensor) -> bool:
    """Whether every element of ``value`` is finite."""
    return bool(torch.isfinite(value).all())


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or an infinity, or None."""
    for name, t in model.state_dict().items():
        if (t.is_floating_point() or t.is_complex()) and not finite(t):
            return name
    return None
