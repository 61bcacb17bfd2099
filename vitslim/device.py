"""The device a model runs on, as benchmarks and the latency model name it: its name and dtypes."""

from __future__ import annotations

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
