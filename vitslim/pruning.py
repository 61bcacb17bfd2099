"""``prune``: score, rank and remove channels of a model's encoder."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from . import criteria as C
from .errors import NonFiniteError, UsageError
from .finite import finite, first_nonfinite
from .graph import checked_stream_params
from .groups import ATTENTION_MODES, PARTS, ChannelGroup, build_groups
from .info import add_history, get_info
from .ranking import RANKINGS, select
from .registry import family_of, importances
from .structure import Structure
from .surgery import remove_channels


def resolve_criterion(importance: Any, **options: Any) -> C.Criterion:
    """A criterion from a name (built-in or a plugin's), a :class:`Criterion`, or a callable.

    ``options`` (``sigma``, ``batches``, ``seed``, ``p``, ``accumulate``, ``loss_fn``) go to a named
    criterion's constructor when it accepts them.
    """
    if isinstance(importance, C.Criterion):
        return importance
    if isinstance(importance, str):
        known = importances()
        if importance not in known:
            raise UsageError(f"unknown criterion '{importance}': choose one of {', '.join(sorted(known))}")
        entry = known[importance]
        if isinstance(entry, C.Criterion):
            return entry
        if isinstance(entry, type) and issubclass(entry, C.Criterion):
            import inspect

            accepted = inspect.signature(entry).parameters
            if "loss_fn" in accepted and accepted["loss_fn"].default is None and options.get("loss_fn") is None:
                raise UsageError(f"the '{importance}' criterion needs a loss function: from Python pass "
                                 f"importance={entry.__name__}(loss_fn=...), or use disturbed_taylor (label-free)")
            return entry(**{k: v for k, v in options.items() if k in accepted and v is not None})
        return C.FunctionCriterion(entry, importance)  # a plain fn(group, ctx) -> scores
    if callable(importance):
        return C.FunctionCriterion(importance)
    raise UsageError(f"importance must be a name, a Criterion or a callable, not {type(importance).__name__}")


def as_batches(data: Any) -> Iterable[torch.Tensor] | None:
    """Accept a (N,C,H,W) tensor (split into batches of 1), a list of batches, or any iterable."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise UsageError(f"calibration data must be image batches (N,C,H,W), got shape {tuple(data.shape)}")
        return list(data.split(1))
    return data


@dataclass
class PruningPlan:
    """What :func:`plan` decided: the groups, their channel scores, and the channels each keeps."""

    structure: Structure  # the model's description the groups were built from
    groups: list[ChannelGroup]
    scores: dict[str, torch.Tensor]
    keep: dict[str, torch.Tensor]
    criterion: C.Criterion
    importance_seconds: float


def check_options(ratio: Any, part: str, ranking: str, attention: str, round_to: int) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise UsageError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if part not in PARTS:
        raise UsageError(f"unknown part '{part}': choose one of {', '.join(PARTS)}")
    if ranking not in RANKINGS:
        raise UsageError(f"unknown ranking '{ranking}': choose one of {', '.join(RANKINGS)}")
    if attention not in ATTENTION_MODES:
        raise UsageError(f"unknown attention mode '{attention}': choose one of {', '.join(ATTENTION_MODES)}")
    if not isinstance(round_to, int) or round_to < 1:
        raise UsageError(f"round_to must be an integer >= 1, got {round_to!r}")


def plan(
    model: nn.Module, ratio: float, part: str = "both", importance: Any = "disturbed_taylor",
    ranking: str = "global", data: Any = None, attention: str = "head_dim", round_to: int = 1,
    sigma: float = 0.01, batches: int | None = None, seed: int = 0, progress: Callable | None = None,
    **criterion_options: Any,
) -> PruningPlan:
    """Score and rank ``model``'s channels without changing it (arguments as in :func:`prune`)."""
    check_options(ratio, part, ranking, attention, round_to)
    family = family_of(model)
    encoder = family.encoder(model)
    structure = family.describe(model)
    if part in ("embedding", "both"):
        # torch-pruning's dependency graph decides what moves with the residual channels, and must agree
        # with the family's description (loading a saved file relies on it alone)
        for i, params in enumerate(checked_stream_params(encoder, structure, family, model)):
            structure.set_stream_params(i, params)
    params = dict(encoder.named_parameters())
    groups = build_groups(structure, part, attention, set(params))
    crit = resolve_criterion(importance, sigma=sigma, batches=batches, seed=seed, **criterion_options)
    batches_data = as_batches(data)
    if crit.needs_data and batches_data is None:
        raise UsageError(f"the '{crit.name}' criterion needs calibration images (data=...)")
    ctx = C.ImportanceContext(model=model, encoder=encoder, family=family, data=batches_data, params=params,
                              progress=progress)
    t0 = time.perf_counter()
    crit.prepare(ctx)
    scores = {}
    for g in groups:
        s = torch.as_tensor(crit.score(g, ctx), dtype=torch.float64).flatten().cpu()
        if s.numel() != g.size:
            raise ValueError(f"criterion {crit.name} gave {s.numel()} scores for {g.name}, expected {g.size}")
        if not finite(s):
            raise NonFiniteError(f"the {crit.name} importance of {g.name} is not finite: the model's weights or "
                                 f"the calibration images hold NaN or infinity; nothing was pruned")
        scores[g.name] = s
    keep = select(groups, scores, ratio, ranking, round_to)
    return PruningPlan(structure, groups, scores, keep, crit, time.perf_counter() - t0)


def prune(
    model: nn.Module,
    ratio: float,
    part: str = "both",
    importance: Any = "disturbed_taylor",
    ranking: str = "global",
    data: Any = None,
    attention: str = "head_dim",
    round_to: int = 1,
    sigma: float = 0.01,
    batches: int | None = None,
    seed: int = 0,
    inplace: bool = False,
    progress: Callable | None = None,
    **criterion_options: Any,
) -> nn.Module:
    """Remove ``ratio`` of the channels of ``part`` (``embedding``, ``bottleneck`` or ``both``).

    ``importance`` scores channels: a name (``disturbed_taylor`` - the default, label-free, needs
    ``data`` -, ``taylor``, ``magnitude``, ``random``, or a plugin's), a :class:`Criterion`, or a
    callable ``fn(group, ctx) -> scores``. ``data`` is calibration images already preprocessed for the
    encoder: a (N,C,H,W) tensor or an iterable of batches. ``ranking="global"`` lets each block keep its
    own width, ``"uniform"`` gives all the same; ``attention="heads"`` removes whole heads instead of
    head-dim channels (a block that allows only one of the two, such as rotary attention, uses its own;
    with grouped-query attention a "head" is a key/value head with the query heads that share it); ``round_to`` rounds kept widths to a multiple. ``sigma`` (noise std), ``batches``
    (how many calibration batches) and ``seed`` go to the criterion; ``progress(done, total)`` hears
    about each calibration batch. Returns the pruned model (a copy
    unless ``inplace``), with what was done recorded in its provenance.
    """
    start = time.perf_counter()
    family = family_of(model)
    if not inplace:
        model = copy.deepcopy(model)
    p = plan(model, ratio, part, importance, ranking, data, attention, round_to, sigma, batches, seed,
             progress, **criterion_options)
    before = p.structure.widths()
    t1 = time.perf_counter()
    remove_channels(model, family, p.structure, p.groups, p.keep)
    surgery_s = time.perf_counter() - t1
    bad = first_nonfinite(family.encoder(model))
    if bad is not None:
        raise NonFiniteError(f"the pruned model's {bad} is not finite (so was the model's before pruning): "
                             f"nothing was written")
    if get_info(model) is not None:
        add_history(model, {
            "step": "prune", "part": part, "ratio": ratio, "criterion": p.criterion.describe(),
            "ranking": ranking, "attention": attention, "round_to": round_to, "seed": seed,
            "attention_removed": sorted({g.kind for g in p.groups if g.kind in ("head_dim", "heads")}),
            "widths_before": before, "widths_after": family.describe(model).widths(),
            "seconds": {"importance": round(p.importance_seconds, 3), "surgery": round(surgery_s, 3),
                        "total": round(time.perf_counter() - start, 3)},
        })
    return model
