"""``prune``: score, rank and remove channels of a model's encoder."""

from __future__ import annotations

import copy
import math
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

    ``options`` (``sigma``, ``batches``, ``seed``, ``p``, ``accumulate``, ``loss_fn``, ``loss_scale``) go to a named
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


def score_groups(
    model: nn.Module, part: str = "both", attention: str | tuple[str, ...] = "head_dim",
    importance: Any = "disturbed_taylor", data: Any = None, sigma: float = 0.01, batches: int | None = None,
    seed: int = 0, progress: Callable | None = None, checkpointing: tuple[str, Callable | None] = ("auto", None),
    **criterion_options: Any,
) -> tuple[Structure, list[ChannelGroup], dict[str, torch.Tensor], C.Criterion, float]:
    """``model``'s channel groups for ``part`` (attention groups for each mode in ``attention``), scored by
    the criterion in one pass over ``data``: (structure, groups, scores, criterion, seconds).
    ``checkpointing``: (mode, on_decide) of :func:`vitslim.memory.checkpointed` for the criterion's
    backward passes."""
    family = family_of(model)
    encoder = family.encoder(model)
    structure = family.describe(model)
    if part in ("embedding", "both"):
        # torch-pruning's dependency graph decides what moves with the residual channels, and must agree
        # with the family's description (loading a saved file relies on it alone)
        for i, params in enumerate(checked_stream_params(encoder, structure, family, model)):
            structure.set_stream_params(i, params)
    params = dict(encoder.named_parameters())
    groups: dict[str, ChannelGroup] = {}
    for mode in (attention,) if isinstance(attention, str) else attention:
        for g in build_groups(structure, part, mode, set(params)):
            groups.setdefault(g.name, g)  # a block that allows one mode gives the same group for both
    crit = resolve_criterion(importance, sigma=sigma, batches=batches, seed=seed, **criterion_options)
    batches_data = as_batches(data)
    if crit.needs_data and batches_data is None:
        raise UsageError(f"the '{crit.name}' criterion needs calibration images (data=...)")
    ctx = C.ImportanceContext(model=model, encoder=encoder, family=family, data=batches_data, params=params,
                              progress=progress)
    t0 = time.perf_counter()
    from .memory import checkpointed

    with checkpointed(encoder, [b.name for b in structure.blocks], *checkpointing):
        crit.prepare(ctx)
    scores = {}
    for g in groups.values():
        s = torch.as_tensor(crit.score(g, ctx), dtype=torch.float64).flatten().cpu()
        if s.numel() != g.size:
            raise ValueError(f"criterion {crit.name} gave {s.numel()} scores for {g.name}, expected {g.size}")
        if not finite(s):
            raise NonFiniteError(f"the {crit.name} importance of {g.name} is not finite: the model's weights or "
                                 f"the calibration images hold NaN or infinity; nothing was pruned")
        scores[g.name] = s
    return structure, list(groups.values()), scores, crit, time.perf_counter() - t0


def plan(
    model: nn.Module, ratio: float, part: str = "both", importance: Any = "disturbed_taylor",
    ranking: str = "global", data: Any = None, attention: str = "head_dim", round_to: int = 1,
    sigma: float = 0.01, batches: int | None = None, seed: int = 0, progress: Callable | None = None,
    checkpointing: tuple[str, Callable | None] = ("auto", None), **criterion_options: Any,
) -> PruningPlan:
    """Score and rank ``model``'s channels without changing it (arguments as in :func:`prune`)."""
    check_options(ratio, part, ranking, attention, round_to)
    structure, groups, scores, crit, seconds = score_groups(model, part, attention, importance, data, sigma,
                                                            batches, seed, progress, checkpointing,
                                                            **criterion_options)
    keep = select(groups, scores, ratio, ranking, round_to)
    return PruningPlan(structure, groups, scores, keep, crit, seconds)


