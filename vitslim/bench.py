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
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from .errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(spec: str, config: dict | None = None) -> nn.Module:
    """The model a spec names (see module docstring)."""
    from .api import create, open_model
    from .pruning import prune

    if os.path.exists(spec) or spec.endswith((".pt", ".pth")):
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


def time_encoder(encoder: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
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


def time_onnxruntime(model: nn.Module, batch: int, runs: int, warmup: int) -> list[float]:
    """Milliseconds per run of the exported encoder in onnxruntime (CPU, torch's thread count)."""
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
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        session.run(None, {"image": x})
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def benchmark(specs: list[str], batch: int = 1, runs: int | None = None, warmup: int = 1, fast: bool = False,
              dtype: str = "fp32", device: str | None = None, compile: bool = False,
              img_size: int | None = None, onnxruntime: bool = False, progress=None) -> dict[str, Any]:
    """Time each spec's encoder: plain, with ``fast`` also after :func:`vitslim.optimize`, and with
    ``onnxruntime`` also exported to ONNX and run by onnxruntime on the CPU."""
    from .api import inspect, optimize
    from .registry import family_of

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}': choose fp32, fp16 or bf16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = runs or (50 if device.startswith("cuda") else 3)
    rows = []
    for spec in specs:
        config = {"img_size": img_size} if img_size and not os.path.exists(spec) and spec.startswith("sam") else {}
        model = build(spec, config)
        family = family_of(model)
        report = inspect(model)
        variants = [("plain", model)] + ([("fast", optimize(copy.deepcopy(model)))] if fast else [])
        for label, m in variants:
            encoder = family.encoder(m).to(device=device, dtype=DTYPES[dtype]).eval()
            if compile:
                encoder = torch.compile(encoder)
            x = torch.randn(batch, *family.input_shape(m), device=device, dtype=DTYPES[dtype])
            if progress:
                progress(f"{spec} ({label})")
            times = time_encoder(encoder, x, runs, warmup)
            rows.append({
                "model": spec, "path": label, "params": report["encoder"]["params"],
                "macs": report["encoder"]["macs"], "macs_with_attention": report["encoder"]["macs_with_attention"],
                "median_ms": statistics.median(times), "p90_ms": _quantile(times, 0.9),
                "runs": len(times),
            })
            del encoder
        if onnxruntime:
            if progress:
                progress(f"{spec} (onnxruntime)")
            times = time_onnxruntime(model, batch, runs, warmup)
            rows.append({**rows[-1], "path": "onnxruntime", "median_ms": statistics.median(times),
                         "p90_ms": _quantile(times, 0.9), "runs": len(times)})
    base = rows[0]["median_ms"] if rows else 1.0
    for r in rows:
        r["speedup"] = base / r["median_ms"]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {"device": name, "device_type": torch.device(device).type, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "dtype": dtype, "batch": batch, "compile": compile,
            "input": list(family.input_shape(model)) if rows else None, "rows": rows}
