"""Latency of encoders, side by side in one run: ``vitslim bench`` and ``benchmarks/latency.py``.

A model spec is a name (``sam-b``), a name pruned on the fly (``sam-b@0.77``: both parts, uniform,
magnitude; ``sam-b@0.77:heads`` removes whole heads; ``sam-b@0.77/8`` rounds kept widths to multiples
of 8), or a saved file. Weights are random for names
(timing does not depend on them). Speed-ups are against the first row of the run.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from .device import DTYPES, cpu_name
from .errors import UsageError, VitslimError

def build(spec: str, config: dict | None = None) -> nn.Module:
    """The model a spec names (see module docstring)."""
    from .api import create, is_model_file, open_model
    from .pruning import prune

    if is_model_file(spec):
        return open_model(spec)
    name, _, pruning = spec.partition("@")
    model = create(name, pretrained=False, **(config or {}))
    if pruning:
        pruning, _, round_text = pruning.partition("/")
        ratio_text, _, mode = pruning.partition(":")
        try:
            ratio, round_to = float(ratio_text), int(round_text or 1)
        except ValueError:
            raise UsageError(f"bad model spec '{spec}': write NAME@RATIO[:heads][/ROUND_TO]") from None
        model = prune(model, ratio, part="both", importance="magnitude", ranking="uniform",
                      attention="heads" if mode == "heads" else "head_dim", round_to=round_to)
    return model


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank rule (p90 of 2 runs is the slower one)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cuda_graphed(encoder: Callable, x: torch.Tensor, warmup: int = 3) -> Callable:
    """``encoder`` captured once as a CUDA graph for inputs shaped like ``x``: calls copy their input
    into the graph's static input and replay it (returning the static output, overwritten next call)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(warmup):  # lazy initialisation (cuBLAS handles, compiled kernels) before capture
            encoder(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = encoder(static_x)

    def replay(inp: torch.Tensor):
        static_x.copy_(inp)
        graph.replay()
        return static_out

    return replay


def time_encoder(encoder: Callable, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
    """Milliseconds per forward: CUDA events on GPU, wall clock on CPU."""
    cuda = x.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                encoder(x)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                encoder(x)
                ms = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                times.append(ms)
    return times


def onnxruntime_timer(model: nn.Module, batch: int) -> Callable[[int, int], list[float]]:
    """A timer of the exported encoder in onnxruntime (CPU, torch's thread count): ``timer(runs, warmup)``
    gives milliseconds per run."""
    import tempfile

    import onnxruntime as ort

    from .export import export_onnx
    from .registry import family_of

    family = family_of(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(copy.deepcopy(model).cpu().float(), os.path.join(tmp, "m.onnx"), batch=batch)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *family.input_shape(model)).numpy()

    def timer(runs: int, warmup: int) -> list[float]:
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            session.run(None, {"image": x})
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
        return times

    return timer


def variant_timer(model: nn.Module, family, kernel: str | None, batch: int, dtype: str, device: str,
                  compile: bool, cuda_graphs: bool) -> Callable[[int, int], list[float]]:
    """A timer of one row, prepared once: ``model`` as it is (``kernel`` None) or a copy after
    ``optimize(kernel)``; ``timer(runs, warmup)`` gives milliseconds per forward."""
    from .api import optimize

    m = model if kernel is None else optimize(copy.deepcopy(model), kernel=kernel)
    encoder = family.encoder(m).to(device=device, dtype=DTYPES[dtype]).eval()
    if compile:
        from .device import compile_cache_per_capability

        compile_cache_per_capability()
        encoder = torch.compile(encoder)
    x = torch.randn(batch, *family.input_shape(m), device=device, dtype=DTYPES[dtype])
    if cuda_graphs:
        encoder = cuda_graphed(encoder, x)
    return lambda runs, warmup: time_encoder(encoder, x, runs, warmup)


def _failure(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}"[:200]


def _guarded(action: Callable[[], Any]) -> tuple[Any, str | None]:
    """``action()``, or the one-line reason it failed (one row failing, e.g. a model that CUDA graphs
    cannot capture, leaves the others standing); the user's own mistakes still raise."""
    try:
        return action(), None
    except VitslimError:  # an unknown kernel, say: one clear line, not a row
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the row, the run goes on
        return None, _failure(exc)


def benchmark(specs: list[str], batch: int = 1, runs: int | None = None, warmup: int = 1, fast: bool = False,
              dtype: str = "fp32", device: str | None = None, compile: bool = False,
              img_size: int | None = None, onnxruntime: bool = False, kernels: list[str] | None = None,
              cuda_graphs: bool = False, rounds: int = 3, progress=None, plain: bool = True) -> dict[str, Any]:
    """Time each spec's encoder: plain, with ``fast`` also after :func:`vitslim.optimize` (row
    ``fast``; ``plain=False`` leaves the plain row out), with ``kernels`` also once per named fused kernel
    (rows ``fast:KERNEL``), and with
    ``onnxruntime`` also exported to ONNX and run by onnxruntime on the CPU. ``compile`` wraps each
    encoder in ``torch.compile``; ``cuda_graphs`` captures it as a CUDA graph (GPU only).

    Rows are interleaved: every row is prepared first, then each of ``rounds`` rounds times every row
    ``runs`` times in turn, so that a machine's drift hits all rows alike. A row reports the median of
    its round medians, their ``spread_ms`` (min, max) and the p90 of all its runs; a row that fails has
    ``median_ms`` None and an ``error``. Speed-ups are against the first timed row."""
    from .api import inspect, is_model_file
    from .registry import family_for_name, family_of

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}': choose fp32, fp16 or bf16")
    if rounds < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cuda_graphs and not device.startswith("cuda"):
        raise UsageError("CUDA graphs need a CUDA device (--device cuda)")
    paths = ([("plain", None)] if plain or not (fast or kernels) else []) + ([("fast", "auto")] if fast else []) \
        + [(f"fast:{k}", k) for k in kernels or []]
    runs = runs or (50 if device.startswith("cuda") else 1)
    rows, timers, family, model = [], [], None, None
    for spec in specs:
        name = spec.partition("@")[0]
        config = family_for_name(name).input_size_config(img_size) if img_size and not is_model_file(spec) else {}
        model = build(spec, config)
        family = family_of(model)
        report = inspect(model)
        info = {"model": spec, "params": report["encoder"]["params"], "macs": report["encoder"]["macs"],
                "macs_with_attention": report["encoder"]["macs_with_attention"]}
        prepared = [(label, (lambda m=model, k=kernel: variant_timer(m, family, k, batch, dtype, device, compile,
                                                                     cuda_graphs))) for label, kernel in paths]
        if onnxruntime:
            prepared.append(("onnxruntime", lambda m=model: onnxruntime_timer(m, batch)))
        for label, prepare in prepared:
            if progress:
                progress(f"{spec} ({label}): preparing")
            timer, error = _guarded(prepare)
            rows.append({**info, "path": label, "error": error, "times": [], "round_medians": []})
            timers.append(timer)
    for r in range(rounds):
        for row, timer in zip(rows, timers):
            if row["error"] is not None:
                continue
            if progress:
                progress(f"{row['model']} ({row['path']}): round {r + 1}/{rounds}")
            times, row["error"] = _guarded(lambda: timer(runs, warmup if r == 0 else 0))
            if times is not None:
                row["times"] += times
                row["round_medians"].append(statistics.median(times))
    for row in rows:
        ok = row["error"] is None and row["times"]
        meds, times = row.pop("round_medians"), row.pop("times")
        row.update({"median_ms": statistics.median(meds) if ok else None,
                    "spread_ms": [min(meds), max(meds)] if ok else None,
                    "p90_ms": _quantile(times, 0.9) if ok else None, "runs": len(times) if ok else 0,
                    "rounds": len(meds) if ok else 0})
        if row["error"] is None:
            del row["error"]
    timed = [r for r in rows if r["median_ms"] is not None]
    for r in rows:
        r["speedup"] = timed[0]["median_ms"] / r["median_ms"] if timed and r["median_ms"] is not None else None
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu_name()
    return {"device": name, "device_type": torch.device(device).type, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "dtype": dtype, "batch": batch, "compile": compile, "cuda_graphs": cuda_graphs,
            "rounds": rounds, "runs_per_round": runs,
            "input": list(family.input_shape(model)) if rows else None, "rows": rows}
