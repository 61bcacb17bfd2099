"""Quality testbeds: a teacher trained on real data, its images, and metrics against ground truth.

Random weights prove the mechanics of compression, not its point: that a *trained* model compressed
with a little data keeps what it knows. A testbed trains a small teacher on data a package ships, and
scores students on held-out data. The teachers ship with their plugin (``teachers/`` beside the
testbed: the file, and ``teachers.json`` with its SHA-256, the command, seed and recipe that trained it,
and its metrics on each CPU it was checked on), so the demo, the tests and the quality benchmark start
at once and see the same weights on every machine; a teacher that is not shipped (another seed or
recipe) is trained once per machine and cached under :func:`vitslim.weights.cache_dir`.
``benchmarks/teachers.py`` retrains and ships them; ``benchmarks/quality.py`` runs every installed
testbed; families contribute theirs through the ``vitslim_testbeds`` hook.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from .errors import ModelFileError, UsageError

MANIFEST = "teachers.json"


class Testbed:
    """A trained teacher, its training images, and held-out metrics.

    Subclasses set ``name``, ``metric`` (the headline key of :meth:`score`) and ``recipe`` (the
    settings :meth:`train_teacher` uses by default; they key the cache), and implement the methods.
    """

    name: str = ""
    metric: str = ""
    recipe: dict[str, Any] = {}
    shipped_dir: Path | None = None  # the plugin's ``teachers/`` folder, where its trained teachers ship
    about: str = ""  # what the teacher is, in a few words (``vitslim demo --list``)
    # ``vitslim demo``: ratio, fraction of the training images, compress options that differ from the
    # library's defaults (to fit a few minutes), and the batch and runs the latency is timed with
    demo: dict[str, Any] = {}

    def train_images(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Training images (all, or those at ``indices``), preprocessed for the teacher's encoder:
        (N, C, H, W)."""
        raise NotImplementedError

    def num_train(self) -> int:
        """How many training images there are."""
        raise NotImplementedError

    def train_teacher(self, seed: int = 0, progress: Any = None, **recipe: Any) -> nn.Module:
        """Train a teacher from scratch (``recipe`` overrides :attr:`recipe`, e.g. fewer epochs in tests)."""
        raise NotImplementedError

    def score(self, student: nn.Module, teacher: nn.Module | None = None) -> dict[str, float]:
        """Held-out metrics of ``student`` (against ground truth, and against ``teacher`` when given)."""
        raise NotImplementedError

    def overlays(self, student: nn.Module, teacher: nn.Module, folder: Path, count: int = 4) -> list[Path]:
        """Pictures of both models' outputs side by side on ``count`` held-out images, written to
        ``folder`` (segmentation testbeds: masks); the default writes none."""
        return []

    def supervised_loss(self, teacher: nn.Module):
        """A ``loss_fn(encoder_output, inputs)`` from the ground truth of training images (found by their
        pixels), for the ``taylor`` criterion; None if the testbed has none."""
        return None

    def subset(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training images picked with ``seed`` (the low-data regime: 1% is ``num_train() // 100``)."""
        return self.train_images(self.subset_indices(count, seed))

    def subset_indices(self, count: int, seed: int = 0) -> torch.Tensor:
        """The sorted indices of the training images :meth:`subset` picks."""
        import torch

        total = self.num_train()
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        return order[:min(count, total)].sort().values

    def shipped_entry(self) -> dict | None:
        """This testbed's entry in the shipped manifest (file, sha256, seed, recipe, command, metrics)."""
        if self.shipped_dir is None or not (Path(self.shipped_dir) / MANIFEST).is_file():
            return None
        return json.loads((Path(self.shipped_dir) / MANIFEST).read_text()).get(self.name)

    def shipped(self, seed: int = 0) -> Path | None:
        """The shipped teacher file for ``seed`` and this testbed's recipe, checked against its SHA-256;
        None when none ships for them."""
        entry = self.shipped_entry()
        if entry is None or entry["seed"] != seed or entry["recipe"] != json.loads(json.dumps(self.recipe)):
            return None
        path = Path(self.shipped_dir) / entry["file"]
        from .weights import file_digest

        if not path.is_file() or file_digest(path, "sha256") != entry["sha256"]:
            raise ModelFileError(f"the shipped {self.name} teacher {path} is missing or damaged (SHA-256 differs "
                                 f"from {MANIFEST}): reinstall vitslim, or retrain it with `{entry['command']}`")
        return path

    def teacher(self, seed: int = 0, cache: bool = True, progress: Any = None, shipped: bool = True) -> nn.Module:
        """The trained teacher: the shipped one (unless ``shipped=False``), else read from the cache, else
        trained (and cached) on first use."""
        import torch
        from .modelfile import load, save
        from .weights import cache_dir

        packaged = self.shipped(seed) if shipped else None
        if packaged is not None:
            return load(packaged)
        key = json.dumps({"testbed": self.name, "seed": seed, "recipe": self.recipe,
                          "torch": torch.__version__.split("+")[0]}, sort_keys=True)
        path = cache_dir() / "testbeds" / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if cache and path.is_file():
            return load(path)
        started = time.perf_counter()
        model = self.train_teacher(seed=seed, progress=progress)
        seconds = time.perf_counter() - started
        from .info import add_history

        add_history(model, {"step": "train", "testbed": self.name, "seed": seed, "recipe": self.recipe,
                            "seconds": round(seconds, 1)})
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            save(model, path)
        return model


class LabelLookup:
    """Finds the training record of an input image by its exact pixels (criteria see only inputs)."""

    def __init__(self, images, records: list):
        """``images``: an iterable of (C, H, W) inputs, matched in order with ``records``."""
        self.index = {self.key(x): r for x, r in zip(images, records)}

    @staticmethod
    def key(x: torch.Tensor) -> bytes:
        return hashlib.blake2b(x.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()

    def __call__(self, batch: torch.Tensor) -> list:
        try:
            return [self.index[self.key(x)] for x in batch]
        except KeyError:
            raise ValueError("supervised loss: an input is not one of the testbed's training images") from None


def testbeds() -> dict[str, Testbed]:
    """Every installed testbed, by name."""
    from .registry import plugin_manager

    return {t.name: t for result in plugin_manager().hook.vitslim_testbeds() for t in result}


def get_testbed(name: str) -> Testbed:
    found = testbeds()
    if name not in found:
        raise UsageError(f"unknown testbed '{name}': choose one of {', '.join(sorted(found)) or '(none installed)'}")
    return found[name]


def teacher_seconds(model: nn.Module) -> float | None:
    """How long the teacher took to train, from its provenance."""
    from .info import get_info

    for step in (get_info(model) or {}).get("history", []):
        if step.get("step") == "train":
            return step.get("seconds")
    return None


