"""vitslim: structured compression of Vision Transformers (SlimSAM's method as a toolkit).

The public names below are imported on first use (PEP 562), so that ``import vitslim`` and the CLI's
``--version`` and ``--help`` do not pay for importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import ModelFileError, NonFiniteError, UsageError, VitslimError, WeightsError, WriteError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402

_LAZY = {
    "Family": ".family",
    "Structure": ".structure", "ResidualStream": ".structure", "AttentionSpec": ".structure",
    "BlockSpec": ".structure", "MlpSpec": ".structure",
    "create": ".api", "describe": ".api", "inspect": ".api", "load": ".api", "optimize": ".api", "save": ".api",
    "plan": ".pruning", "prune": ".pruning",
    "compress": ".compression", "compress_run": ".compression",
    "evaluate": ".evaluation",
    "export_hf": ".export", "export_onnx": ".export",
}

__all__ = [
    "__version__", "hookimpl", "Family", "Structure", "ResidualStream", "AttentionSpec", "BlockSpec", "MlpSpec",
    "VitslimError", "UsageError", "ModelFileError", "WeightsError", "NonFiniteError", "WriteError",
    "create", "describe", "inspect", "load", "optimize", "save", "plan", "prune", "compress", "compress_run",
    "evaluate", "export_onnx", "export_hf",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule, as ``vitslim.api`` (imported on first use too)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'vitslim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .api import create, describe, inspect, load, optimize, save
    from .compression import compress, compress_run
    from .evaluation import evaluate
    from .export import export_hf, export_onnx
    from .family import Family
    from .pruning import plan, prune
    from .structure import AttentionSpec, BlockSpec, MlpSpec, ResidualStream, Structure
