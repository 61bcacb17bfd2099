"""The device a model runs on, as benchmarks and the latency model name it: its name and dtypes."""

from __future__ import annotations

import os
import platform

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """A GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else cpu_name()


def compile_cache_per_capability() -> None:
    """Give runs that override ``ATEN_CPU_CAPABILITY`` their own inductor cache folder (call before
    ``torch.compile``). inductor's cache key does not include it (torch 2.14.1): a flex_attention
    kernel compiled under ``avx2`` and loaded by a run without the override, on an AVX-512 CPU, gave
    outputs 0.06 off on a tiny SAM. A folder the user chose (``TORCHINDUCTOR_CACHE_DIR``) is kept;
    importing ``torch._dynamo`` sets the default one, which is moved."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    if not capability:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    default = os.path.abspath(default_cache_dir())
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{default}-{capability.lower()}"
