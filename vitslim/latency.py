"""A measured latency model of an encoder on one device: each block's latency as a function of its
widths (whole heads, head dim, MLP hidden) and of the residual width, with the fused attention path.

What is timed, on the device and dtype the model will run on (a few seconds for a small model, a minute
or two for SAM-B at 1024 on a CPU; cached per device, dtype, batch, threads and torch version):

- for each *kind* of block (blocks with the same attention layout, windows and token count share one
  table), its attention module on a grid of (heads, head dim) and its MLP on a grid of hidden widths,
  each called on the input it really gets (captured from a forward pass);
- along the residual width (a grid of fractions of each stream's width): the attention and MLP at full
  bottleneck widths, the whole block (norms, residual adds and windowing are the difference), and the
  whole encoder (what is outside the blocks: patch embedding, neck).

A prediction interpolates between grid points (piecewise linear) and scales attention and MLP by how
their full-width times change with the residual width; the widths the grid holds are the ones
``target_speedup`` chooses from, so a width the device is slow at loses by measurement. Every time is
the fastest of several runs (a busy machine only adds time), and tables are made monotone (more
channels never predicted faster) by lowering each value to the smallest at wider configurations.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    from torch import nn

    from .structure import Structure

FRACTIONS = (1.0, 0.75, 0.5, 0.25, 0.125)  # residual widths timed, as fractions of each stream's width
FORMAT = 2  # bumped when what is cached changes: older cache entries are measured again


def head_grid(units: int) -> list[int]:
    """Whole-head counts timed (in key/value groups): 1, 2, 3, 4, 6, 8, 12 of 12, and so on."""
    return sorted({max(1, round(units * k / 12)) for k in (1, 2, 3, 4, 6, 8, 12)})


def dim_grid(head_dim: int) -> list[int]:
    """Head dims timed: eighths of the head dim (8, 16, ..., 64 of 64)."""
    step = max(1, head_dim // 8)
    return sorted({*range(step, head_dim + 1, step), head_dim})


def hidden_grid(hidden: int) -> list[int]:
    """MLP widths timed: sixteenths of the hidden width."""
    step = max(1, hidden // 16)
    return sorted({*range(step, hidden + 1, step), hidden})


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear ``y(x)`` through sorted ``xs``; outside, the nearest end's value scaled toward 0."""
    if x <= xs[0]:
        return ys[0] * max(x, 0) / xs[0] if xs[0] > 0 else ys[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    i = bisect.bisect_right(xs, x) - 1
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + t * (ys[i + 1] - ys[i])


def _ratio(fracs: list[float], by_width: list[float], frac: float) -> float:
    """How much of its full-width time a module takes at residual fraction ``frac``."""
    return _interp(fracs, by_width, frac) / by_width[-1] if by_width[-1] > 0 else 1.0


def _monotone(values: list[float]) -> list[float]:
    """Non-decreasing along the (ascending) axis, each value lowered to the smallest at or above it:
    noise only ever adds time, so a slow outlier is corrected by the wider configurations."""
    out = list(values)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


@dataclass
class KindTable:
    """Milliseconds of one kind of block. ``attn[i][j]``: attention with ``heads[i]`` key/value groups of
    ``dims[j]`` channels at full residual width; ``mlp[k]``: MLP with ``hidden[k]`` channels; ``*_by_width``
    and ``misc``: attention and MLP at full bottleneck widths, and the rest of the block, at each
    residual fraction of :attr:`LatencyModel.fractions`."""

    heads: list[int]
    dims: list[int]
    hidden: list[int]
    per_group: int  # query heads per key/value group (1 without grouped-query attention)
    attn: list[list[float]]
    mlp: list[float]
    attn_by_width: list[float]
    mlp_by_width: list[float]
    misc: list[float]

    def monotone(self) -> None:
        """More channels are never faster (see :func:`_monotone`), on every axis; the full-width cell and
        the first entry of the by-width tables are one configuration timed twice: both keep the faster."""
        self.attn[-1][-1] = self.attn_by_width[-1] = min(self.attn[-1][-1], self.attn_by_width[-1])
        self.mlp[-1] = self.mlp_by_width[-1] = min(self.mlp[-1], self.mlp_by_width[-1])
        for _ in range(2):  # rows then columns, twice: a value lowered along one axis may lower the other
            for i in range(len(self.heads)):
                self.attn[i] = _monotone(self.attn[i])
            for j in range(len(self.dims)):
                column = _monotone([row[j] for row in self.attn])
                for i, v in enumerate(column):
                    self.attn[i][j] = v
        self.mlp = _monotone(self.mlp)
        self.attn_by_width, self.mlp_by_width = _monotone(self.attn_by_width), _monotone(self.mlp_by_width)
        self.misc = _monotone(self.misc)

    def attention_ms(self, fracs: list[float], frac: float, units: float, dim: float) -> float:
        """Attention at ``units`` key/value groups of ``dim`` channels and residual fraction ``frac``:
        bilinear in (units, dim) on the grid, scaled by how the full-width attention's time changes with
        the residual width (a product of monotone tables: monotone on every axis)."""
        rows = [_interp(self.dims, row, dim) for row in self.attn]
        return _interp(self.heads, rows, units) * _ratio(fracs, self.attn_by_width, frac)

    def mlp_ms(self, fracs: list[float], frac: float, hidden: float) -> float:
        return _interp(self.hidden, self.mlp, hidden) * _ratio(fracs, self.mlp_by_width, frac)

    def block_ms(self, fracs: list[float], frac: float, units: float, dim: float, hidden: float) -> float:
        return (self.attention_ms(fracs, frac, units, dim) + self.mlp_ms(fracs, frac, hidden)
                + _interp(fracs, self.misc, frac))


@dataclass
class LatencyModel:
    """Predicted encoder milliseconds for any widths of one model on one device (see module docstring)."""

    key: dict  # what was measured: model, widths, device, dtype, batch, threads, torch
    fractions: list[float]  # ascending residual fractions timed
    streams: list[int]  # the residual widths of the model measured (fraction 1)
    kinds: dict[str, KindTable]
    block_kind: list[str]
    encoder: list[float]  # the whole encoder at full bottleneck widths, at each fraction (measured)
    seconds: float = 0.0  # how long measuring took
    format: int = FORMAT
    dense_ms: float | None = None  # the dense encoder timed now, by whoever uses the model (not cached)

    def fraction(self, widths: dict) -> float:
        """The residual fraction of ``widths`` (the mean over streams of width / measured width)."""
        now = [widths["embed_dim"], *widths.get("stream_dims", [])]
        return sum(a / b for a, b in zip(now, self.streams)) / len(self.streams)

    def block_ms(self, i: int, frac: float, block: dict) -> float:
        t = self.kinds[self.block_kind[i]]
        units = (block.get("num_kv_heads") or block["num_heads"]) if t.per_group > 1 else block["num_heads"]
        return t.block_ms(self.fractions, frac, units, block["head_dim"], block["mlp_hidden"])


    def predict(self, widths: dict) -> float:
        """Milliseconds of the encoder with ``widths`` (as :meth:`Structure.widths` gives them): what lies
        outside the blocks, plus the blocks timed one by one and scaled to what they take inside the
        encoder (modules timed alone can sum to more or less than the encoder measured whole), so that at
        full bottleneck widths the prediction is the measured encoder at that residual width."""
        frac = self.fraction(widths)
        outside, scale = self.context(frac)
        return outside + scale * sum(self.block_ms(i, frac, b) for i, b in enumerate(widths["blocks"]))

    def context(self, frac: float) -> tuple[float, float]:
        """(milliseconds outside the blocks, the factor from blocks timed alone to blocks in the encoder)
        at residual fraction ``frac``."""
        full = self.encoder_ms(frac)
        inside = sum(self.block_ms(i, frac, self._full(i)) for i in range(len(self.block_kind)))
        outside = max(0.0, full - inside)
        return outside, ((full - outside) / inside if inside > 0 else 1.0)

    def encoder_ms(self, frac: float) -> float:
        """The encoder measured at full bottleneck widths, at residual fraction ``frac``."""
        return _interp(self.fractions, self.encoder, frac)

    def _full(self, i: int) -> dict:
        return self.key["widths"]["blocks"][i]

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "dense_ms"}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyModel":
        kinds = {k: KindTable(**v) for k, v in data.pop("kinds").items()}
        return cls(kinds=kinds, **data)