def prune(
    model: nn.Module,
    ratio: float | None = None,
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
    target_speedup: float | None = None,
    latency: Any = None,
    verify: bool = True,
    dense_ms: float | None = None,
    activation_checkpointing: str = "auto",
    on_checkpointing: Callable | None = None,
    **criterion_options: Any,
) -> nn.Module:
    """Remove ``ratio`` of the channels of ``part`` (``embedding``, ``bottleneck`` or ``both``), or, with
    ``target_speedup`` instead of a ratio, the channels that make the encoder that many times faster
    than the dense model on this device (see :mod:`vitslim.budget`).

    ``importance`` scores channels: a name (``disturbed_taylor`` - the default, label-free, needs
    ``data`` -, ``taylor``, ``magnitude``, ``random``, or a plugin's), a :class:`Criterion`, or a
    callable ``fn(group, ctx) -> scores``. ``data`` is calibration images already preprocessed for the
    encoder: a (N,C,H,W) tensor or an iterable of batches. ``ranking="global"`` lets each block keep its
    own width, ``"uniform"`` gives all the same; ``attention="heads"`` removes whole heads instead of
    head-dim channels (a block that allows only one of the two, such as rotary attention, uses its own;
    with grouped-query attention a "head" is a key/value head with the query heads that share it);
    ``round_to`` rounds kept widths to a multiple. ``sigma`` (noise std), ``batches`` (how many
    calibration batches) and ``seed`` go to the criterion; ``progress(done, total)`` hears about each
    calibration batch. With ``target_speedup``, ``latency`` is the device's
    :class:`~vitslim.latency.LatencyModel` of the dense model (default: measured, or read from the cache,
    for ``model`` on the CPU or the GPU it lives on); ranking, attention and round_to are then the
    planner's (it chooses among whole heads, head dims and MLP widths per block), and ``verify`` times
    the plan and corrects it until the measured speed-up lands near the target (``dense_ms``: the
    dense model's measured milliseconds, when the model given is not the dense one). Returns the pruned
    model (a copy unless ``inplace``), with what was done recorded in its provenance.
    ``activation_checkpointing`` (auto, on, off) recomputes each block in the criterion's backward passes
    instead of keeping its activations (auto: when they would not fit; ``on_checkpointing(state)`` hears
    when it turns on; see :mod:`vitslim.memory`).
    """
    start = time.perf_counter()
    family = family_of(model)
    if (ratio is None) == (target_speedup is None):
        raise UsageError("give either a ratio or a target speed-up (not both)")
    if target_speedup is not None:
        from .budget import check_target

        check_target(target_speedup)
        if part not in PARTS:
            raise UsageError(f"unknown part '{part}': choose one of {', '.join(PARTS)}")
    if not inplace:
        model = copy.deepcopy(model)
    from .memory import check_mode

    checkpointing = (check_mode(activation_checkpointing), on_checkpointing)
    if target_speedup is not None:
        return _prune_for_speed(model, family, target_speedup, latency, part, importance, data, sigma, batches,
                                seed, progress, start, verify, dense_ms, checkpointing, **criterion_options)
    p = plan(model, ratio, part, importance, ranking, data, attention, round_to, sigma, batches, seed,
             progress, checkpointing, **criterion_options)
    before = p.structure.widths()
    t1 = time.perf_counter()
    remove_channels(model, family, p.structure, p.groups, p.keep)
    surgery_s = time.perf_counter() - t1
    _check_finite(model, family)
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


def _check_finite(model: nn.Module, family) -> None:
    bad = first_nonfinite(family.encoder(model))
    if bad is not None:
        raise NonFiniteError(f"the pruned model's {bad} is not finite (so was the model's before pruning): "
                             f"nothing was written")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.sort(-scores, stable=True).indices[:k]).values


