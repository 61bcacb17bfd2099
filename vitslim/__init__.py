"""vitslim: structured compression of Vision Transformers (SlimSAM's method as a toolkit)."""

from __future__ import annotations

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .family import Family  # noqa: E402
from .errors import ModelFileError, NonFiniteError, UsageError, VitslimError, WeightsError, WriteError  # noqa: E402
from .structure import AttentionSpec, BlockSpec, MlpSpec, ResidualStream, Structure  # noqa: E402
from .api import create, describe, inspect, load, optimize, save  # noqa: E402
from .pruning import plan, prune  # noqa: E402
from .compression import compress, compress_run  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .export import export_hf, export_onnx  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "Family", "Structure", "ResidualStream", "AttentionSpec", "BlockSpec", "MlpSpec",
    "VitslimError", "UsageError", "ModelFileError", "WeightsError", "NonFiniteError", "WriteError",
    "create", "describe", "inspect", "load", "optimize", "save", "plan", "prune", "compress", "compress_run",
    "evaluate", "export_onnx", "export_hf",
]