# -- measuring -----------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: Any, min_seconds: float = 0.2, min_runs: int = 3,
              max_runs: int = 50, warmup: int = 2) -> float:
    """Milliseconds of ``fn()``: the fastest of at least ``min_runs`` runs (about ``min_seconds`` in all:
    small modules are timed many times, large ones a few) after ``warmup`` calls. The fastest, because
    a busy machine only ever adds time; a model of the device wants what the kernels cost."""
    import torch

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        spent = 0.0
        while len(times) < max_runs and (len(times) < min_runs or spent < min_seconds):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t0
            times.append(dt * 1000)
            spent += dt
    return min(times)


def _kind_key(structure: Structure, i: int, input_shape: tuple) -> str:
    """Blocks with equal attention layout, windows, tokens and widths time alike."""
    b = structure.blocks[i]
    a = b.attn
    sig = (a.num_heads, a.head_dim, a.kv_heads, a.seq_len, a.num_seqs, a.q_len, a.rel_pos, b.mlp.hidden,
           bool(b.mlp.gate), b.mlp.fused_gate, tuple(input_shape))
    return hashlib.sha1(repr(sig).encode()).hexdigest()[:10]


def _mlp_module(encoder: nn.Module, fc1: str, fc2: str) -> str:
    """The module that runs the MLP: the common parent of fc1 and fc2 that is callable."""
    from torch import nn

    a, b = fc1.split("."), fc2.split(".")
    common = []
    for x, y in zip(a, b):
        if x != y:
            break
        common.append(x)
    while common and isinstance(encoder.get_submodule(".".join(common)), (nn.ModuleList, nn.ModuleDict)):
        common.pop()
    return ".".join(common)