def _prune_for_speed(model: nn.Module, family, target: float, latency, part: str, importance: Any, data: Any,
                     sigma: float, batches: int | None, seed: int, progress: Callable | None, start: float,
                     verify: bool = True, dense_ms: float | None = None,
                     checkpointing: tuple[str, Callable | None] = ("auto", None), **criterion_options: Any) -> nn.Module:
    """``prune`` for a speed-up: score every group (both attention modes), plan widths for the budget
    (:func:`vitslim.budget.plan_widths`), then remove whole heads, MLP and residual channels in one
    pass and head-dim channels in a second (the head-dim channels of the kept heads keep their indices).

    With ``verify`` (and when the bottlenecks are planned: the final widths), the plan is built on a
    copy and *timed*; while its measured speed-up misses the target by more than 3% below or 10% above,
    the budget is corrected by the miss (then bisected, once plans on both sides were timed) and
    planned again (at most :data:`ATTEMPTS` times; the closest plan is kept). ``dense_ms``: the dense model's measured milliseconds (default: the model itself when
    it is the dense one, else the latency model's measurement of it)."""
    from .budget import check_reachable, plan_widths

    device = str(next(family.encoder(model).parameters()).device)
    if latency is None:
        from .latency import latency_model

        latency = latency_model(model, device=device)
    embedding, bottleneck = part in ("embedding", "both"), part in ("bottleneck", "both")
    check_reachable(family.describe(model), latency, target, embedding, bottleneck)
    dense_pred = latency.predict(latency.key["widths"])
    # the residual widths alone are still planned jointly with the bottlenecks: score everything
    scored = "both" if part == "embedding" else part
    structure, groups, scores, crit, importance_s = score_groups(
        model, scored, ("heads", "head_dim"), importance, data, sigma, batches, seed, progress, checkpointing,
        **criterion_options)
    if part == "embedding":
        groups = [g for g in groups if g.kind == "embedding"]
    before = structure.widths()
    budget = dense_pred / target
    widths, predicted = plan_widths(structure, scores, latency, budget, embedding, bottleneck)
    if part == "embedding":  # stage 1 of alternate: the plan's residual widths only
        widths = {**before, "embed_dim": widths["embed_dim"],
                  **({"stream_dims": widths["stream_dims"]} if "stream_dims" in widths else {})}
        predicted = latency.predict(widths)
    measured: dict = {}
    if verify and bottleneck:
        from .latency import measured_ms

        key = latency.key
        if dense_ms is None:
            dense_ms = (measured_ms(model, device, key["dtype"], key["batch"]) if before == key["widths"]
                        else latency.encoder[-1])
        tried = []
        slow, fast = None, None  # the largest budget whose plan was too slow, the smallest too fast
        for attempt in range(ATTEMPTS):
            trial = copy.deepcopy(model)
            _cut_to(trial, family, structure, groups, scores, widths)
            ms = measured_ms(trial, device, key["dtype"], key["batch"])
            speedup = dense_ms / ms
            tried.append((abs(math.log(speedup / target)), widths, predicted, ms))
            if 0.97 * target <= speedup <= 1.1 * target:
                break
            if speedup < target:
                slow = budget if slow is None else min(slow, budget)
            else:
                fast = budget if fast is None else max(fast, budget)
            if slow is not None and fast is not None:  # bracketed: bisect the budget (in log space)
                budget = math.sqrt(slow * fast)
            else:  # not yet: correct the budget by the measured miss
                budget *= (dense_ms / target) / ms
            try:
                widths, predicted = plan_widths(structure, scores, latency, budget, embedding, bottleneck)
            except UsageError:
                break  # no narrower plan: keep the closest one
        _, widths, predicted, ms = min(tried, key=lambda t: t[0])
        measured = {"measured_ms": {"dense": round(dense_ms, 3), "pruned": round(ms, 3)},
                    "measured_speedup": round(dense_ms / ms, 3), "attempts": len(tried)}
    t1 = time.perf_counter()
    first_pass, second_pass = _cut_to(model, family, structure, groups, scores, widths)
    surgery_s = time.perf_counter() - t1
    _check_finite(model, family)
    if get_info(model) is not None:
        add_history(model, {
            "step": "prune", "part": part, "target_speedup": target, "criterion": crit.describe(), "seed": seed,
            "predicted_ms": round(predicted, 3), "dense_predicted_ms": round(dense_pred, 3),
            "predicted_speedup": round(dense_pred / predicted, 3), **measured,
            "latency_model": {k: latency.key[k] for k in ("device", "device_type", "dtype", "batch", "threads")},
            "attention_removed": sorted({kind for kind, removed in (
                ("heads", any(g.kind == "heads" for g in first_pass)), ("head_dim", bool(second_pass))) if removed}),
            "widths_before": before, "widths_after": family.describe(model).widths(),
            "seconds": {"importance": round(importance_s, 3), "surgery": round(surgery_s, 3),
                        "total": round(time.perf_counter() - start, 3)},
        })
    return model


ATTEMPTS = 6  # plans timed by target_speedup's measured correction


def _cut_to(model: nn.Module, family, structure: Structure, groups: list[ChannelGroup],
            scores: dict[str, torch.Tensor], widths: dict) -> tuple[list[ChannelGroup], list[ChannelGroup]]:
    """Remove the lowest-scored channels of ``model`` down to ``widths``: residual channels, whole heads
    and MLP channels in one surgery, then head dims of the kept heads in a second (a head-dim channel
    keeps its index when heads are removed). Returns the groups of both passes."""
    from .groups import attention_group

    streams = [widths["embed_dim"], *widths.get("stream_dims", [])]
    first, keep = [], {}
    for g in groups:
        if g.kind == "embedding":
            k = streams[g.block or 0]
        elif g.kind == "heads":  # one channel per key/value group (a head, without grouped-query attention)
            w = widths["blocks"][g.block]
            k = w["num_kv_heads"] if structure.blocks[g.block].attn.num_kv_heads else w["num_heads"]
        elif g.kind == "mlp":
            k = widths["blocks"][g.block]["mlp_hidden"] if g.block is not None else g.size
        else:
            continue  # head dims: second pass
        if k < g.size:
            first.append(g)
            keep[g.name] = _top(scores[g.name], k)
    remove_channels(model, family, structure, first, keep)
    after = family.describe(model)
    second, keep2 = [], {}
    present = {name for name, _ in family.encoder(model).named_parameters()}
    for i, w in enumerate(widths["blocks"]):
        name = f"{structure.blocks[i].attn.module}.head_dim"
        if name in scores and w["head_dim"] < structure.blocks[i].attn.head_dim:
            g = attention_group(after, i, "head_dim")
            g.members = [m for m in g.members if m[0] in present]
            second.append(g)
            keep2[g.name] = _top(scores[name], w["head_dim"])
    if second:
        remove_channels(model, family, after, second, keep2)
    return first, second
