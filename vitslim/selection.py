"""Picking the few images to compress with: those that cover what the teacher tells apart.

With a dozen images, which dozen matters more than any criterion or schedule: on the digits testbed a
student at 0.77 keeps 94-97% accuracy on the digits its images show and 54-83% on those they miss
(docs/quality.md). When there are more images than the run can afford, :func:`pick_images` chooses
them by k-center greedy on the teacher's output features (each image the one farthest from those
already chosen), so the chosen set spans the teacher's view of the pool rather than a random corner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

from .errors import UsageError


def teacher_features(model: nn.Module, images: torch.Tensor | Dataset, batch: int = 16,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One row per image (a (N, C, H, W) tensor or a dataset of preprocessed images): the family's output
    features of ``model``'s encoder, each tensor averaged over its spatial axes and scaled to unit norm,
    then concatenated (so every output tensor counts alike)."""
    import torch
    from torch.utils.data import DataLoader

    from .registry import family_of

    family = family_of(model)
    encoder = family.encoder(model)
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    batches = images.split(batch) if isinstance(images, torch.Tensor) else DataLoader(images, batch_size=batch)
    rows, done = [], 0
    try:
        with torch.no_grad():
            for x in batches:
                outs = family.output_features(encoder(x.to(device)))
                parts = [o.float().flatten(2).mean(-1) if o.dim() > 2 else o.float().flatten(1) for o in outs]
                rows.append(torch.cat([torch.nn.functional.normalize(p, dim=1) for p in parts], 1).cpu())
                done += len(x)
                if progress is not None:
                    progress(done, len(images))
    finally:
        encoder.train(was_training)
    return torch.cat(rows)


def k_center(features: torch.Tensor, count: int, seed: int = 0) -> list[int]:
    """``count`` row indices by k-center greedy: a seeded first row, then each time the row farthest
    from every row chosen so far (ties to the lowest index)."""
    import torch

    n = len(features)
    if not 1 <= count <= n:
        raise UsageError(f"cannot pick {count} of {n} images: choose between 1 and {n}")
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = torch.cdist(features, features[first:first + 1]).squeeze(1)
    nearest[first] = -1.0  # never again, even among duplicates (all at distance 0)
    while len(chosen) < count:
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(features, features[nxt:nxt + 1]).squeeze(1))
        nearest[chosen] = -1.0
    return sorted(chosen)


def pick_images(model: nn.Module, images: torch.Tensor | Dataset, count: int, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The indices of ``count`` of ``images`` (preprocessed encoder inputs: (N, C, H, W), or a dataset of
    them) that cover the teacher's output features best (k-center greedy; ``seed`` picks the first).
    ``compress(pick=N)`` and ``vitslim compress --pick N`` distil on those."""
    import torch

    return torch.tensor(k_center(teacher_features(model, images, progress=progress), count, seed))