def _captured(encoder: nn.Module, x, names: list[str]) -> dict[str, tuple]:
    """The (args, kwargs) each named module is called with in ``encoder(x)`` (first call)."""
    import torch

    found: dict[str, tuple] = {}
    handles = []
    for name in names:
        def hook(module, args, kwargs, name=name):
            if name not in found:
                found[name] = (args, kwargs)
        handles.append(encoder.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            encoder(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _resized(model: nn.Module, family, structure: Structure, widths: dict, device, dtype) -> nn.Module:
    """A copy of ``model`` at ``widths`` with the fused attention, fresh random weights where resized."""
    import torch

    from .reshape import apply_widths

    m = copy.deepcopy(model)
    enc = family.encoder(m)
    before = {id(p) for p in enc.parameters()}
    apply_widths(enc, structure, widths, family)
    with torch.no_grad():
        for p in enc.parameters():
            if id(p) not in before:
                p.normal_(0, 0.02)
    family.optimize(m)
    family.encoder(m).to(device=device, dtype=dtype).eval()
    return m


def _scaled(widths: dict, frac: float) -> dict:
    out = copy.deepcopy(widths)
    out["embed_dim"] = max(1, round(widths["embed_dim"] * frac))
    if "stream_dims" in out:
        out["stream_dims"] = [max(1, round(w * frac)) for w in widths["stream_dims"]]
    return out


def measure(model: nn.Module, device: str = "cpu", dtype: str = "fp32", batch: int = 1,
            progress: Callable[[int, int], None] | None = None, seconds: float = 0.2) -> LatencyModel:
    """Time ``model``'s encoder on ``device`` (see the module docstring); ``progress(done, total)``;
    ``seconds``: about how long each module is timed for (more: less noise)."""
    import torch

    from .device import DTYPES
    from .registry import family_of

    started = time.perf_counter()
    family = family_of(model)
    structure = family.describe(model)
    dense = structure.widths()
    tdtype = DTYPES[dtype]
    x = torch.randn(batch, *family.input_shape(model), device=device, dtype=tdtype)
    plain = copy.deepcopy(model).cpu()  # a copy to resize from (the caller's model is left alone)
    blocks = structure.blocks
    attn_names = [b.attn.module for b in blocks]
    mlp_names = [_mlp_module(family.encoder(plain), b.mlp.fc1, b.mlp.fc2) for b in blocks]
    fused = _resized(plain, family, structure, dense, device, tdtype)
    enc = family.encoder(fused)
    inputs = _captured(enc, x, [b.name for b in blocks])
    kinds = [_kind_key(structure, i, tuple(inputs[b.name][0][0].shape)) for i, b in enumerate(blocks)]
    first = {k: kinds.index(k) for k in dict.fromkeys(kinds)}  # the block that stands for each kind
    fracs = sorted(FRACTIONS)
    grids = {}
    for k, i in first.items():
        a, mlp = blocks[i].attn, blocks[i].mlp
        grids[k] = (head_grid(a.kv_heads), dim_grid(a.head_dim), hidden_grid(mlp.hidden))
    points = max(max(len(h) * len(d), len(m)) for h, d, m in grids.values())
    total, done = points + len(fracs), 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    def modules_at(widths: dict, names: list[str]) -> tuple[nn.Module, dict]:
        m = _resized(plain, family, structure, widths, device, tdtype)
        e = family.encoder(m)
        return e, _captured(e, x, names)

    full_inputs: dict = {}  # attention and MLP inputs at full residual width (bottleneck widths do not change them)

    # along the residual width, everything at full bottleneck widths
    by_width = {k: {"attn": [], "mlp": [], "misc": [], "block": []} for k in first}
    encoder_ms = []
    for frac in fracs:
        e, caught = modules_at(_scaled(dense, frac), [n for i in first.values()
                                                      for n in (blocks[i].name, attn_names[i], mlp_names[i])])
        if frac == 1.0:
            full_inputs = caught
        enc_ms = time_call(lambda: e(x), device, min_runs=2, warmup=1)
        for k, i in first.items():
            times = {}
            for what, name in (("block", blocks[i].name), ("attn", attn_names[i]), ("mlp", mlp_names[i])):
                args, kwargs = caught[name]
                mod = e.get_submodule(name)
                times[what] = time_call(lambda mod=mod, args=args, kwargs=kwargs: mod(*args, **kwargs), device, seconds)
            by_width[k]["attn"].append(times["attn"])
            by_width[k]["mlp"].append(times["mlp"])
            by_width[k]["misc"].append(max(0.0, times["block"] - times["attn"] - times["mlp"]))
        encoder_ms.append(enc_ms)
        tick()
    # the bottleneck grid at full residual width: every block of a kind gets the grid point's widths
    attn = {k: [[0.0] * len(grids[k][1]) for _ in grids[k][0]] for k in first}
    mlp = {k: [0.0] * len(grids[k][2]) for k in first}
    for p in range(points):
        widths = copy.deepcopy(dense)
        chosen = {}
        for k, i in first.items():
            hs, ds, ms = grids[k]
            cell = divmod(p, len(ds)) if p < len(hs) * len(ds) else (None, None)
            if cell[0] is not None or p < len(ms):
                chosen[k] = (*cell, p % len(ms))
        for j, b in enumerate(widths["blocks"]):
            k = kinds[j]
            if k not in chosen:
                continue
            hs, ds, ms = grids[k]
            hi, di, mi = chosen[k]
            if hi is not None:
                per = blocks[j].attn.num_heads // blocks[j].attn.kv_heads
                b["num_heads"], b["head_dim"] = hs[hi] * per, ds[di]
                if blocks[j].attn.num_kv_heads:
                    b["num_kv_heads"] = hs[hi]
            b["mlp_hidden"] = ms[mi]
        e = family.encoder(_resized(plain, family, structure, widths, device, tdtype))
        caught = full_inputs
        for k, (hi, di, mi) in chosen.items():
            i = first[k]
            for name, store in ((attn_names[i], None), (mlp_names[i], mi)):
                if store is None and hi is None:
                    continue
                args, kwargs = caught[name]
                mod = e.get_submodule(name)
                ms_ = time_call(lambda mod=mod, args=args, kwargs=kwargs: mod(*args, **kwargs), device, seconds)
                if store is None:
                    attn[k][hi][di] = ms_
                elif ms_ > mlp[k][mi]:  # an MLP width timed twice keeps its slower time
                    mlp[k][mi] = ms_
        tick()
    tables = {}
    for k, i in first.items():
        hs, ds, ms = grids[k]
        a = blocks[i].attn
        t = KindTable(hs, ds, ms, a.num_heads // a.kv_heads, attn[k], mlp[k], by_width[k]["attn"],
                      by_width[k]["mlp"], by_width[k]["misc"])
        t.monotone()
        tables[k] = t
    encoder_ms = _monotone(encoder_ms)
    return LatencyModel(key=model_key(model, device, dtype, batch), fractions=fracs,
                        streams=[dense["embed_dim"], *dense.get("stream_dims", [])], kinds=tables,
                        block_kind=kinds, encoder=encoder_ms,
                        seconds=round(time.perf_counter() - started, 1))


def model_key(model: nn.Module, device: str, dtype: str, batch: int) -> dict:
    """What a latency model depends on: the model's name, config and widths, and the device."""
    import torch

    from . import __version__
    from .device import device_name
    from .info import get_info
    from .registry import family_of

    info = get_info(model) or {}
    dev = device_name(device)
    return {"model": info.get("name"), "config": json.loads(json.dumps(info.get("config", {}), default=str)),
            "widths": family_of(model).describe(model).widths(), "device": dev, "device_type": torch.device(device).type,
            "capability": torch.backends.cpu.get_cpu_capability() if torch.device(device).type == "cpu" else None,
            "dtype": dtype, "batch": batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "vitslim": __version__, "format": FORMAT}


def cache_path(key: dict) -> Path:
    from .weights import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "latency" / f"{key['model'] or 'model'}-{key['device_type']}-{digest}.json".replace(":", "_")


def latency_model(model: nn.Module, device: str | None = None, dtype: str = "fp32", batch: int = 1,
                  cache: bool = True, progress: Callable[[int, int], None] | None = None,
                  seconds: float = 0.2) -> LatencyModel:
    """The latency model of ``model`` on ``device`` (default: cuda if present), read from the cache or
    measured (then cached)."""
    import torch

    from .atomic import atomic_write

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = cache_path(model_key(model, device, dtype, batch))
    if cache and path.is_file():
        try:
            return LatencyModel.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError):
            pass  # a damaged or older cache entry: measure again
    lat = measure(model, device, dtype, batch, progress, seconds)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(lat.to_json())))
    return lat


def measured_ms(model: nn.Module, device: str = "cpu", dtype: str = "fp32", batch: int = 1, runs: int = 3) -> float:
    """The encoder's median milliseconds with the fused attention (a copy is optimized)."""
    import torch

    from .device import DTYPES
    from .registry import family_of

    family = family_of(model)
    m = family.optimize(copy.deepcopy(model))
    enc = family.encoder(m).to(device=device, dtype=DTYPES[dtype]).eval()
    x = torch.randn(batch, *family.input_shape(m), device=device, dtype=DTYPES[dtype])
    return time_call(lambda: enc(x), device, min_runs=runs)
