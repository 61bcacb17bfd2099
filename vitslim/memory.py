"""Activation checkpointing of an encoder's blocks, when a backward pass would not fit in memory.

A backward pass keeps every block's intermediate tensors. For SAM 3's trunk at 1008 px (5184 tokens,
32 blocks of 1024) that is about 19 GB per image, more than a 24 GB machine has beside the teacher and
the student. Checkpointing keeps only each block's input and recomputes the block during the backward
pass: the same gradients for about a third more compute. ``mode="auto"`` decides at the first forward
pass with gradients, from the block input it sees and the memory free on its device.

On the CPU, glibc's allocator also keeps freed blocks of up to 32 MB in its heap once it has seen them
freed (its threshold for giving memory straight back to the system grows), and a backward pass frees
thousands of such blocks of changing sizes: a SAM 3 forward and backward pass at 1008 px peaked
19.8 GB above the model instead of 12.8 (2.9 GB with checkpointing).
:func:`return_freed_memory` fixes the threshold at 1 MB for the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODES = ("auto", "on", "off")
# Bytes a ViT block keeps for its backward pass, in multiples of its input's bytes: measured 18x on SAM 3's
# trunk (fp32, MLP ratio 4.6; 12.5 GB for 32 blocks at 5184 x 1024, the allocator's threshold fixed);
# rounded up.
KEPT_PER_INPUT = 20
MMAP_THRESHOLD = 1 << 20  # glibc: blocks this large and larger go back to the system when freed
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_threshold_fixed = False
# Activations may take this share of the memory free when the first forward with gradients starts.
SHARE_OF_FREE = 0.5


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device``: the CUDA allocator's view, or the host's MemAvailable
    (None where neither can be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Makes glibc give freed blocks of :data:`MMAP_THRESHOLD` and more straight back to the system (and
    stops it raising that threshold), for the rest of the process. Whether it did: False off glibc."""
    global _threshold_fixed
    if _threshold_fixed or not sys.platform.startswith("linux"):
        return _threshold_fixed
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _threshold_fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        pass
    return _threshold_fixed


def estimated_bytes(block_input: torch.Tensor, blocks: int) -> int:
    """What a backward pass through ``blocks`` blocks fed ``block_input`` keeps."""
    return block_input.numel() * block_input.element_size() * KEPT_PER_INPUT * blocks


@dataclass
class Checkpointing:
    """The decision of one :func:`checkpointed` context: None until the first forward with gradients."""

    mode: str
    on: bool | None = None
    needed_bytes: int | None = None
    free_bytes: int | None = None

    def describe(self) -> str:
        gb = lambda b: f"{b / 2**30:.1f} GB"  # noqa: E731
        if self.needed_bytes is None or self.free_bytes is None:
            return "activation checkpointing on (asked for)"
        return (f"a backward pass would keep about {gb(self.needed_bytes)} of activations, "
                f"{gb(self.free_bytes)} free: recomputing each block in the backward pass "
                "(--activation-checkpointing off to keep them)")


def check_mode(mode: str) -> str:
    from .errors import UsageError

    if mode not in MODES:
        raise UsageError(f"unknown activation checkpointing '{mode}': choose one of {', '.join(MODES)}")
    return mode


@contextmanager
def checkpointed(encoder: nn.Module, block_names: list[str], mode: str = "auto",
                 on_decide: Callable[[Checkpointing], None] | None = None) -> Iterator[Checkpointing]:
    """While active, every block named in ``block_names`` (paths inside ``encoder``) runs under
    :func:`torch.utils.checkpoint.checkpoint` when gradients are on: ``"on"`` always, ``"auto"`` when
    :func:`estimated_bytes` exceeds :data:`SHARE_OF_FREE` of the memory free at the first such call,
    ``"off"`` never. Forward passes without gradients (the teacher, validation) are untouched.
    ``on_decide`` hears the decision once, when checkpointing turns on. On the CPU, it also calls
    :func:`return_freed_memory` (whatever the mode)."""
    state = Checkpointing(check_mode(mode), on={"on": True, "off": False}.get(mode))
    param = next(encoder.parameters(), None)
    if param is not None and param.device.type == "cpu":
        return_freed_memory()
    if state.on is False or not block_names:
        yield state
        return
    patched = []

    def decide(x: torch.Tensor) -> bool:
        if state.on is None:
            state.needed_bytes = estimated_bytes(x, len(block_names))
            state.free_bytes = free_bytes(x.device)
            state.on = state.free_bytes is not None and state.needed_bytes > SHARE_OF_FREE * state.free_bytes
            if state.on and on_decide is not None:
                on_decide(state)
        return state.on

    for name in block_names:
        module = encoder.get_submodule(name)
        own = module.__dict__.get("forward")
        inner = module.forward

        def forward(*args, _inner=inner, **kwargs):
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if not torch.is_grad_enabled() or x is None or not decide(x):
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        module.forward = forward
        patched.append((module, own))
    if state.on and on_decide is not None:
        on_decide(state)
    try:
        yield state
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own
