"""Taylor importance |w * dL/dw|, and SlimSAM's label-free disturbed variant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch

from .base import Criterion, ImportanceContext

ACCUMULATE = ("batch", "signed")


class TaylorImportance(Criterion):
    """First-order Taylor saliency from a loss the caller supplies.

    ``loss_fn(output, inputs) -> scalar`` is evaluated on the encoder's output for each batch of the
    calibration data (at most ``batches`` of them). ``accumulate="batch"`` sums |w * g| over batches;
    ``"signed"`` sums the signed gradients first and takes |w * sum g| at the end (the SlimSAM reference
    code, which feeds single images).
    """

    name = "taylor"
    needs_data = True

    def __init__(self, loss_fn: Callable | None = None, batches: int | None = None, accumulate: str = "batch"):
        if accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {ACCUMULATE}")
        self.loss_fn = loss_fn
        self.batches = batches
        self.accumulate = accumulate
        self._saliency: dict[str, torch.Tensor] = {}
        self.images_seen = 0

    def loss(self, output: torch.Tensor, inputs: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
        if self.loss_fn is None:
            raise ValueError("TaylorImportance needs loss_fn(output, inputs)")
        return self.loss_fn(output, inputs)

    def prepare(self, ctx: ImportanceContext) -> None:
        import torch

        if ctx.data is None:
            raise ValueError(f"the {self.name} criterion needs calibration data")
        params = ctx.params
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = ctx.encoder.training
        grad_flags = {n: p.requires_grad for n, p in params.items()}
        for p in params.values():  # a frozen teacher still needs gradients here
            p.requires_grad_(True)
        ctx.encoder.eval()
        self.images_seen = 0
        total = len(ctx.data) if hasattr(ctx.data, "__len__") else None
        if total is not None and self.batches is not None:
            total = min(total, self.batches)
        try:
            for step, inputs in enumerate(ctx.data):
                if self.batches is not None and step >= self.batches:
                    break
                ctx.encoder.zero_grad(set_to_none=True)
                device = next(iter(params.values())).device
                inputs = inputs.to(device)
                with torch.enable_grad():
                    out = ctx.encoder(inputs)
                    self.loss(out, inputs, ctx).backward()
                self.images_seen += inputs.shape[0]
                if ctx.progress is not None:
                    ctx.progress(step + 1, total)
                for n, p in params.items():
                    if p.grad is None:
                        continue
                    if self.accumulate == "batch":
                        acc[n] += (p.detach() * p.grad).abs()
                    else:
                        acc[n] += p.grad
        finally:
            ctx.encoder.zero_grad(set_to_none=True)
            ctx.encoder.train(was_training)
            for n, p in params.items():
                p.requires_grad_(grad_flags[n])
        if self.images_seen == 0:
            raise ValueError(f"the {self.name} criterion got no calibration images")
        if self.accumulate == "signed":
            acc = {n: (params[n].detach() * g).abs() for n, g in acc.items()}
        self._saliency = acc

    def saliency(self, name: str, param: torch.Tensor) -> torch.Tensor:
        if name not in self._saliency:
            raise RuntimeError("Taylor saliency requested before prepare()")
        return self._saliency[name]

    def describe(self) -> dict:
        return {"name": self.name, "batches": self.batches, "accumulate": self.accumulate,
                "images": self.images_seen}


class DisturbedTaylorImportance(TaylorImportance):
    """SlimSAM's label-free criterion: Taylor saliency of MSE(student, teacher + noise).

    The teacher is the model before pruning; its output is computed without gradients. The noise is
    zero-mean Gaussian with std ``sigma`` (0.01 by default; 0.005-0.05 works), shaped like the batch.
    ``loss_scale`` "teacher": noise of std ``sigma`` x each output tensor's RMS and each MSE over its mean
    square (tensors on different scales count alike); "raw": absolute noise and plain MSEs; None: the
    family's :attr:`~vitslim.family.Family.loss_scale` (``compress`` passes the scale it distils with).
    """

    name = "disturbed_taylor"

    def __init__(self, sigma: float = 0.01, batches: int | None = None, accumulate: str = "batch", seed: int = 0,
                 loss_scale: str | None = None):
        super().__init__(None, batches, accumulate)
        if sigma <= 0:
            raise ValueError("noise sigma must be positive")
        if loss_scale not in (None, "raw", "teacher"):
            raise ValueError(f"loss_scale must be raw, teacher or None, got {loss_scale!r}")
        self.sigma = sigma
        self.seed = seed
        self.loss_scale = loss_scale

    def prepare(self, ctx: ImportanceContext) -> None:
        import torch

        self._gen = torch.Generator().manual_seed(self.seed)
        super().prepare(ctx)

    def loss(self, output: torch.Tensor, inputs: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
        # Before pruning the teacher *is* this model: its output, without gradient, is output.detach().
        import torch
        import torch.nn.functional as F

        losses = []
        scaled = (self.loss_scale or getattr(ctx.family, "loss_scale", "raw")) == "teacher"
        for out in ctx.family.output_features(output):  # the output tensors the family's model reads
            target = out.detach()
            noise = torch.randn(target.shape, generator=self._gen, dtype=target.dtype).to(target.device)
            if scaled:  # noise and loss relative to each tensor's scale, as the family distils
                ms = target.float().pow(2).mean().clamp_min(1e-12)
                losses.append(F.mse_loss(out, target + self.sigma * ms.sqrt() * noise) / ms)
            else:
                losses.append(F.mse_loss(out, target + self.sigma * noise))
        return torch.stack(losses).mean()

    def describe(self) -> dict:
        return {**super().describe(), "sigma": self.sigma, "seed": self.seed,
                **({"loss_scale": self.loss_scale} if self.loss_scale is not None else {})}
