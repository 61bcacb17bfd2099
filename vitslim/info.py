"""Provenance carried by a model object: its family, base name and what was done to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import copy

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    from torch import nn

_ATTR = "_vitslim_info"


def get_info(model: nn.Module) -> dict | None:
    """The provenance record of ``model``, or None for a model vitslim did not create."""
    return getattr(model, _ATTR, None)


def set_info(
    model: nn.Module, family: str, name: str, config: dict | None = None, history: list | None = None
) -> None:
    """Attach a provenance record (plain data, so it survives ``copy.deepcopy`` and saving).

    ``config`` holds the architecture arguments that, with ``name``, rebuild the base model.
    """
    record = {"family": family, "name": name, "config": dict(config or {}), "history": list(history or [])}
    object.__setattr__(model, _ATTR, record)


def add_history(model: nn.Module, entry: dict) -> None:
    """Append one step (pruning, distillation, ...) to the model's provenance."""
    info = get_info(model)
    if info is None:
        raise ValueError("model carries no vitslim provenance")
    info = copy.deepcopy(info)
    info["history"].append(entry)
    object.__setattr__(model, _ATTR, info)
